"""`ConceptState`: one concept's tensors on one base, as torch parameters and buffers.

Trained: v* (`word_embedding`) and o*_V (`value_targets`, one vector per `attn2` layer).
Not trained: i* (`target_input`, an EMA buffer during training) and ī_super
(`superclass_input`), from which the key target o*_K = W_K ī_super is recomputed exactly.

The comparison baselines (`method`): "no-key-lock" also trains o*_K (`key_targets`, one vector
per layer, initialised to W_K ī_super); "textual-inversion" holds v* alone (no o*, no edit).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from perfusion_hub.concepts import (
    DEFAULT_BETA,
    DEFAULT_TAU,
    LOCK_MODES,
    METHODS,
    BaseFingerprint,
    Concept,
)
from perfusion_hub.errors import IncompatibleBaseError
from perfusion_hub.names import token_for, validate_name


def parameter_key(layer_name: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn2` → a '.'-free ParameterDict key."""
    return layer_name.replace(".", "-")


def _per_layer(targets: Mapping[str, Any]) -> nn.ParameterDict:
    return nn.ParameterDict({parameter_key(layer): nn.Parameter(_vector(value))
                             for layer, value in targets.items()})


def _vector(value: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float32) if isinstance(value, np.ndarray)
                           else value).detach().float().reshape(-1).clone()


