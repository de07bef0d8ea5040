"""`apply`: install concepts into a diffusers pipeline, and restore it exactly afterwards.

    with apply(pipe, [cat, chair], inverse_covariance) as edit:
        image = pipe("a <my-cat> on a <my-chair>").images[0]

Installing (1) checks every concept against the pipeline's base, (2) gives the pipeline a copy
of its tokenizer holding the concept tokens and a text-encoder embedding matrix one row longer
per concept (row = v*, kept live by a forward hook so that training sees gradients), and
(3) swaps the UNet's processors for Perfusion processors on `attn2` and pass-through wrappers
elsewhere. Leaving the context puts back the original tokenizer object, embedding module and
processor objects.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from perfusion_hub.bases.fingerprint import EDIT_ATTRIBUTE, FINGERPRINT_ATTRIBUTE
from perfusion_hub.bases.layers import cross_attention_layers
from perfusion_hub.concepts import LOCK_MODES, BaseFingerprint, Concept
from perfusion_hub.errors import ConflictError, IncompatibleBaseError, PhubError
from perfusion_hub.perfusion.math import gate
from perfusion_hub.perfusion.processor import (
    ConceptStack,
    PassthroughProcessor,
    PerfusionAttnProcessor,
    refuse_fused,
)
from perfusion_hub.perfusion.state import ConceptState

OVERLAP_GATE = 0.25
"""Share of one concept's o* that another concept's token may receive before `gate_notes`
reports the pair."""
WEAK_GATE = 0.5
"""Share of its own o* below which a concept's token counts as barely reaching the image."""
SEPARABLE = 0.95
"""The highest β `gate_notes` suggests, even where the concept's own token matches its input
(s = 1): there its own gate is σ(0.05 / τ), 58 % at τ = 0.15, and at β = 1 it is half closed."""
LOWEST_BETA = 0.4
"""The lowest β `gate_notes` suggests: at β = 0.4 and τ = 0.15 an unrelated token (s = 0) already
receives 7 % of the concept's o*."""


def apply(pipe: Any, concepts: Sequence[Concept | ConceptState], inverse_covariance: torch.Tensor,
          *, beta: float | None = None, tau: float | None = None, lock: str | None = None,
          record_gates: bool = False) -> PerfusionEdit:
    """Install `concepts` (one gated multi-concept edit) into `pipe`; returns the `PerfusionEdit`,
    which is also a context manager that removes it on exit.

    `beta`, `tau`, `lock` override every concept's own defaults. `ConceptState`s are used as
    they are (training passes its trainable states); `Concept`s are converted.
    """
    return PerfusionEdit(pipe, concepts, inverse_covariance, beta=beta, tau=tau, lock=lock,
                         record_gates=record_gates)


