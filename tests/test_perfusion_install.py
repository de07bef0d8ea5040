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


PAIR = "a <my-cat> on a <my-chair>"


def encodings_at_tokens(pipe, inv, states, prompt):
    """The prompt's encoding at each concept's token, by concept name."""
    with apply(pipe, states, inv) as edit, torch.no_grad():
        ids = edit.tokenizer(prompt).input_ids
        encoding = edit.encode(prompt)[0]
        return {s.name: encoding[ids.index(t)].clone()
                for s, t in zip(edit.states, edit.token_ids, strict=True)}


def input_with(inv, rows, similarities):
    """An i* whose s(e) is `similarities[k]` at `rows[k]`: with G = X C⁻¹ Xᵀ,
    i = Xᵀ G⁻¹ y / (yᵀ G⁻¹ y) gives X C⁻¹ i = y · iᵀ C⁻¹ i."""
    x, y = torch.stack(rows).double(), torch.tensor(similarities, dtype=torch.float64)
    solved = torch.linalg.solve(x @ inv.double() @ x.T, y)
    return (x.T @ solved / (y @ solved)).float()


def set_inputs(states, inputs):
    with torch.no_grad():
        for state, target in zip(states, inputs, strict=True):
            state.target_input.copy_(target)


def test_gate_notes_name_a_gate_that_opens_on_another_concepts_token(pipe, inv, concepts):
    cat, chair = (ConceptState.from_concept(c) for c in concepts)
    at = encodings_at_tokens(pipe, inv, [cat, chair], PAIR)
    rows = [at["my-cat"], at["my-chair"]]
    set_inputs([cat, chair], [input_with(inv, rows, [1.0, 0.0]), input_with(inv, rows, [0.0, 1.0])])
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        assert edit.gate_notes(PAIR) == []
        assert edit.gate_notes("a <my-cat>") == []
    set_inputs([cat], [input_with(inv, rows, [1.0, 0.6])])  # s_cat = 0.6 at <my-chair>
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
        # a render's own β decides: at the suggested one the gate lets less than 25 % through
        raised = edit.gate_notes(PAIR, betas={"my-cat": 0.77})
        lowered = edit.gate_notes(PAIR, betas={"my-cat": 0.5})
        alone = edit.gate_notes("a <my-cat> next to a chair")
    assert notes == [
        "<my-chair> opens the gate of <my-cat> to 34% (similarity to <my-cat>'s input 0.60, "
        "β 0.70): my-cat's look also lands on <my-chair>. Raise its β to 0.77 or more "
        "(<my-cat:beta=...>), or retrain one of the two."]
    assert raised == [] and alone == []
    assert lowered[0].startswith("<my-chair> opens the gate of <my-cat> to 66%")
    set_inputs([cat, chair], [input_with(inv, rows, [1.0, 1.0])] * 2)
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
    assert [n.split(" (")[0] for n in notes] == ["<my-chair> opens the gate of <my-cat> to 88%",
                                                 "<my-cat> opens the gate of <my-chair> to 88%"]
    assert all(n.endswith("Retrain one of the two: their inputs are too alike for a β that "
                          "keeps its own gate open.") for n in notes)
    # β 0.87 would close <my-cat>'s gate on <my-chair>, but also its own (s = 0.75 there)
    set_inputs([cat, chair], [input_with(inv, rows, [0.75, 0.7]),
                              input_with(inv, rows, [0.0, 1.0])])
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
    assert [n.split(" (")[0] for n in notes] == ["<my-chair> opens the gate of <my-cat> to 50%"]
    assert notes[0].endswith("Retrain one of the two: their inputs are too alike for a β that "
                             "keeps its own gate open.")