class ConceptState(nn.Module):
    """One concept on one base. Float32 tensors; move with `.to(device)`."""

    target_input: torch.Tensor
    superclass_input: torch.Tensor

    def __init__(self, name: str, superclass: str, superclass_token_id: int,
                 word_embedding: Any, target_input: Any, superclass_input: Any,
                 value_targets: Mapping[str, Any], *, beta: float = DEFAULT_BETA,
                 tau: float = DEFAULT_TAU, lock: str = "local", method: str = "perfusion",
                 key_targets: Mapping[str, Any] | None = None,
                 layer_names: Sequence[str] | None = None) -> None:
        """`value_targets` (and `key_targets`, exactly for "no-key-lock") map layer → o*;
        a "textual-inversion" state has none and names its base's layers in `layer_names`."""
        super().__init__()
        if lock not in LOCK_MODES:
            raise ValueError(f"lock must be one of {LOCK_MODES}, not {lock!r}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, not {method!r}")
        if (key_targets is not None) != (method == "no-key-lock"):
            raise ValueError("key_targets are given exactly for the 'no-key-lock' method")
        if (method == "textual-inversion") == bool(value_targets):
            raise ValueError("value_targets are given exactly for the rank-1 methods")
        self.name = validate_name(name)
        self.superclass = superclass
        self.superclass_token_id = int(superclass_token_id)
        self.beta = float(beta)
        self.tau = float(tau)
        self.lock = lock
        self.method = method
        self.word_embedding = nn.Parameter(_vector(word_embedding))
        self.register_buffer("target_input", _vector(target_input))
        self.register_buffer("superclass_input", _vector(superclass_input))
        self.layer_names: tuple[str, ...] = tuple(value_targets or layer_names or ())
        for targets in (layer_names, key_targets):
            if targets is not None and set(targets) != set(self.layer_names):
                raise ValueError("value_targets, key_targets and layer_names differ in layers")
        self.value_targets = _per_layer(value_targets)
        self.key_targets = _per_layer(key_targets or {})
        width = self.word_embedding.numel()
        if self.target_input.numel() != width or self.superclass_input.numel() != width:
            raise ValueError("word_embedding, target_input and superclass_input must share a width")

    @property
    def token(self) -> str:
        """The placeholder written in prompts, e.g. `<my-cat>`."""
        return token_for(self.name)

    @property
    def text_width(self) -> int:
        return self.word_embedding.numel()

    @property
    def edits(self) -> bool:
        """Whether the concept edits `attn2` (every method but textual inversion)."""
        return self.method != "textual-inversion"

    def output_targets(self) -> list[nn.Parameter]:
        """The trained o* of every layer: o*_V, plus o*_K without key-locking."""
        return [*self.value_targets.values(), *self.key_targets.values()]

    def value_target(self, layer_name: str) -> torch.Tensor:
        """o*_V of one `attn2` layer (a trainable parameter)."""
        return self.value_targets[self._checked(layer_name)]

    def key_target(self, layer_name: str, to_k_weight: torch.Tensor) -> torch.Tensor:
        """o*_K of one layer: W_K ī_super (float32, never trained) under key-locking, the
        learned parameter for "no-key-lock"."""
        key = self._checked(layer_name)
        if self.method == "no-key-lock":
            return self.key_targets[key]
        return (to_k_weight.detach().float() @ self.superclass_input.float()).detach()

    def _checked(self, layer_name: str) -> str:
        if not self.edits:
            raise ValueError(f"Concept '{self.name}' is a textual inversion: it has no o* targets.")
        key = parameter_key(layer_name)
        if key not in self.value_targets:
            raise IncompatibleBaseError(
                f"Concept '{self.name}' has no value target for layer {layer_name}: it was trained "
                "on a base with other cross-attention layers. Use it with its own base."
            )
        return key

    @classmethod
    def from_concept(cls, concept: Concept) -> ConceptState:
        """The torch form of a stored concept (tensors converted to float32)."""
        layers = [layer.name for layer in concept.base.layers]
        return cls(
            concept.name, concept.superclass, concept.superclass_token_id,
            concept.word_embedding, concept.target_input, concept.superclass_input,
            {layer: concept.value_targets[layer] for layer in layers if concept.value_targets},
            beta=concept.beta, tau=concept.tau, lock=concept.lock, method=concept.method,
            key_targets=None if concept.key_targets is None else
            {layer: concept.key_targets[layer] for layer in layers},
            layer_names=layers,
        )

    @classmethod
    def initial(cls, name: str, superclass: str, superclass_token_id: int,
                superclass_input: torch.Tensor, word_embedding: torch.Tensor,
                unet: nn.Module, *, lock: str = "local",
                method: str = "perfusion") -> ConceptState:
        """Where training starts (method.md §5): i* = ī_super, o*_V = W_V ī_super per `attn2`
        (and o*_K = W_K ī_super for "no-key-lock"; no o* for "textual-inversion"),
        v* = the given (superclass) word embedding. Gate defaults are the inference ones."""
        from perfusion_hub.bases.layers import cross_attention_layers

        device = next(unet.parameters()).device
        superclass_input = _vector(superclass_input).to(device)
        layers = [layer.name for layer in cross_attention_layers(unet)]

        def mapped(projection: str) -> dict[str, torch.Tensor]:  # W ī_super per layer
            return {layer: getattr(unet.get_submodule(layer), projection).weight.detach().float()
                    @ superclass_input for layer in layers}

        values = mapped("to_v") if method != "textual-inversion" else {}
        keys = mapped("to_k") if method == "no-key-lock" else None
        return cls(name, superclass, superclass_token_id, _vector(word_embedding).to(device),
                   superclass_input.clone(), superclass_input, values, lock=lock, method=method,
                   key_targets=keys, layer_names=layers)

    def to_concept(self, base: BaseFingerprint, covariance_hash: str,
                   training: dict[str, Any]) -> Concept:
        """A `Concept` (numpy float32) for saving; the layers must be exactly the base's."""
        names = tuple(layer.name for layer in base.layers)
        if set(names) != set(self.layer_names):
            raise IncompatibleBaseError(
                f"Concept '{self.name}' holds {len(self.layer_names)} layers but base "
                f"{base.label} has {len(names)} cross-attention layers; they must match."
            )

        def array(tensor: torch.Tensor) -> np.ndarray:
            return tensor.detach().float().cpu().numpy().copy()

        return Concept(
            name=self.name, superclass=self.superclass,
            superclass_token_id=self.superclass_token_id,
            word_embedding=array(self.word_embedding), target_input=array(self.target_input),
            superclass_input=array(self.superclass_input),
            value_targets={name: array(self.value_target(name)) for name in names}
            if self.edits else {},
            base=base, covariance_hash=covariance_hash, lock=self.lock,  # type: ignore[arg-type]
            beta=self.beta, tau=self.tau, training=dict(training),
            method=self.method,  # type: ignore[arg-type]
            key_targets={name: array(self.key_targets[parameter_key(name)]) for name in names}
            if self.method == "no-key-lock" else None,
        )

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, superclass={self.superclass!r}, method={self.method}, "
                f"lock={self.lock}, beta={self.beta}, tau={self.tau}, "
                f"layers={len(self.layer_names)}")