class PerfusionEdit:
    """An installed edit. Attributes: `states` (in order), `processors` (layer → processor),
    `token_ids` (one per state), `tokenizer` (the pipeline's tokenizer while installed)."""

    def __init__(self, pipe: Any, concepts: Sequence[Concept | ConceptState],
                 inverse_covariance: torch.Tensor, *, beta: float | None, tau: float | None,
                 lock: str | None, record_gates: bool) -> None:
        if getattr(pipe, EDIT_ATTRIBUTE, None) is not None:
            raise ConflictError(
                "This pipeline already has Perfusion concepts installed; pass all concepts to one "
                "`apply(...)` call, or leave the first `with apply(...)` block before installing "
                "again."
            )
        if lock is not None and lock not in LOCK_MODES:
            raise PhubError(f"lock must be one of {LOCK_MODES}, not {lock!r}.")
        self.pipe = pipe
        unet, text_encoder = pipe.unet, pipe.text_encoder
        layers = cross_attention_layers(unet)
        width = text_encoder.get_input_embeddings().weight.shape[1]
        for concept in concepts:
            check_compatible(concept, pipe, width, layers)
        if tuple(inverse_covariance.shape) != (width, width):
            raise IncompatibleBaseError(
                f"The inverse covariance is {list(inverse_covariance.shape)} but the text encoder "
                f"is {width} wide: use the statistics of this base (`Hub.open_base`)."
            )
        names = [c.name for c in concepts]
        if len(set(names)) != len(names):
            raise ConflictError(f"Concepts {names} repeat a name; each may be installed once.")
        for layer in layers:
            refuse_fused(unet.get_submodule(layer.name), layer.name)

        device = unet.device
        self.states: tuple[ConceptState, ...] = tuple(_as_state(c, device) for c in concepts)
        self._gate_backup = [(s.beta, s.tau, s.lock) for s in self.states]
        for state in self.states:
            state.beta = state.beta if beta is None else float(beta)
            state.tau = state.tau if tau is None else float(tau)
            state.lock = state.lock if lock is None else lock
        self.stack = ConceptStack(self.states, inverse_covariance.to(device), record_gates)

        self._original_tokenizer = pipe.tokenizer
        self._original_embedding = text_encoder.get_input_embeddings()
        self._original_vocab_size = text_encoder.config.vocab_size
        self._original_processors = dict(unet.attn_processors)
        self._hook = None
        self._forward_hooks = [
            unet.register_forward_pre_hook(self.stack.begin_forward),
            unet.register_forward_hook(self.stack.end_forward, always_call=True),
        ]
        try:
            self._install_tokens()
            self._install_processors(layers)
        except BaseException:
            self.remove()
            raise
        setattr(pipe, EDIT_ATTRIBUTE, self)

    def gate_notes(self, prompt: str, betas: Mapping[str, float] | None = None,
                   taus: Mapping[str, float] | None = None) -> list[str]:
        """What the gates of method.md §3–4 do at the concept tokens of `prompt`, one sentence
        per problem: a concept token cut off by the context length; a concept whose own gate
        opens less than `WEAK_GATE` on its token (its look barely reaches the image); a concept
        whose gate opens at least `OVERLAP_GATE` on another's token (its look lands there too).

        Gates are read from the prompt's own encoding, the value path that decides which look
        is painted where (global locking changes the keys only), at `betas`/`taus` (a render's
        own, by concept name) or the installed β, τ. A concept named twice counts with its
        weakest own gate and the widest gate it opens for another."""
        limit = self.tokenizer.model_max_length
        ids = self.tokenizer(prompt, truncation=True, max_length=limit).input_ids
        whole = self.tokenizer(prompt, verbose=False).input_ids
        notes = [f"<{state.name}> lies beyond the {limit} tokens the text encoder reads and is "
                 "cut off: shorten the prompt before it."
                 for state, token_id in zip(self.states, self.token_ids, strict=True)
                 if token_id in whole and token_id not in ids]
        positions = {n: [i for i, t in enumerate(ids) if t == token_id]
                     for n, token_id in enumerate(self.token_ids) if token_id in ids}
        if not positions or not self.stack.edited:
            return notes
        basis = self.stack.basis()
        beta_values, tau_values = self.stack.gate_parameters(betas, taus)
        with torch.no_grad():
            similar = basis.similarity(self.encode(prompt)[0].to(basis.inputs.device))
        for k, n in enumerate(self.stack.edited_index):
            opened, beta, tau = self.states[n], beta_values[n], tau_values[n]
            column = similar[:, k].tolist()
            if not all(map(math.isfinite, column)):  # a zero i*: there is no gate to read
                continue
            own = min((column[i] for i in positions.get(n, [])), default=None)
            others = {m: max(column[i] for i in where) for m, where in positions.items() if m != n}
            ceiling = SEPARABLE if own is None else min(SEPARABLE, own)
            notes += [_overlap_note(self.states[m].name, opened.name, s, beta, tau, ceiling)
                      for m, s in others.items() if _share(s, beta, tau) >= OVERLAP_GATE]
            if own is not None and _share(own, beta, tau) < WEAK_GATE:
                notes.append(_weak_gate_note(opened.name, own, beta, tau,
                                             max(others.values(), default=None)))
        return notes

    # tokens -------------------------------------------------------------------------------

    def _install_tokens(self) -> None:
        pipe = self.pipe
        tokenizer = copy.deepcopy(self._original_tokenizer)
        tokens = [s.token for s in self.states]
        present = [t for t in tokens if t in tokenizer.get_vocab()]
        if present:
            raise ConflictError(f"The tokenizer already holds {present}; a pipeline that carries "
                                "concept tokens cannot take them again.")
        tokenizer.add_tokens(tokens)
        self.token_ids = [tokenizer.convert_tokens_to_ids(t) for t in tokens]
        for token, token_id in zip(tokens, self.token_ids, strict=True):
            ids = tokenizer(token, add_special_tokens=False).input_ids
            if ids != [token_id]:
                raise PhubError(f"The tokenizer splits {token} into {ids}; it must be one token.")
        old = self._original_embedding
        new = nn.Embedding(len(tokenizer), old.weight.shape[1], device=old.weight.device,
                           dtype=old.weight.dtype)
        new.weight.requires_grad_(False)
        with torch.no_grad():
            new.weight[: old.weight.shape[0]] = old.weight
            for state, token_id in zip(self.states, self.token_ids, strict=True):
                new.weight[token_id] = state.word_embedding.detach().to(new.weight)
        self._hook = new.register_forward_hook(self._live_word_embeddings)
        pipe.text_encoder.set_input_embeddings(new)
        pipe.text_encoder.config.vocab_size = len(tokenizer)
        pipe.tokenizer = tokenizer
        self.tokenizer = tokenizer

    def _live_word_embeddings(self, module: nn.Module, inputs: tuple,
                              output: torch.Tensor) -> torch.Tensor:
        """Rows of concept tokens read v* itself, so that v* trains through the text encoder."""
        ids = inputs[0]
        for state, token_id in zip(self.states, self.token_ids, strict=True):
            mask = (ids == token_id).unsqueeze(-1)
            output = torch.where(mask, state.word_embedding.to(output.dtype), output)
        return output

    # processors ---------------------------------------------------------------------------

    def _install_processors(self, layers: Sequence[Any]) -> None:
        unet = self.pipe.unet
        edited = {f"{layer.name}.processor": layer.name for layer in layers}
        self.processors: dict[str, PerfusionAttnProcessor] = {}
        replacement: dict[str, Any] = {}
        for key, processor in self._original_processors.items():
            if key in edited:
                replacement[key] = self.processors[edited[key]] = PerfusionAttnProcessor(
                    edited[key], self.stack)
            else:
                replacement[key] = PassthroughProcessor(processor)
        unet.set_attn_processor(replacement)
        missing = [layer.name for layer in layers if
                   unet.get_submodule(layer.name).processor is not self.processors.get(layer.name)]
        if missing or not layers:
            raise PhubError(
                f"Perfusion processors could not be installed on {missing or 'any attn2 layer'}; "
                "this UNet's cross-attention layers are not standard diffusers `Attention`."
            )

    # removal ------------------------------------------------------------------------------

    def remove(self) -> None:
        """Restore the pipeline exactly (tokenizer, embedding module, vocab size, processors)."""
        pipe = self.pipe
        unet = pipe.unet
        if any(unet.attn_processors[k] is not v for k, v in self._original_processors.items()):
            unet.set_attn_processor(dict(self._original_processors))
        for processor in getattr(self, "processors", {}).values():
            processor.clear_cache()
        for handle in self._forward_hooks:
            handle.remove()
        self._forward_hooks = []
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        pipe.text_encoder.set_input_embeddings(self._original_embedding)
        pipe.text_encoder.config.vocab_size = self._original_vocab_size
        if pipe.tokenizer is not self._original_tokenizer:
            pipe.tokenizer = self._original_tokenizer
        for state, (beta, tau, lock) in zip(self.states, self._gate_backup, strict=True):
            state.beta, state.tau, state.lock = beta, tau, lock
        if getattr(pipe, EDIT_ATTRIBUTE, None) is self:
            setattr(pipe, EDIT_ATTRIBUTE, None)

    def __enter__(self) -> PerfusionEdit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # helpers for callers ------------------------------------------------------------------

    def gates(self) -> dict[str, torch.Tensor]:
        """Gate values (batch, tokens) per editing concept (textual inversions have no gate)
        from the last fresh K/V evaluation (needs `record_gates=True`)."""
        return dict(self.stack.recorded)

    def key_prompt(self, prompt: str) -> str:
        """The prompt the key path reads: tokens of globally locked concepts replaced by their
        superclass words (method.md §3, global locking; textual inversions lock nothing)."""
        for state in self.states:
            if state.lock == "global" and state.edits:
                prompt = prompt.replace(state.token, state.superclass)
        return prompt

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Text encoding as the Stable Diffusion pipeline computes it (max-length padding)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        pipe = self.pipe
        ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                             max_length=pipe.tokenizer.model_max_length).input_ids
        return pipe.text_encoder(ids.to(pipe.text_encoder.device))[0]

    def key_encoder_hidden_states(self, prompts: str | Sequence[str], *,
                                  guidance: bool = True, negative_prompt_embeds:
                                  torch.Tensor | None = None,
                                  num_images_per_prompt: int = 1) -> torch.Tensor:
        """`key_encoder_hidden_states` for one pipeline call, laid out like its text encoding
        ([unconditional; conditional] under classifier-free guidance). The unconditional rows
        are the unconditional encoding itself (default: the empty prompt)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        keys = self.encode([self.key_prompt(p) for p in prompts])
        keys = keys.repeat_interleave(num_images_per_prompt, dim=0)
        if not guidance:
            return keys
        if negative_prompt_embeds is None:
            negative_prompt_embeds = self.encode([""] * len(prompts))
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(
                num_images_per_prompt, dim=0)
        return torch.cat([negative_prompt_embeds.to(keys), keys])


def check_compatible(concept: Concept | ConceptState, pipe: Any, width: int,
                     layers: tuple) -> None:
    """Raise `IncompatibleBaseError` (naming both bases and what differs) before any tensor work."""
    carried: BaseFingerprint | None = getattr(pipe, FINGERPRINT_ATTRIBUTE, None)
    if isinstance(concept, Concept):
        base = concept.base
        here = carried or BaseFingerprint(base.architecture, width, layers, base.weights_hash,
                                          source="the loaded pipeline")
        differences = base.differences(here)
        if carried is None:
            differences = [d for d in differences if not d.startswith(("architecture", "weights"))]
        if differences:
            raise IncompatibleBaseError(
                f"Concept '{concept.name}' was trained on base {base.label}, not on "
                f"{here.label}: {'; '.join(differences)}. Use it with its own base."
            )
        return
    if concept.text_width != width or set(concept.layer_names) != {layer.name for layer in layers}:
        raise IncompatibleBaseError(
            f"Concept state '{concept.name}' (text width {concept.text_width}, "
            f"{len(concept.layer_names)} layers) does not fit this pipeline (text width {width}, "
            f"{len(layers)} cross-attention layers). Use it with its own base."
        )


def _as_state(concept: Concept | ConceptState, device: torch.device) -> ConceptState:
    if isinstance(concept, ConceptState):
        return concept if concept.word_embedding.device == device else concept.to(device)
    return ConceptState.from_concept(concept).to(device)


def _share(s: float, beta: float, tau: float) -> float:
    """The gate σ((s − β) / τ) of one similarity."""
    return float(gate(torch.tensor(s), beta, tau))


def _weak_gate_note(name: str, s: float, beta: float, tau: float,
                    widest_other: float | None) -> str:
    """A concept whose own gate stays mostly shut on its token, with the β that opens it half
    way, σ((s − β) / τ) ≥ ½ ⇔ β ≤ s, when that β neither falls below `LOWEST_BETA` nor opens
    the gate to `OVERLAP_GATE` on another concept's token (`widest_other`: its highest s)."""
    lowered = math.floor(s * 100) / 100
    safe = lowered >= LOWEST_BETA and (
        widest_other is None or _share(widest_other, lowered, tau) < OVERLAP_GATE)
    fix = (f"Lower its β to {lowered:.2f} or less (<{name}:beta=...>), which also opens it "
           "on tokens that resemble it, or word" if safe else "Word")
    return (f"<{name}> opens its own gate only to {_share(s, beta, tau):.0%} in this prompt "
            f"(similarity to its input {s:.2f}, β {beta:.2f}): its encoding here is unlike the "
            "one it was trained with (on a causal text encoder the words before it change it), "
            f"so little of {name}'s look reaches the image. {fix} the prompt more like its "
            "training prompts.")


def _overlap_note(opener: str, opened: str, s: float, beta: float, tau: float,
                  ceiling: float) -> str:
    """Concept `opened` whose gate opens on the token of `opener`, with the β that closes it,
    σ((s − β) / τ) < g ⇔ β > s + τ · ln((1 − g) / g), g = `OVERLAP_GATE`, when that β stays
    at or below `ceiling` (the concept's own s in the prompt, where its own gate would start
    to shut, and at most `SEPARABLE`)."""
    raised = math.floor((s + tau * math.log((1 - OVERLAP_GATE) / OVERLAP_GATE)) * 100 + 1) / 100
    fix = (f"Raise its β to {raised:.2f} or more (<{opened}:beta=...>), or retrain one of the "
           "two." if raised <= ceiling else "Retrain one of the two: their inputs are too alike "
           "for a β that keeps its own gate open.")
    return (f"<{opener}> opens the gate of <{opened}> to {_share(s, beta, tau):.0%} (similarity "
            f"to <{opened}>'s input {s:.2f}, β {beta:.2f}): {opened}'s look also lands on "
            f"<{opener}>. {fix}")
