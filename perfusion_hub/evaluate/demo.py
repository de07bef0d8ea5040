"""`run_demo`: the whole job on the bundled micro base, from nothing to measured renders.

Draws training images of two micro-world instances (an orange striped cat with a blue collar,
a green spotted chair with a red cushion), trains and registers both concepts (replacing
earlier demo concepts), composes "a <my-cat> on a <my-chair>", writes a contact sheet of
inputs and outputs, and evaluates <my-cat> alone and next to <my-chair>.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from perfusion_hub.evaluate.defaults import (
    DEFAULT_EVAL_SEEDS,
    DEFAULT_IMAGES,
    DEFAULT_RENDERS,
    DEFAULT_SAMPLE_STEPS,
    DEFAULT_STEPS,
)
from perfusion_hub.files import atomic_write_bytes

DEMO_PROMPT = "a <my-cat> on a <my-chair>"
TRAIN_BATCH = 4


@dataclass(frozen=True)
class DemoConcept:
    """One trained demo concept: its registry record and where its training data went."""

    name: str
    superclass: str
    images_dir: Path
    masks_dir: Path
    seconds: float
    final_loss: float


@dataclass
class DemoReport:
    """What the demo made, and how long each part took."""

    out_dir: Path
    concepts: list[DemoConcept]
    renders: list[Path]
    sheet: Path
    evaluation: Any
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what composing the prompt noted

    def to_json(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "concepts": [{"name": c.name, "superclass": c.superclass,
                          "images": str(c.images_dir), "masks": str(c.masks_dir),
                          "train_seconds": round(c.seconds, 2),
                          "final_loss": round(c.final_loss, 5)} for c in self.concepts],
            "prompt": DEMO_PROMPT,
            "renders": [str(p) for p in self.renders],
            "contact_sheet": str(self.sheet),
            "notes": self.notes,
            "eval": self.evaluation.to_json(),
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_instance_data(instance: Any, folder: Path, count: int, seed: int) -> tuple[Path, Path]:
    """`count` images of a micro-world instance and their foreground masks, as PNGs in
    `folder/images` and `folder/masks` (same file names); returns both folders."""
    from perfusion_hub.micro.world import instance_images

    images_dir, masks_dir = folder / "images", folder / "masks"
    for stale in (*images_dir.glob("*.png"), *masks_dir.glob("*.png")):
        stale.unlink()
    for index, (image, mask) in enumerate(instance_images(instance, count, seed=seed)):
        atomic_write_bytes(images_dir / f"{index:02d}.png", _png(image))
        atomic_write_bytes(masks_dir / f"{index:02d}.png",
                           _png(Image.fromarray(mask.astype("uint8") * 255)))
    return images_dir, masks_dir


def run_demo(
    hub: Any,
    *,
    out: str | Path | None = None,
    steps: int = DEFAULT_STEPS,
    images: int = DEFAULT_IMAGES,
    renders: int = DEFAULT_RENDERS,
    eval_seeds: int = DEFAULT_EVAL_SEEDS,
    sample_steps: int | None = DEFAULT_SAMPLE_STEPS,
    device: str | None = None,
    say: Callable[[str], None] = lambda text: None,
    reporter: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> DemoReport:
    """Run the demo into `out` (default: `<home>/demo`). `steps` trains each concept,
    `sample_steps` denoises each render (None: the base's default); `say` receives one line
    per stage, `reporter` the training progress, `progress` the evaluation's (done, total)."""
    from perfusion_hub.compose.outputs import ensure_writable_dir
    from perfusion_hub.compose.sheet import contact_sheet
    from perfusion_hub.evaluate.run import evaluate_concept
    from perfusion_hub.micro.world import MY_CAT, MY_CHAIR

    begun = time.monotonic()
    out_dir = ensure_writable_dir(Path(out) if out else hub.settings.home / "demo")
    seconds: dict[str, float] = {}
    trained = []
    for seed, instance in enumerate((MY_CAT, MY_CHAIR)):
        started = time.monotonic()
        images_dir, masks_dir = write_instance_data(instance, out_dir / "data" / instance.name,
                                                    images, seed=100 + seed)
        say(f"Training <{instance.name}> ({instance.phrase} with a {instance.accent} "
            f"{_accent_part(instance)}) from {images} images, {steps} steps...")
        result = hub.train(images_dir, name=instance.name, superclass=instance.category,
                           masks=masks_dir, force=True, steps=steps, batch_size=TRAIN_BATCH,
                           grad_accum=1, seed=0, device=device or "auto", reporter=reporter)
        seconds[f"train {instance.name}"] = time.monotonic() - started
        trained.append(DemoConcept(instance.name, instance.category, images_dir, masks_dir,
                                   seconds[f"train {instance.name}"], result.final_loss))

    started = time.monotonic()
    say(f"Composing {DEMO_PROMPT!r} with seeds 0-{renders - 1}...")
    made = hub.compose(DEMO_PROMPT, seed=0, num_images=renders, steps=sample_steps,
                       device=device, out=out_dir / "renders" / "my-cat-on-my-chair.png")
    rendered = [Path(p) for p in made.paths]
    for note in made.notes:
        say(f"Note: {note}")
    sheet = _sheet(out_dir / "contact-sheet.png", trained, made, contact_sheet)
    seconds["compose"] = time.monotonic() - started

    started = time.monotonic()
    say(f"Evaluating <my-cat> alone and with <my-chair>, {eval_seeds} seeds per prompt...")
    evaluation = evaluate_concept(hub, "my-cat", other="my-chair", seeds=eval_seeds,
                                  steps=sample_steps, out=out_dir / "eval", device=device,
                                  progress=progress)
    seconds["eval"] = time.monotonic() - started
    seconds["total"] = time.monotonic() - begun
    return DemoReport(out_dir, trained, rendered, sheet, evaluation, seconds, list(made.notes))


def _accent_part(instance: Any) -> str:
    from perfusion_hub.micro.world import ACCENT_PARTS

    return ACCENT_PARTS[instance.category]


def _sheet(path: Path, trained: list[DemoConcept], made: list[Image.Image],
           contact_sheet: Callable[..., Image.Image]) -> Path:
    """Rows: training images of each concept, then the composed renders."""
    columns = max(len(made), 4)
    tiles, labels = [], []
    for concept in trained:
        for image_path in sorted(concept.images_dir.glob("*.png"))[:columns]:
            with Image.open(image_path) as image:
                tiles.append(image.convert("RGB"))
            labels.append([f"train <{concept.name}>"])
        while len(tiles) % columns:
            tiles.append(Image.new("RGB", tiles[-1].size, "white"))
            labels.append([""])
    for index, image in enumerate(made):
        tiles.append(image.convert("RGB"))
        labels.append([f"seed {index}"])
    sheet = contact_sheet(tiles, labels, columns, title=DEMO_PROMPT)
    atomic_write_bytes(path, _png(sheet))
    return path
