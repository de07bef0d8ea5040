"""`ConceptState`: the torch form of a concept, its constructors and round trip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny import tiny_concept, token_id, word_encoding

from perfusion_hub.bases import cross_attention_layers
from perfusion_hub.errors import IncompatibleBaseError
from perfusion_hub.perfusion import ConceptState


def test_round_trip_through_concept(pipe):
    concept = tiny_concept(pipe, "my-cat", seed=2)
    state = ConceptState.from_concept(concept)
    assert state.token == "<my-cat>" and state.superclass == "cat"
    assert (state.beta, state.tau, state.lock) == (concept.beta, concept.tau, concept.lock)
    again = state.to_concept(concept.base, concept.covariance_hash, {"steps": 3})
    for key in ("word_embedding", "target_input", "superclass_input"):
        assert np.array_equal(getattr(again, key), getattr(concept, key))
    for layer in concept.base.layers:
        assert np.array_equal(again.value_targets[layer.name], concept.value_targets[layer.name])
    assert again.training == {"steps": 3}


def test_parameters_buffers_and_safe_keys(pipe):
    state = ConceptState.from_concept(tiny_concept(pipe, "my-cat"))
    trainable = {name for name, p in state.named_parameters() if p.requires_grad}
    layers = cross_attention_layers(pipe.unet)
    assert "word_embedding" in trainable and len(trainable) == 1 + len(layers)
    assert {name for name, _ in state.named_buffers()} == {"target_input", "superclass_input"}
    assert all("." not in key for key in state.value_targets)
    restored = ConceptState.from_concept(tiny_concept(pipe, "my-cat", seed=5))
    restored.load_state_dict(state.state_dict())
    assert torch.equal(restored.value_target(layers[0].name), state.value_target(layers[0].name))


def test_initial_state_starts_from_the_superclass(pipe):
    superclass_input = word_encoding(pipe, "a photo of a cat", "cat")
    embedding = pipe.text_encoder.get_input_embeddings().weight[token_id(pipe, "cat")].detach()
    state = ConceptState.initial("my-cat", "cat", token_id(pipe, "cat"), superclass_input,
                                 embedding, pipe.unet)
    assert torch.equal(state.target_input, superclass_input)
    assert torch.equal(state.superclass_input, superclass_input)
    assert torch.equal(state.word_embedding.detach(), embedding)
    for layer in cross_attention_layers(pipe.unet):
        module = pipe.unet.get_submodule(layer.name)
        assert torch.allclose(state.value_target(layer.name), module.to_v(superclass_input),
                              atol=1e-6)
        assert torch.allclose(state.key_target(layer.name, module.to_k.weight),
                              module.to_k(superclass_input), atol=1e-6)


def test_layers_must_match_the_base(pipe):
    concept = tiny_concept(pipe, "my-cat")
    state = ConceptState.from_concept(concept)
    with pytest.raises(IncompatibleBaseError, match="no value target"):
        state.value_target("down_blocks.9.attn2")
    fewer = dataclasses.replace(concept.base, layers=concept.base.layers[:3])
    with pytest.raises(IncompatibleBaseError, match="cross-attention layers"):
        state.to_concept(fewer, "c" * 64, {})


def test_invalid_lock_is_refused():
    with pytest.raises(ValueError, match="lock"):
        ConceptState("a", "cat", 1, torch.zeros(4), torch.zeros(4), torch.zeros(4), {},
                     lock="sideways")
