"""Judges: what scores a render. Both give image embeddings (for fidelity) and a verdict on
how well a render follows its prompt (text alignment).

- `MicroJudge` (micro base): the micro CLIP's image tower for fidelity; the micro checker for
  the prompt's words and for whether each concept is recognised as its instance.
- `ClipJudge` (any base): a local CLIP model for fidelity and for text-image similarity of the
  prompt with each concept token replaced by its superclass word.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from perfusion_hub.compose.prompt import parse_prompt
from perfusion_hub.errors import BaseModelError
from perfusion_hub.evaluate.metrics import paired_cosine, word_accuracy
from perfusion_hub.evaluate.words import Expectation, expectation


@dataclass(frozen=True)
class Verdict:
    """How one render follows its prompt. `obeyed` = every checked word obeyed; `missed` names
    the checks that failed; None where the judge cannot tell."""

    alignment: float | None
    obeyed: float | None = None
    instance_match: float | None = None
    missed: str = ""


def superclass_prompt(prompt: str, superclasses: Mapping[str, str]) -> str:
    """The prompt with each `<name...>` replaced by the concept's superclass word."""
    parsed = parse_prompt(prompt)
    pieces, position = [], 0
    for ref in parsed.refs:
        pieces += [prompt[position:ref.start], superclasses.get(ref.name, ref.name)]
        position = ref.end
    pieces.append(prompt[position:])
    return "".join(pieces)


# ----------------------------------------------------------------------------- micro


def _relation_obeyed(layout: str, relation: str, order: tuple[int, ...]) -> bool:
    """Whether the checker's layout (and object order: left to right, or top first) shows the
    relation between prompt objects 0 and 1."""
    if relation == "on":
        return layout == "stacked" and order[:1] == (0,)
    if relation == "left of":
        return layout == "side" and order[:1] == (0,)
    return layout == "side"


def word_checks(reading: Any, wanted: Expectation) -> dict[str, bool]:
    """Check every word of the prompt against a checker reading (`SceneReading`).

    Prompt objects are matched to the objects the checker found in the assignment that obeys
    the most checks; `count` checks that as many objects were drawn as the prompt names.
    """
    want = wanted.scene.objects
    got = reading.objects
    best: dict[str, bool] | None = None
    for order in itertools.permutations(range(len(got)), min(len(got), len(want))):
        checks: dict[str, bool] = {}
        for index, spec in enumerate(want):
            obj = got[order[index]] if index < len(order) else None
            checks[f"object{index}.category"] = obj is not None and obj.category == spec.category
            if wanted.colour_given[index]:
                checks[f"object{index}.colour"] = obj is not None and obj.colour == spec.colour
            if spec.pattern is not None:
                checks[f"object{index}.pattern"] = obj is not None and obj.pattern == spec.pattern
            if spec.position is not None:
                checks[f"object{index}.position"] = (obj is not None
                                                     and obj.position == spec.position)
        if wanted.scene.relation is not None:
            checks["relation"] = _relation_obeyed(reading.layout, wanted.scene.relation, order)
        if best is None or sum(checks.values()) > sum(best.values()):
            best = checks
    result = {"count": len(got) == len(want), **(best or {})}
    if wanted.scene.background is not None:
        result["background"] = reading.background == wanted.scene.background
    return result


def reference_object(readings: Sequence[Any]) -> Any | None:
    """The instance as the checker sees its training images: the most frequent value of each
    feature over the one-object readings (None when no image reads as one object)."""
    from perfusion_hub.micro.world import ObjectSpec

    objects = [r.objects[0] for r in readings if len(r.objects) == 1]
    if not objects:
        return None

    def mode(field: str) -> Any:
        return Counter(getattr(o, field) for o in objects).most_common(1)[0][0]

    return ObjectSpec(mode("category"), mode("colour"), mode("pattern"), accent=mode("accent"),
                      eyes=mode("eyes"))


