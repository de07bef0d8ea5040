"""Training prompts: templates, the one-token superclass check, concept positions from token ids.

The tokenizer puts a start token at index 0, so the concept's index is never its word count;
it is always read from the ids (method.md §5).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from perfusion_hub.errors import TrainingError

COMMON_SUPERCLASSES: tuple[str, ...] = (
    "cat", "dog", "person", "man", "woman", "toy", "chair", "cup", "ball", "tree", "house",
    "car", "bag", "shoe", "bottle", "teapot", "plant", "bird", "bear", "object", "thing",
)


def training_templates(base_templates: Sequence[str], tokenizer,
                       superclass_id: int) -> tuple[str, ...]:
    """The base's own templates when it ships some, else photo templates; each has one `{}`.

    Templates whose words already hold the superclass token ("a {} on a brown chair." for a
    chair) are left out: with the superclass in the concept's place it would appear twice.
    """
    from perfusion_hub.bases.source import DEFAULT_TRAIN_TEMPLATES

    templates = tuple(base_templates) or DEFAULT_TRAIN_TEMPLATES
    for template in templates:
        if template.count("{}") != 1:
            raise TrainingError(f"Training template {template!r} must contain '{{}}' exactly "
                                "once (where the concept goes).")
    kept = tuple(t for t in templates
                 if superclass_id not in tokenizer(fill(t, ""), add_special_tokens=False).input_ids)
    if not kept:
        word = tokenizer.decode([superclass_id]).strip()
        raise TrainingError(f"Every training template already names {word!r}; add templates "
                            "that leave the superclass to the concept.")
    return kept


def fill(template: str, word: str) -> str:
    """Put the concept token (or the superclass word) into a template."""
    return template.replace("{}", word)


def superclass_token_id(tokenizer, superclass: str) -> int:
    """The single token id of `superclass`; a word the tokenizer splits is refused."""
    word = superclass.strip()
    ids = tokenizer(word, add_special_tokens=False).input_ids if word else []
    if len(ids) == 1:
        return int(ids[0])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    shown = " + ".join(repr(p) for p in pieces) or "no tokens"
    candidates = [p.removesuffix("</w>") for p in pieces if p.endswith("</w>")]
    candidates += list(COMMON_SUPERCLASSES)
    single = [w for w in dict.fromkeys(candidates)
              if w and len(tokenizer(w, add_special_tokens=False).input_ids) == 1]
    suggestion = ", ".join(repr(w) for w in single[:6]) or "a shorter, common word"
    raise TrainingError(
        f"Superclass {superclass!r} is {len(ids)} tokens for this base's tokenizer ({shown}); "
        f"Perfusion needs a one-token word. Try {suggestion}."
    )


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (B, L), padded to the tokenizer's context length as the pipeline does."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def token_positions(input_ids: torch.Tensor, token_id: int, prompts: Sequence[str]) -> torch.Tensor:
    """Index of `token_id` in each row of `input_ids` (B,); exactly one occurrence per row."""
    hits = input_ids == token_id
    counts = hits.sum(dim=1)
    for row, count in enumerate(counts.tolist()):
        if count != 1:
            problem = "was cut off by the context length" if count == 0 else "appears twice"
            raise TrainingError(f"In training prompt {prompts[row]!r} the concept token "
                                f"{problem}; use shorter templates with one '{{}}'.")
    return hits.int().argmax(dim=1)
