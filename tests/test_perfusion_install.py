"""`apply`: compatibility checks, tokens and embeddings, exact restoration."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny import tiny_concept, tiny_pipeline

from perfusion_hub.bases import fingerprint_pipeline
from perfusion_hub.errors import ConflictError, IncompatibleBaseError
from perfusion_hub.perfusion import ConceptState, PerfusionAttnProcessor, apply


@pytest.fixture(scope="module")
def concepts(pipe):
    return [tiny_concept(pipe, "my-cat", 0, "cat"), tiny_concept(pipe, "my-chair", 1, "chair")]


def snapshot(pipe):
    embedding = pipe.text_encoder.get_input_embeddings()
    return {
        "tokenizer": pipe.tokenizer, "length": len(pipe.tokenizer), "embedding": embedding,
        "weights": embedding.weight.detach().clone(),
        "vocab_size": pipe.text_encoder.config.vocab_size,
        "processors": dict(pipe.unet.attn_processors),
        "hooks": (dict(pipe.unet._forward_pre_hooks), dict(pipe.unet._forward_hooks),
                  dict(pipe.text_encoder.get_input_embeddings()._forward_hooks)),
    }


def assert_restored(pipe, before):
    after = snapshot(pipe)
    assert after["tokenizer"] is before["tokenizer"] and after["length"] == before["length"]
    assert after["embedding"] is before["embedding"]
    assert torch.equal(after["weights"], before["weights"])
    assert after["vocab_size"] == before["vocab_size"]
    assert after["processors"].keys() == before["processors"].keys()
    assert all(after["processors"][k] is v for k, v in before["processors"].items())
    assert after["hooks"] == before["hooks"]


def test_install_then_remove_restores_everything(pipe, inv, concepts):
    before = snapshot(pipe)
    with apply(pipe, concepts, inv) as edit:
        assert len(pipe.tokenizer) == before["length"] + 2
        assert edit.tokenizer is pipe.tokenizer
        weight = pipe.text_encoder.get_input_embeddings().weight
        for state, token_id in zip(edit.states, edit.token_ids, strict=True):
            assert pipe.tokenizer(state.token, add_special_tokens=False).input_ids == [token_id]
            assert torch.equal(weight[token_id], state.word_embedding.detach())
        assert list(edit.processors) == [n for n, _ in pipe.unet.named_modules()
                                         if n.endswith("attn2")]
        assert all(isinstance(pipe.unet.get_submodule(n).processor, PerfusionAttnProcessor)
                   for n in edit.processors)
        assert [s.name for s in edit.states] == ["my-cat", "my-chair"]
    assert_restored(pipe, before)


def test_restored_after_an_exception(pipe, inv, concepts):
    before = snapshot(pipe)
    with pytest.raises(RuntimeError, match="boom"), apply(pipe, concepts, inv):
        raise RuntimeError("boom")
    assert_restored(pipe, before)


def test_installing_twice_is_refused_never_doubled(pipe, inv, concepts):
    before = snapshot(pipe)
    with apply(pipe, concepts[:1], inv):
        inside = snapshot(pipe)
        with pytest.raises(ConflictError, match="already has Perfusion concepts"):
            apply(pipe, concepts[1:], inv)
        after_refusal = snapshot(pipe)
        assert after_refusal["length"] == inside["length"]
        assert all(after_refusal["processors"][k] is v for k, v in inside["processors"].items())
    assert_restored(pipe, before)
    with apply(pipe, concepts[1:], inv):
        pass
    assert_restored(pipe, before)


def test_concept_of_another_base_is_refused_with_both_names(pipe, inv, concepts):
    carried = fingerprint_pipeline(pipe, "tiny")
    other = dataclasses.replace(concepts[0].base, weights_hash="f" * 64, source="other-base")
    foreign = dataclasses.replace(concepts[0], base=other)
    with pytest.raises(IncompatibleBaseError) as raised:
        apply(pipe, [foreign], inv)
    message = str(raised.value)
    assert "other-base" in message and carried.label in message and "weights hash" in message
    assert len(pipe.tokenizer) == len(tiny_pipeline().tokenizer)


def test_concept_of_another_width_is_refused_without_a_carried_fingerprint(inv, concepts):
    bare = tiny_pipeline()
    wide = tiny_pipeline(width=48)
    wide_concept = tiny_concept(wide, "wide", 0)
    with pytest.raises(IncompatibleBaseError, match="text width 48 vs 32"):
        apply(bare, [wide_concept], inv)
    state = ConceptState.from_concept(wide_concept)
    with pytest.raises(IncompatibleBaseError, match="text width 48"):
        apply(bare, [state], inv)


def test_duplicate_names_are_refused(pipe, inv, concepts):
    with pytest.raises(ConflictError, match="repeat"):
        apply(pipe, [concepts[0], concepts[0]], inv)


def test_prompt_embeds_passed_by_the_caller(pipe, inv, concepts):
    def run(**kwargs):
        return pipe(num_inference_steps=2, guidance_scale=5.0, output_type="np",
                    generator=torch.Generator().manual_seed(0), **kwargs).images

    prompt = "a photo of <my-cat> on <my-chair>"
    with apply(pipe, concepts, inv) as edit:
        by_prompt = run(prompt=prompt)
        by_embeds = run(prompt_embeds=edit.encode(prompt),
                        negative_prompt_embeds=edit.encode(""))
        same = run(prompt=prompt, cross_attention_kwargs={
            "key_encoder_hidden_states": edit.key_encoder_hidden_states(prompt)})
    with apply(pipe, concepts, inv, lock="global") as edit:
        by_global = run(prompt=prompt, cross_attention_kwargs={
            "key_encoder_hidden_states": edit.key_encoder_hidden_states(prompt)})
    stock = run(prompt="a photo of cat on chair")
    assert np.abs(by_prompt - by_embeds).max() < 1e-5
    assert np.abs(by_prompt - stock).max() > 1e-3
    assert np.abs(by_prompt - same).max() < 1e-6  # local locking: keys read the prompt itself
    assert np.abs(by_prompt - by_global).max() > 1e-4


def test_word_embedding_is_live(pipe, inv, concepts):
    state = ConceptState.from_concept(concepts[0])
    with apply(pipe, [state], inv) as edit:
        first = edit.encode("a <my-cat>").detach().clone()
        with torch.no_grad():
            state.word_embedding.mul_(3)
        second = edit.encode("a <my-cat>")
    assert not torch.allclose(first[0, 2], second[0, 2])
    assert torch.equal(first[0, 1], second[0, 1])


def test_overrides_apply_to_every_concept_and_are_undone(pipe, inv, concepts):
    state = ConceptState.from_concept(concepts[0])
    with apply(pipe, [state], inv, beta=0.5, tau=0.2, lock="global") as edit:
        assert (edit.states[0].beta, edit.states[0].tau, edit.states[0].lock) == (0.5, 0.2,
                                                                                 "global")
    assert (state.beta, state.tau, state.lock) == (concepts[0].beta, concepts[0].tau, "local")


def test_overlapping_concepts_are_reported_by_name(pipe, inv, concepts):
    cat, chair = (ConceptState.from_concept(c) for c in concepts)
    with apply(pipe, [cat], inv) as edit:
        assert edit.overlaps() == []
    metric = inv.double()
    a, b = cat.target_input.detach().double(), chair.target_input.detach().double()
    with torch.no_grad():  # C⁻¹-orthogonal to the cat's input: s = 0 both ways
        chair.target_input.copy_(b - (a @ metric @ b) / (a @ metric @ a) * a)
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        assert edit.overlaps() == []
    with torch.no_grad():  # toward the cat's input: s_cat(i*_chair) = 0.6
        chair.target_input.add_(0.6 * cat.target_input)
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.overlaps()
        # a render's own β decides: at the suggested one the gate lets less than 25 % through
        raised = edit.overlaps(betas={"my-cat": 0.77})
        lowered = edit.overlaps(betas={"my-cat": 0.5})
    assert notes[0] == (
        "<my-chair> opens the gate of <my-cat> to 34% (similarity to <my-cat>'s input 0.60, "
        "β 0.70): my-cat's look also lands on <my-chair>. Raise its β to 0.77 or more "
        "(<my-cat:beta=...>), or retrain one of the two.")
    assert not any(n.startswith("<my-chair> opens") for n in raised)
    assert lowered[0].startswith("<my-chair> opens the gate of <my-cat> to 66%")
    with torch.no_grad():
        chair.target_input.copy_(cat.target_input)
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.overlaps()
    assert [n.split(" (")[0] for n in notes] == ["<my-chair> opens the gate of <my-cat> to 88%",
                                                 "<my-cat> opens the gate of <my-chair> to 88%"]
    assert all(n.endswith("Retrain one of the two: their inputs are too alike for a β that "
                          "keeps its own gate open.") for n in notes)


def test_a_textual_inversion_concept_has_no_gate_to_open(pipe, inv, concepts):
    cat = ConceptState.from_concept(concepts[0])
    words = ConceptState.initial("my-words", "cat", cat.superclass_token_id,
                                 cat.superclass_input, cat.word_embedding, pipe.unet,
                                 method="textual-inversion")
    with torch.no_grad():
        words.target_input.copy_(cat.target_input)
    with apply(pipe, [cat, words], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.overlaps()
    assert [n.split(" (")[0] for n in notes] == ["<my-words> opens the gate of <my-cat> to 88%"]