class MicroJudge:
    """Scores renders of the micro base with the bundled micro CLIP and checker."""

    name = "micro"

    def __init__(self, device: str = "cpu") -> None:
        from perfusion_hub.micro.assets import load_checker, load_micro_clip

        self.device = device
        self.clip, _ = load_micro_clip(device)
        self.checker = load_checker(device)
        self.references: dict[str, Any] = {}
        self.superclasses: dict[str, str] = {}

    def _pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """uint8 (N, 64, 64, 3): renders as they are, other images resized and centre-cropped."""
        from perfusion_hub.micro.world import RES

        return np.stack([np.asarray(ImageOps.fit(image.convert("RGB"), (RES, RES),
                                                 Image.Resampling.BICUBIC))
                         for image in images])

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Unit micro-CLIP image embeddings (N, d)."""
        from perfusion_hub.micro.assets import image_embeddings

        return image_embeddings(self.clip, self._pixels(images)).cpu().numpy()

    def add_concept(self, name: str, superclass: str,
                    training_images: Sequence[Image.Image] | None) -> None:
        """Remember a concept's superclass and, from its training images, its instance look."""
        self.superclasses[name] = superclass
        if training_images:
            reference = reference_object(self.checker.read(self._pixels(training_images)))
            if reference is not None:
                self.references[name] = reference

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str],
              main: str) -> list[Verdict]:
        """One verdict per (image, prompt): word accuracy, all words obeyed, instance match."""
        readings = self.checker.read(self._pixels(images))
        verdicts = []
        for reading, prompt in zip(readings, prompts, strict=True):
            wanted = expectation(prompt, self.superclasses)
            if wanted is None:
                names, alignment, obeyed, missed = [main], None, None, ""
            else:
                checks = word_checks(reading, wanted)
                alignment = word_accuracy(checks)
                obeyed = float(all(checks.values()))
                missed = ",".join(k for k, ok in checks.items() if not ok)
                restyled = any(c is not None and given for c, given in
                               zip(wanted.concepts, wanted.colour_given, strict=True))
                names = [] if restyled else [c for c in wanted.concepts if c is not None]
            verdicts.append(Verdict(alignment, obeyed, self._instances_in(reading, names),
                                    missed))
        return verdicts

    def instances_found(self, images: Sequence[Image.Image],
                        names: Sequence[str]) -> list[float | None]:
        """Per image: 1.0 when the instance of every concept in `names` is drawn, else 0.0;
        None when a concept's instance look is unknown."""
        return [self._instances_in(reading, names)
                for reading in self.checker.read(self._pixels(images))]

    def _instances_in(self, reading: Any, names: Sequence[str]) -> float | None:
        from perfusion_hub.micro.checker import object_matches

        if not names or any(n not in self.references for n in names):
            return None
        return float(all(any(object_matches(o, self.references[n]) for o in reading.objects)
                         for n in names))


# ----------------------------------------------------------------------------- CLIP


class ClipJudge:
    """Scores renders with a local CLIP model folder (`CLIPModel` + its processor)."""

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise BaseModelError(
                f"{path} is not a CLIP model folder (no config.json): give --clip a local folder "
                "saved with CLIPModel.save_pretrained and its processor."
            )
        try:
            self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
            self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as error:
            raise BaseModelError(f"Cannot load the CLIP model at {path}: {error}") from error
        self.name = f"clip:{path}"
        self.device = device
        self.superclasses: dict[str, str] = {}

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        from perfusion_hub.micro.models import pooled

        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt")
        with torch.no_grad():
            features = self.model.get_image_features(
                pixel_values=inputs["pixel_values"].to(self.device))
        return pooled(features).float().cpu().numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        from perfusion_hub.micro.models import pooled

        inputs = self.processor(text=list(texts), return_tensors="pt", padding=True,
                                truncation=True)
        with torch.no_grad():
            features = self.model.get_text_features(
                input_ids=inputs["input_ids"].to(self.device),
                attention_mask=inputs["attention_mask"].to(self.device))
        return pooled(features).float().cpu().numpy()

    def add_concept(self, name: str, superclass: str,
                    training_images: Sequence[Image.Image] | None) -> None:
        self.superclasses[name] = superclass

    def judge(self, images: Sequence[Image.Image], prompts: Sequence[str],
              main: str) -> list[Verdict]:
        """Text alignment = CLIP cosine similarity of each image to its superclass prompt."""
        texts = [superclass_prompt(p, self.superclasses) for p in prompts]
        scores = paired_cosine(self.embed_images(images), self.embed_texts(texts))
        return [Verdict(float(s)) for s in scores]

