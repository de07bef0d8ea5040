"""diffusers attention processors that apply the Perfusion edit to cross-attention (`attn2`).

Keys and values of `attn2` are h_K(e) and h_V(e) of method.md §3–4 for every row e of the text
encoding; queries, outputs and self-attention are untouched. The edited K and V depend only on
the text encoding, so outside autograd they are computed once per encoding (and per state of
the concepts) and reused across the denoising steps.

Concepts of the comparison baselines (`ConceptState.method`) share the same formula:
"no-key-lock" puts its learned o*_K where Perfusion puts W_K ī_super; "textual-inversion" adds no
term and its i* stays out of the projection basis, so it acts through its word embedding alone.

The edit applies to every row of the batch, the unconditional half of classifier-free guidance
included (method.md §5 open choice): the empty prompt holds no concept token, so it receives
only the σ(−β/τ) leak, as it did in training, where every prompt passed through the edit.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from perfusion_hub.errors import PhubError
from perfusion_hub.perfusion.math import Basis
from perfusion_hub.perfusion.state import ConceptState

Overrides = Mapping[str, float] | Sequence[float] | None


class ConceptStack:
    """The active concepts of one installation and C⁻¹, shared by all its processors.

    Holds the per-concept-set precomputation (`Basis`), the gate parameters and the gates
    recorded on the last fresh evaluation. Only the concepts that edit (`edited`, not textual
    inversions) enter the basis and the gated sum. Between `begin_forward` and `end_forward` (hooks
    on the UNet) the concepts cannot change, so their signature and resolved gate parameters
    are computed once per UNet call instead of once per layer.
    """

    def __init__(self, states: Sequence[ConceptState], inverse_covariance: torch.Tensor,
                 record_gates: bool = False) -> None:
        self.states = tuple(states)
        self.edited_index = tuple(n for n, s in enumerate(self.states) if s.edits)
        self.edited = tuple(self.states[n] for n in self.edited_index)
        self.inverse_covariance = inverse_covariance.detach().float()
        self.record_gates = record_gates
        self.recorded: dict[str, torch.Tensor] = {}
        self._basis: tuple[tuple, Basis] | None = None
        self._memo: dict[Any, Any] | None = None
        self._last_signature: tuple = ()

    def __len__(self) -> int:
        return len(self.states)

    def begin_forward(self, *_: Any) -> None:
        self._memo = {}

    def end_forward(self, *_: Any) -> None:
        self._memo = None

    def basis(self) -> Basis:
        """C⁻¹ I, Iᵀ C⁻¹ I and the energies of the editing concepts, rebuilt when any i*
        changes."""
        key = tuple((id(s.target_input), _version(s.target_input)) for s in self.edited)
        if self._basis is None or self._basis[0] != key:
            inputs = torch.stack([s.target_input for s in self.edited]).detach()
            inv_cov = self.inverse_covariance.to(inputs.device)
            self._basis = (key, Basis.build(inputs, inv_cov))
        return self._basis[1]

    def gate_parameters(self, betas: Overrides, taus: Overrides) -> tuple[tuple[float, ...], ...]:
        """(β_n, τ_n) per concept after per-call overrides (by concept name or by position)."""
        memo = self._memo
        if memo is not None:
            found = memo.get(("gates", id(betas), id(taus)))
            if found is not None:
                return found[2]
        resolved = (self._resolve(betas, "beta"), self._resolve(taus, "tau"))
        if memo is not None:  # the overrides are kept alive so that their ids stay theirs
            memo[("gates", id(betas), id(taus))] = (betas, taus, resolved)
        return resolved

    def _resolve(self, override: Overrides, field: str) -> tuple[float, ...]:
        defaults = [getattr(s, field) for s in self.states]
        if override is None:
            return tuple(defaults)
        if isinstance(override, Mapping):
            unknown = set(override) - {s.name for s in self.states}
            if unknown:
                raise PhubError(f"concept_{field}s names {sorted(unknown)} are not installed; "
                                f"installed: {[s.name for s in self.states]}.")
            return tuple(float(override.get(s.name, d)) for s, d in zip(self.states, defaults,
                                                                         strict=True))
        values = [float(v) for v in override]
        if len(values) != len(self.states):
            raise PhubError(f"concept_{field}s has {len(values)} values for {len(self.states)} "
                            "installed concepts; give one per concept or a name → value mapping.")
        return tuple(values)

    def requires_grad(self) -> bool:
        """Whether any trained o* (values, and keys without key-locking) needs a gradient."""
        return any(t.requires_grad for s in self.edited for t in s.output_targets())

    def signature(self) -> tuple:
        """Identity and in-place version of every tensor the edit reads, all layers together.

        Equal signatures are returned as the same object, so that comparing them is cheap.
        """
        memo = self._memo
        if memo is not None and "signature" in memo:
            return memo["signature"]
        signature = tuple(
            (id(tensor), _version(tensor))
            for state in self.states
            for tensor in (state.target_input, state.superclass_input,
                           *state.output_targets())
        )
        if signature == self._last_signature:
            signature = self._last_signature
        self._last_signature = signature
        if memo is not None:
            memo["signature"] = signature
        return signature


class PerfusionAttnProcessor:
    """Cross-attention with Perfusion-edited keys and values for all concepts of a stack.

    Per-call options (pass them in `cross_attention_kwargs`):
        key_encoder_hidden_states  encoding the key path reads (global locking: the prompt with
                                   concept words replaced by superclass words, unconditional
                                   rows unchanged); default: the prompt's own encoding
        perfusion_scale            h = W e + scale · (h(e) − W e); 1 is the method, 0 the stock
                                   layer
        concept_betas/concept_taus β_n/τ_n overrides, by concept name or one per concept
        perfusion_enabled          False: stock keys and values
    """

    def __init__(self, layer_name: str, stack: ConceptStack) -> None:
        self.layer_name = layer_name
        self.stack = stack
        self._cache: dict[str, Any] | None = None

    def clear_cache(self) -> None:
        """Forget the cached keys and values."""
        self._cache = None

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        key_encoder_hidden_states: torch.Tensor | None = None,
        perfusion_scale: float = 1.0,
        concept_betas: Overrides = None,
        concept_taus: Overrides = None,
        perfusion_enabled: bool = True,
    ) -> torch.Tensor:
        refuse_fused(attn, self.layer_name)
        if encoder_hidden_states is None:
            raise PhubError(f"{self.layer_name}: the Perfusion processor is for cross-attention "
                            "and received no text encoding.")
        if (key_encoder_hidden_states is not None
                and key_encoder_hidden_states.shape != encoder_hidden_states.shape):
            raise PhubError(
                f"key_encoder_hidden_states has shape {list(key_encoder_hidden_states.shape)}, "
                f"the text encoding {list(encoder_hidden_states.shape)}: build it with "
                "`edit.key_encoder_hidden_states(...)` for the same prompts and guidance."
            )
        key, value = self.key_value(attn, encoder_hidden_states, key_encoder_hidden_states,
                                    perfusion_scale, concept_betas, concept_taus,
                                    perfusion_enabled)
        return attend(attn, hidden_states, key, value, attention_mask, temb)

    def key_value(self, attn: Any, text: torch.Tensor, key_text: torch.Tensor | None,
                  scale: float, betas: Overrides, taus: Overrides,
                  enabled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Edited (K, V) for this layer, from the cache when nothing they depend on changed."""
        active = enabled and scale != 0.0 and bool(self.stack.edited)
        if torch.is_grad_enabled() and (
                text.requires_grad or (key_text is not None and key_text.requires_grad)
                or (active and self.stack.requires_grad())):
            return self._compute(attn, text, key_text, scale, betas, taus, active)
        signature = (
            _identity(text), _identity(key_text), active, float(scale),
            self.stack.gate_parameters(betas, taus) if active else None,
            self.stack.signature() if active else None,
            _identity(attn.to_k.weight), _identity(attn.to_v.weight),
        )
        cache = self._cache
        if (cache is not None and cache["signature"] == signature and cache["text"]() is text
                and (key_text is None or cache["key_text"]() is key_text)):
            return cache["key"], cache["value"]
        with torch.no_grad():
            key, value = self._compute(attn, text, key_text, scale, betas, taus, active)
        self._cache = {
            "signature": signature, "key": key, "value": value, "text": weakref.ref(text),
            "key_text": weakref.ref(key_text) if key_text is not None else None,
        }
        return key, value

    def _compute(self, attn: Any, text: torch.Tensor, key_text: torch.Tensor | None,
                 scale: float, betas: Overrides, taus: Overrides,
                 active: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if attn.norm_cross:
            text = attn.norm_encoder_hidden_states(text)
            if key_text is not None:
                key_text = attn.norm_encoder_hidden_states(key_text)
        key_input = text if key_text is None else key_text
        key, value = attn.to_k(key_input), attn.to_v(text)
        if not active:
            return key, value
        stack, layer = self.stack, self.layer_name
        basis = stack.basis()
        beta_values, tau_values = stack.gate_parameters(betas, taus)
        device = basis.inputs.device
        beta = torch.tensor([beta_values[n] for n in stack.edited_index], device=device)
        tau = torch.tensor([tau_values[n] for n in stack.edited_index], device=device)
        w_k, w_v = attn.to_k.weight, attn.to_v.weight
        key_targets = torch.stack([s.key_target(layer, w_k) for s in stack.edited])
        value_targets = torch.stack([s.value_target(layer) for s in stack.edited])
        key, _ = basis.edit(key_input, key, basis.mapped_inputs(w_k.detach()), key_targets,
                            beta, tau, scale)
        value, gates = basis.edit(text, value, basis.mapped_inputs(w_v.detach()), value_targets,
                                  beta, tau, scale)
        if stack.record_gates:
            stack.recorded = {s.name: gates[..., n].detach().clone()
                              for n, s in enumerate(stack.edited)}
        return key, value


class PassthroughProcessor:
    """Wraps a processor of a non-edited attention layer so that it accepts (and ignores) the
    Perfusion keyword arguments that diffusers hands to every attention layer."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        parameters = inspect.signature(inner.__call__).parameters
        self._accepts = set(parameters)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        key_encoder_hidden_states: torch.Tensor | None = None,
        perfusion_scale: float = 1.0,
        concept_betas: Overrides = None,
        concept_taus: Overrides = None,
        perfusion_enabled: bool = True,
    ) -> torch.Tensor:
        extra = {"temb": temb} if "temb" in self._accepts and temb is not None else {}
        return self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                          attention_mask=attention_mask, **extra)


def refuse_fused(attn: Any, layer_name: str) -> None:
    """Raise when the layer's projections are fused (K and V no longer separate)."""
    fused = getattr(attn, "fused_projections", False)
    if fused or hasattr(attn, "to_kv") or hasattr(attn, "to_qkv"):
        raise PhubError(
            f"{layer_name} uses fused QKV projections, which Perfusion cannot edit: call "
            "`pipe.unfuse_qkv_projections()` (or load the pipeline without fusing) first."
        )


def attend(attn: Any, hidden_states: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> torch.Tensor:
    """diffusers' `AttnProcessor2_0` with the key and value supplied by the caller."""
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    input_ndim = hidden_states.ndim
    if input_ndim == 4:
        batch_size, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
    batch_size, sequence_length = key.shape[0], key.shape[1]
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    query = attn.to_q(hidden_states)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                   dropout_p=0.0, is_causal=False)
    hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
    hidden_states = hidden_states.to(query.dtype)
    hidden_states = attn.to_out[0](hidden_states)
    hidden_states = attn.to_out[1](hidden_states)
    if input_ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def _version(tensor: torch.Tensor) -> int | None:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors carry no version counter
        return None


def _identity(tensor: torch.Tensor | None) -> tuple | None:
    """Cheap identity of a tensor's current content: object, storage and in-place version."""
    if tensor is None:
        return None
    return (id(tensor), tensor.data_ptr(), _version(tensor))
