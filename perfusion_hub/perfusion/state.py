"""`ConceptState`: one concept's tensors on one base, as torch parameters and buffers.

Trained: v* (`word_embedding`) and o*_V (`value_targets`, one vector per `attn2` layer).
Not trained: i* (`target_input`, an EMA buffer during training) and ī_super
(`superclass_input`), from which the key target o*_K = W_K ī_super is recomputed exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from perfusion_hub.concepts import DEFAULT_BETA, DEFAULT_TAU, LOCK_MODES, BaseFingerprint, Concept
from perfusion_hub.errors import IncompatibleBaseError
from perfusion_hub.names import token_for, validate_name


def parameter_key(layer_name: str) -> str:
    """`down_blocks.0.attentions.0.transformer_blocks.0.attn2` → a '.'-free ParameterDict key."""
    return layer_name.replace(".", "-")


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
                 tau: float = DEFAULT_TAU, lock: str = "local") -> None:
        super().__init__()
        if lock not in LOCK_MODES:
            raise ValueError(f"lock must be one of {LOCK_MODES}, not {lock!r}")
        self.name = validate_name(name)
        self.superclass = superclass
        self.superclass_token_id = int(superclass_token_id)
        self.beta = float(beta)
        self.tau = float(tau)
        self.lock = lock
        self.word_embedding = nn.Parameter(_vector(word_embedding))
        self.register_buffer("target_input", _vector(target_input))
        self.register_buffer("superclass_input", _vector(superclass_input))
        self.layer_names: tuple[str, ...] = tuple(value_targets)
        self.value_targets = nn.ParameterDict(
            {parameter_key(layer): nn.Parameter(_vector(value))
             for layer, value in value_targets.items()}
        )
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

    def value_target(self, layer_name: str) -> torch.Tensor:
        """o*_V of one `attn2` layer (a trainable parameter)."""
        key = parameter_key(layer_name)
        if key not in self.value_targets:
            raise IncompatibleBaseError(
                f"Concept '{self.name}' has no value target for layer {layer_name}: it was trained "
                "on a base with other cross-attention layers. Use it with its own base."
            )
        return self.value_targets[key]

    def key_target(self, layer_name: str, to_k_weight: torch.Tensor) -> torch.Tensor:
        """o*_K = W_K ī_super (float32, never trained); `layer_name` is checked, not used."""
        self.value_target(layer_name)
        return (to_k_weight.detach().float() @ self.superclass_input.float()).detach()

    @classmethod
    def from_concept(cls, concept: Concept) -> ConceptState:
        """The torch form of a stored concept (tensors converted to float32)."""
        return cls(
            concept.name, concept.superclass, concept.superclass_token_id,
            concept.word_embedding, concept.target_input, concept.superclass_input,
            {layer.name: concept.value_targets[layer.name] for layer in concept.base.layers},
            beta=concept.beta, tau=concept.tau, lock=concept.lock,
        )

    @classmethod
    def initial(cls, name: str, superclass: str, superclass_token_id: int,
                superclass_input: torch.Tensor, word_embedding: torch.Tensor,
                unet: nn.Module, *, lock: str = "local") -> ConceptState:
        """Where training starts (method.md §5): i* = ī_super, o*_V = W_V ī_super per `attn2`,
        v* = the given (superclass) word embedding. Gate defaults are the inference ones."""
        from perfusion_hub.bases.layers import cross_attention_layers

        device = next(unet.parameters()).device
        superclass_input = _vector(superclass_input).to(device)
        values = {}
        for layer in cross_attention_layers(unet):
            weight = unet.get_submodule(layer.name).to_v.weight.detach()
            values[layer.name] = weight.float() @ superclass_input
        return cls(name, superclass, superclass_token_id, _vector(word_embedding).to(device),
                   superclass_input.clone(), superclass_input, values, lock=lock)

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
            value_targets={name: array(self.value_target(name)) for name in names},
            base=base, covariance_hash=covariance_hash, lock=self.lock,  # type: ignore[arg-type]
            beta=self.beta, tau=self.tau, training=dict(training),
        )

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, superclass={self.superclass!r}, lock={self.lock}, "
                f"beta={self.beta}, tau={self.tau}, layers={len(self.layer_names)}")
