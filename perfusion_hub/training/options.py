"""Options of one training run (method.md §5), validated, and recorded in the concept file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from perfusion_hub.concepts import LOCK_MODES, METHODS
from perfusion_hub.errors import TrainingError

DEVICES = ("auto", "cpu", "cuda")
TRAIN_BETA = 0.75
TRAIN_TAU = 0.10
EMA_DECAY = 0.99


@dataclass(frozen=True)
class TrainOptions:
    """Everything that shapes the result. Defaults are the reference recipe of method.md §5.

    `steps` counts optimiser steps; each sees `batch_size × grad_accum` images.
    `max_embedding_norm` > 0 rescales v* after each step so that ‖v*‖ stays at most that
    multiple of the superclass word embedding's norm; 0 leaves it free, None takes the base's
    own bound (`for_base`). `resolution` None means the base's own.
    `method` picks Perfusion or a comparison baseline: "no-key-lock" trains o*_K with o*_V
    (at `lr_values`), "textual-inversion" v* only.
    """

    steps: int = 400
    batch_size: int = 4
    grad_accum: int = 4
    lr_embedding: float = 0.006
    lr_values: float = 0.03
    weight_decay: float = 0.0
    max_embedding_norm: float | None = None
    lock: str = "local"
    method: str = "perfusion"
    seed: int = 0
    resolution: int | None = None
    flip: bool = True
    device: str = "auto"
    preview_every: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "grad_accum")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be at least 1.")
        for name in ("preview_every", "checkpoint_every"):
            if int(getattr(self, name)) < 0:
                raise TrainingError(f"--{name.replace('_', '-')} must be 0 (off) or positive.")
        for name in ("lr_embedding", "lr_values", "weight_decay", "max_embedding_norm"):
            value = getattr(self, name)
            if value is not None and not float(value) >= 0:
                raise TrainingError(f"--{name.replace('_', '-')} must be a non-negative number.")
        if self.lock not in LOCK_MODES:
            raise TrainingError(f"--lock must be one of {', '.join(LOCK_MODES)}, "
                                f"not {self.lock!r}.")
        if self.method not in METHODS:
            raise TrainingError(f"--method must be one of {', '.join(METHODS)}, "
                                f"not {self.method!r}.")
        if self.method == "textual-inversion" and self.lock != "local":
            raise TrainingError("--lock global needs a rank-1 method: textual inversion edits no "
                                "keys. Drop --lock or choose --method perfusion.")
        if self.device not in DEVICES:
            raise TrainingError(f"--device must be one of {', '.join(DEVICES)}, "
                                f"not {self.device!r}.")
        if self.resolution is not None and (self.resolution < 8 or self.resolution % 8):
            raise TrainingError("--resolution must be a positive multiple of 8 (the VAE's "
                                "downsampling factor).")

    def for_base(self, base_options: Mapping[str, Any]) -> TrainOptions:
        """These options with the base's training defaults (its `phub_base.json`) where
        they are None: `max_embedding_norm`, else 0."""
        if self.max_embedding_norm is not None:
            return self
        bound = float(base_options.get("max_embedding_norm", 0.0))
        return replace(self, max_embedding_norm=bound)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def differences(self, other: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
        """Options that differ from a recorded `to_json()` (for resuming), as 'name: a → b'."""
        return [f"{f.name}: {other.get(f.name)!r} → {getattr(self, f.name)!r}" for f in fields(self)
                if f.name not in ignore and other.get(f.name) != getattr(self, f.name)]
