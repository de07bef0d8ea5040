"""The Perfusion attention processor on a tiny random Stable Diffusion UNet."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import tiny_concept, tiny_pipeline, word_encoding

from perfusion_hub.errors import PhubError
from perfusion_hub.perfusion import ConceptState, apply
from perfusion_hub.perfusion import math as pmath
from perfusion_hub.perfusion.processor import PerfusionAttnProcessor


@pytest.fixture(scope="module")
def concepts(pipe):
    return [tiny_concept(pipe, f"c{n}", seed=n, superclass=word)
            for n, word in enumerate(["cat", "dog", "chair", "teapot"])]


def latents(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def unet(pipe, text, **kwargs) -> torch.Tensor:
    return pipe.unet(latents(text.shape[0]), 500, encoder_hidden_states=text,
                     cross_attention_kwargs=kwargs or None).sample


def encode(pipe, prompts) -> torch.Tensor:
    ids = pipe.tokenizer(prompts, padding="max_length", truncation=True, return_tensors="pt",
                         max_length=pipe.tokenizer.model_max_length).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def attn2(pipe):
    return [(name, module) for name, module in pipe.unet.named_modules()
            if name.endswith("attn2")]


def test_no_concepts_equals_stock(pipe, inv, concepts):
    text = encode(pipe, ["a photo of a cat", ""])
    stock = unet(pipe, text)
    with apply(pipe, [], inv):
        assert (unet(pipe, text) - stock).abs().max() <= 1e-6
    with apply(pipe, concepts[:2], inv):
        assert (unet(pipe, text, perfusion_enabled=False) - stock).abs().max() <= 1e-6
        assert (unet(pipe, text, perfusion_scale=0.0) - stock).abs().max() <= 1e-6
        assert (unet(pipe, text) - stock).abs().max() > 1e-4
    assert (unet(pipe, text) - stock).abs().max() == 0


def test_open_gate_maps_target_input_to_both_targets(pipe, inv, concepts):
    with apply(pipe, concepts[:1], inv) as edit:
        state = edit.states[0]
        text = state.target_input.reshape(1, 1, -1).expand(1, 3, -1).contiguous()
        for name, module in attn2(pipe):
            key, value = edit.processors[name].key_value(
                module, text, None, 1.0, [-math.inf], None, True)
            assert torch.allclose(value[0], state.value_target(name).expand(3, -1), atol=1e-4)
            want_key = module.to_k.weight @ state.superclass_input
            assert torch.allclose(key[0], want_key.expand(3, -1), atol=1e-4)


def test_c_orthogonal_token_gets_stock_projection_plus_leak(pipe, inv, concepts):
    with apply(pipe, concepts[:1], inv) as edit:
        state = edit.states[0]
        a = inv @ state.target_input
        e = torch.randn(1, 4, a.numel(), generator=torch.Generator().manual_seed(3))
        e = e - (e @ a)[..., None] / (a @ a) * a
        leak = 1 / (1 + math.exp(state.beta / state.tau))
        for name, module in attn2(pipe):
            key, value = edit.processors[name].key_value(module, e, None, 1.0, None, None, True)
            want_v = module.to_v(e) + leak * state.value_target(name)
            want_k = module.to_k(e) + leak * state.key_target(name, module.to_k.weight)
            assert torch.allclose(value, want_v, atol=1e-5)
            assert torch.allclose(key, want_k, atol=1e-5)


def test_training_step_trains_values_and_embedding_never_keys(pipe, inv, concepts):
    state = ConceptState.from_concept(concepts[0])
    names = [name for name, _ in attn2(pipe)]
    keys_before = [state.key_target(n, pipe.unet.get_submodule(n).to_k.weight) for n in names]
    superclass_before = state.superclass_input.clone()
    values_before = [state.value_target(n).detach().clone() for n in names]
    optimizer = torch.optim.AdamW(state.parameters(), lr=0.01)
    with apply(pipe, [state], inv) as edit:
        text = edit.encode(["a photo of <c0>"])
        noise = pipe.unet(latents(1), 500, encoder_hidden_states=text).sample
        noise.square().mean().backward()
        assert state.word_embedding.grad is not None and state.word_embedding.grad.abs().sum() > 0
        assert all(state.value_target(n).grad.abs().sum() > 0 for n in names)
        optimizer.step()
    assert state.superclass_input.grad is None and not state.superclass_input.requires_grad
    assert torch.equal(state.superclass_input, superclass_before)
    for n, key, value in zip(names, keys_before, values_before, strict=True):
        assert torch.equal(state.key_target(n, pipe.unet.get_submodule(n).to_k.weight), key)
        assert not torch.equal(state.value_target(n).detach(), value)


def test_permuting_concepts_changes_no_output(pipe, inv, concepts):
    text = None
    outputs = []
    for order in ([0, 1, 2, 3], [2, 0, 3, 1]):
        with apply(pipe, [concepts[i] for i in order], inv) as edit:
            text = edit.encode(["a photo of <c0> and <c1> on <c2>", "<c3> in a room"])
            outputs.append(unet(pipe, text))
    assert (outputs[0] - outputs[1]).abs().max() < 1e-5


def test_global_and_local_locking_differ_only_in_the_key_path(pipe, inv, concepts):
    with apply(pipe, concepts[:2], inv, lock="global") as edit:
        prompt = "a photo of <c0> on a chair"
        assert edit.key_prompt(prompt) == "a photo of cat on a chair"
        text = edit.encode([prompt])
        keys_text = edit.encode([edit.key_prompt(prompt)])
        for name, module in attn2(pipe):
            processor = edit.processors[name]
            k_local, v_local = processor.key_value(module, text, None, 1.0, None, None, True)
            k_global, v_global = processor.key_value(module, text, keys_text, 1.0, None, None, True)
            assert torch.equal(v_local, v_global)
            assert not torch.allclose(k_local, k_global, atol=1e-4)
            stock_value = module.to_v(text)
            assert not torch.allclose(v_local, stock_value, atol=1e-4)
        both = edit.key_encoder_hidden_states(prompt)
        unconditional = edit.encode([""])
        assert both.shape == (2, *text.shape[1:])
        assert torch.equal(both[0], unconditional[0]) and torch.equal(both[1], keys_text[0])


def test_kv_cached_per_encoding_and_invalidated(pipe, inv, concepts, monkeypatch):
    calls = []
    original = pmath.Basis.edit

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pmath.Basis, "edit", counting)
    layers = len(attn2(pipe))
    with apply(pipe, concepts[:2], inv) as edit:
        text = edit.encode(["a photo of <c0>", ""])
        first = unet(pipe, text)
        assert len(calls) == 2 * layers  # keys and values, once per layer
        assert torch.equal(unet(pipe, text), first)
        assert len(calls) == 2 * layers  # reused
        unet(pipe, text, concept_betas={"c0": 0.5})
        assert len(calls) == 4 * layers  # new gate parameters
        with torch.no_grad():
            edit.states[1].value_target(attn2(pipe)[0][0]).mul_(2)
        unet(pipe, text, concept_betas={"c0": 0.5})
        assert len(calls) == 6 * layers  # a concept changed
        unet(pipe, text.clone(), concept_betas={"c0": 0.5})
        assert len(calls) == 8 * layers  # a new encoding
        unet(pipe, text, concept_betas={"c0": 0.5}, concept_taus=[0.2, 0.2])
        assert len(calls) == 10 * layers  # new gate parameters again


def test_recorded_gates_fire_on_each_concepts_own_token(pipe, inv):
    prompt = "a photo of <g0> and <g1>"
    states = []
    for n, word in enumerate(["cat", "chair"]):
        state = ConceptState.from_concept(tiny_concept(pipe, f"g{n}", seed=n, superclass=word))
        states.append(state)
    with apply(pipe, states, inv, record_gates=True) as edit:
        ids = edit.tokenizer(prompt).input_ids
        text = edit.encode([prompt])
        positions = [ids.index(token_id) for token_id in edit.token_ids]
        with torch.no_grad():
            for state, position in zip(states, positions, strict=True):
                state.target_input.copy_(text[0, position])
        unet(pipe, text)
        gates = edit.gates()
    for state, position, other in zip(states, positions, positions[::-1], strict=True):
        row = gates[state.name][0]
        assert row[position].item() == pytest.approx(1 / (1 + math.exp(-(1 - 0.7) / 0.15)),
                                                     abs=1e-4)  # s = 1 on its own token
        assert row[position] > row[other]
        assert int(row.argmax()) == position


def test_fused_projections_are_refused(inv, concepts):
    fused = tiny_pipeline()
    fused.unet.fuse_qkv_projections()
    with pytest.raises(PhubError, match="fused QKV"):
        apply(fused, [], inv)
    assert not any(isinstance(p, PerfusionAttnProcessor)
                   for p in fused.unet.attn_processors.values())


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_low_precision_within_tolerance_of_fp32(pipe, inv, concepts, dtype, tolerance):
    """UNet output with 2 concepts: max error relative to the output's scale."""
    with apply(pipe, concepts[:2], inv) as edit:
        text = edit.encode(["a photo of <c0> on <c1>", ""])
        reference = unet(pipe, text)
    low = tiny_pipeline().to(dtype=dtype)
    with apply(low, concepts[:2], inv) as edit:
        text = edit.encode(["a photo of <c0> on <c1>", ""])
        try:
            out = low.unet(latents(2).to(dtype), 500, encoder_hidden_states=text).sample
        except RuntimeError as error:  # an op without a CPU kernel for this dtype
            pytest.skip(f"{dtype} not supported on this CPU: {error}")
    error = (out.float() - reference).abs().max() / reference.abs().max()
    assert error < tolerance


