"""A Perfusion concept in memory: the learned tensors of method.md §6 and their metadata."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from perfusion_hub.concepts.fingerprint import BaseFingerprint
from perfusion_hub.names import token_for, validate_name

LockMode = Literal["local", "global"]
LOCK_MODES: tuple[str, ...] = ("local", "global")
Method = Literal["perfusion", "no-key-lock", "textual-inversion"]
METHODS: tuple[str, ...] = ("perfusion", "no-key-lock", "textual-inversion")
"""How a concept edits the base: Perfusion (keys locked to the superclass, values learned);
the same rank-1 edit with learned keys (`key_targets`); or textual inversion (v* only, no edit)."""
DEFAULT_BETA = 0.70
DEFAULT_TAU = 0.15


@dataclass
class Concept:
    """One concept trained against one base.

    Tensors (float arrays, numpy so that registry code never needs torch):
        word_embedding     v*, the token's input embedding (d)
        target_input       i*, the concept token's encoding (d)
        superclass_input   ī_super, the superclass encoding; o*_K = W_K ī_super (d)
        value_targets      o*_V per cross-attention layer, in the base's layer order
                           (empty for textual inversion)
        key_targets        learned o*_K per layer, only for the `no-key-lock` baseline
    """

    name: str
    superclass: str
    superclass_token_id: int
    word_embedding: np.ndarray
    target_input: np.ndarray
    superclass_input: np.ndarray
    value_targets: dict[str, np.ndarray]
    base: BaseFingerprint
    covariance_hash: str
    lock: LockMode = "local"
    beta: float = DEFAULT_BETA
    tau: float = DEFAULT_TAU
    training: dict[str, Any] = field(default_factory=dict)
    method: Method = "perfusion"
    key_targets: dict[str, np.ndarray] | None = None
    created: str = field(
        default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    )

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.lock not in LOCK_MODES:
            raise ValueError(f"lock must be one of {LOCK_MODES}, not {self.lock!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {self.method!r}")
        if (self.key_targets is not None) != (self.method == "no-key-lock"):
            raise ValueError("key_targets are given exactly for the 'no-key-lock' method")

    @property
    def token(self) -> str:
        """Placeholder token written in prompts and added to the tokenizer, e.g. `<my-cat>`."""
        return token_for(self.name)

    def renamed(self, name: str) -> Concept:
        """A copy under another name; tensors (and so identity) unchanged."""
        from dataclasses import replace

        return replace(self, name=validate_name(name))