def test_gate_notes_name_a_concept_whose_own_gate_stays_shut_in_the_prompt(pipe, inv, concepts):
    cat, chair = (ConceptState.from_concept(c) for c in concepts)
    at = encodings_at_tokens(pipe, inv, [cat, chair], PAIR)
    rows = [at["my-cat"], at["my-chair"]]
    set_inputs([cat, chair], [input_with(inv, rows, [1.0, 0.0]),
                              input_with(inv, rows, [0.0, 0.456])])
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
        lowered = edit.gate_notes(PAIR, betas={"my-chair": 0.45})
        without = edit.gate_notes("a <my-cat> on a chair")
    assert notes == [
        "<my-chair> opens its own gate only to 16% in this prompt (similarity to its input 0.46, "
        "β 0.70): its encoding here is unlike the one it was trained with (on a causal text "
        "encoder the words before it change it), so little of my-chair's look reaches the "
        "image. Lower its β to 0.45 or less (<my-chair:beta=...>), which also opens it on "
        "tokens that resemble it, or word the prompt more like its training prompts."]
    assert lowered == [] and without == []
    reword = "reaches the image. Word the prompt more like its training prompts."
    set_inputs([chair], [input_with(inv, rows, [0.0, 0.2])])  # no β worth suggesting
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
    assert [n.split(" in this")[0] for n in notes] == ["<my-chair> opens its own gate only to 3%"]
    assert notes[0].endswith(reword)
    set_inputs([chair], [input_with(inv, rows, [0.45, 0.5])])  # β 0.5 would open it on <my-cat>
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(PAIR)
    assert [n.split(" in this")[0] for n in notes] == ["<my-chair> opens its own gate only to 21%"]
    assert notes[0].endswith(reword)


def test_gate_notes_take_a_repeated_concept_at_its_weakest(pipe, inv, concepts):
    cat, chair = (ConceptState.from_concept(c) for c in concepts)
    twice = "a <my-chair> on a <my-chair>"
    with apply(pipe, [cat, chair], inv) as edit, torch.no_grad():
        ids = edit.tokenizer(twice).input_ids
        encoding = edit.encode(twice)[0]
        where = [i for i, t in enumerate(ids) if t == edit.token_ids[1]]
    set_inputs([chair], [input_with(inv, [encoding[i] for i in where], [1.0, 0.3])])
    with apply(pipe, [cat, chair], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(twice)
    assert [n.split(" (")[0] for n in notes] == [
        "<my-chair> opens its own gate only to 6% in this prompt"]


def test_gate_notes_name_a_concept_cut_off_and_skip_a_gate_that_cannot_be_read(pipe, inv,
                                                                              concepts):
    cat, chair = (ConceptState.from_concept(c) for c in concepts)
    with torch.no_grad():
        cat.target_input.zero_()  # s = 0 / 0 everywhere
    with apply(pipe, [cat, chair], inv) as edit:
        limit = edit.tokenizer.model_max_length
        long = "a <my-cat> on " + "a " * limit + "<my-chair>"
        assert edit.gate_notes(long) == [
            f"<my-chair> lies beyond the {limit} tokens the text encoder reads and is cut off: "
            "shorten the prompt before it."]
        assert edit.gate_notes("a <my-cat>") == []


def test_a_textual_inversion_concept_has_no_gate_to_open(pipe, inv, concepts):
    cat = ConceptState.from_concept(concepts[0])
    words = ConceptState.initial("my-words", "cat", cat.superclass_token_id,
                                 cat.superclass_input, cat.word_embedding, pipe.unet,
                                 method="textual-inversion")
    prompt = "a <my-cat> on a <my-words>"
    at = encodings_at_tokens(pipe, inv, [cat, words], prompt)
    rows = [at["my-cat"], at["my-words"]]
    set_inputs([cat], [input_with(inv, rows, [1.0, 1.0])])
    with apply(pipe, [cat, words], inv, beta=0.7, tau=0.15) as edit:
        notes = edit.gate_notes(prompt)
    assert [n.split(" (")[0] for n in notes] == ["<my-words> opens the gate of <my-cat> to 88%"]