def test_word_encoding_helper_reads_the_right_position(pipe):
    a = word_encoding(pipe, "a photo of a cat", "cat")
    b = encode(pipe, ["a photo of a cat"])[0, 5]
    assert torch.equal(a, b)


def test_keyword_arguments_reach_every_layer_without_warnings(pipe, inv, concepts, caplog):
    import logging

    text = encode(pipe, ["a photo of a cat"])
    with caplog.at_level(logging.WARNING), apply(pipe, concepts[:1], inv):
        unet(pipe, text, perfusion_scale=0.5, concept_betas=[0.6], perfusion_enabled=True)
    assert not [r for r in caplog.records if "cross_attention_kwargs" in r.getMessage()]


def test_changes_between_unet_calls_are_seen_by_direct_calls(pipe, inv, concepts):
    with apply(pipe, concepts[:1], inv) as edit:
        name, module = attn2(pipe)[0]
        text = encode(pipe, ["a photo of a cat"])
        unet(pipe, text)
        before = edit.processors[name].key_value(module, text, None, 1.0, None, None, True)[1]
        with torch.no_grad():
            edit.states[0].value_target(name).add_(1.0)
        after = edit.processors[name].key_value(module, text, None, 1.0, None, None, True)[1]
    assert not torch.allclose(before, after)
