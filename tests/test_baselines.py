"""The comparison baselines (textual inversion; rank-1 without key-locking) through the same
engine, training loop, concept files and `phub train` as Perfusion, on tiny random pipelines."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import (
    BASE_CAPTIONS,
    tiny_concept,
    tiny_pipeline,
    token_id,
    word_encoding,
)
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.bases import LoadedBase, compute_text_statistics, cross_attention_layers
from perfusion_hub.concepts import BaseFingerprint, load_concept, save_concept
from perfusion_hub.errors import TrainingError
from perfusion_hub.perfusion import ConceptState, apply
from perfusion_hub.training.images import read_image_folder
from perfusion_hub.training.loop import train_loop
from perfusion_hub.training.options import TrainOptions
from perfusion_hub.training.progress import SilentReporter


def baseline(pipe, name, method, seed=0, superclass="cat"):
    """`tiny_concept` as `method`: textual inversion drops every o*; no-key-lock gets
    o*_K = W_K ī_super plus noise (so that learned keys differ from locked ones)."""
    concept = tiny_concept(pipe, name, seed=seed, superclass=superclass)
    if method == "textual-inversion":
        return replace(concept, method=method, value_targets={})
    if method == "no-key-lock":
        rng = np.random.default_rng(seed)
        keys = {}
        for layer in concept.base.layers:
            weight = pipe.unet.get_submodule(layer.name).to_k.weight.detach().numpy()
            locked = weight @ concept.superclass_input
            keys[layer.name] = (locked + 0.5 * np.abs(locked).mean()
                                * rng.standard_normal(locked.shape)).astype(np.float32)
        return replace(concept, method=method, key_targets=keys)
    return concept


def attn2_outputs(pipe, text):
    """Every `attn2` output of one UNet call on `text` (no grad)."""
    outputs, hooks = {}, []
    for name, module in pipe.unet.named_modules():
        if name.endswith("attn2"):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone())))
    latents = torch.randn(text.shape[0], 4, 8, 8, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            pipe.unet(latents, 500, encoder_hidden_states=text)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


# -- state and files ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["perfusion", "no-key-lock", "textual-inversion"])
def test_initial_state_and_file_round_trip(pipe, tmp_path, method):
    superclass_input = word_encoding(pipe, "a photo of a cat", "cat")
    embedding = pipe.text_encoder.get_input_embeddings().weight[token_id(pipe, "cat")].detach()
    state = ConceptState.initial("my-cat", "cat", token_id(pipe, "cat"), superclass_input,
                                 embedding, pipe.unet, method=method)
    layers = cross_attention_layers(pipe.unet)
    assert state.method == method and len(state.layer_names) == len(layers)
    trainable = {name.split(".")[0] for name, p in state.named_parameters() if p.requires_grad}
    expected = {"perfusion": {"word_embedding", "value_targets"},
                "no-key-lock": {"word_embedding", "value_targets", "key_targets"},
                "textual-inversion": {"word_embedding"}}[method]
    assert trainable == expected
    assert len(state.output_targets()) == len(layers) * (len(expected) - 1)
    for layer in layers:
        module = pipe.unet.get_submodule(layer.name)
        if method == "textual-inversion":
            with pytest.raises(ValueError, match="textual inversion"):
                state.value_target(layer.name)
            continue
        key = state.key_target(layer.name, module.to_k.weight)
        assert torch.allclose(key, module.to_k(superclass_input), atol=1e-6)
        assert key.requires_grad == (method == "no-key-lock")

    fingerprint = BaseFingerprint("tiny", 32, layers, "0" * 64, "tiny")
    concept = state.to_concept(fingerprint, "c" * 64, {"steps": 0})
    assert concept.method == method
    assert (concept.key_targets is not None) == (method == "no-key-lock")
    assert (concept.value_targets == {}) == (method == "textual-inversion")
    save_concept(concept, tmp_path / "c.safetensors", dtype="float32")
    loaded, _ = load_concept(tmp_path / "c.safetensors")
    again = ConceptState.from_concept(loaded)
    assert again.method == method and again.layer_names == state.layer_names
    assert {k: v for k, v in again.state_dict().items()}.keys() == state.state_dict().keys()
    for key, value in state.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_state_refuses_targets_that_do_not_fit_the_method():
    vector, layers = torch.zeros(4), {"l.attn2": torch.zeros(3)}
    with pytest.raises(ValueError, match="key_targets"):
        ConceptState("a", "cat", 1, vector, vector, vector, layers, method="no-key-lock")
    with pytest.raises(ValueError, match="value_targets"):
        ConceptState("a", "cat", 1, vector, vector, vector, layers, method="textual-inversion")
    with pytest.raises(ValueError, match="method"):
        ConceptState("a", "cat", 1, vector, vector, vector, layers, method="dreambooth")


# -- the engine --------------------------------------------------------------------------------


def test_textual_inversion_installs_its_word_and_edits_nothing(pipe, inv):
    concept = baseline(pipe, "ti-cat", "textual-inversion")
    prompts = ["a photo of a <ti-cat> on the beach", ""]
    with apply(pipe, [concept], inv, lock="global") as edit:
        text = edit.encode(prompts)
        edited = attn2_outputs(pipe, text)
        row = pipe.text_encoder.get_input_embeddings()(torch.tensor([edit.token_ids[0]]))
        assert torch.equal(row[0], torch.as_tensor(concept.word_embedding))
        assert edit.key_prompt(prompts[0]) == prompts[0]  # nothing to lock
        assert edit.gates() == {}
        stock_text = edit.encode(["a photo of a cat on the beach", ""])
    stock = attn2_outputs(pipe, text)  # the stock processors, on the same encoding
    assert edited.keys() == stock.keys() and len(stock) == 7
    assert max((edited[n] - stock[n]).abs().max().item() for n in stock) <= 1e-6
    assert not torch.allclose(text, stock_text)  # v* (not the superclass) reached the encoder


def test_no_key_lock_open_gate_maps_target_input_to_learned_keys(pipe, inv):
    concept = baseline(pipe, "nk-cat", "no-key-lock")
    with apply(pipe, [concept], inv) as edit:
        state = edit.states[0]
        text = state.target_input.reshape(1, 1, -1).expand(1, 3, -1).contiguous()
        for name, module in pipe.unet.named_modules():
            if not name.endswith("attn2"):
                continue
            key, value = edit.processors[name].key_value(
                module, text, None, 1.0, [-math.inf], None, True)
            learned = torch.as_tensor(concept.key_targets[name])
            locked = module.to_k.weight @ state.superclass_input
            assert torch.allclose(key[0], learned.expand(3, -1), atol=1e-4)
            assert not torch.allclose(key[0], locked.expand(3, -1), atol=1e-2)
            assert torch.allclose(value[0], state.value_target(name).expand(3, -1), atol=1e-4)


def test_changing_learned_keys_refreshes_cached_keys(pipe, inv):
    concept = baseline(pipe, "nk-cat", "no-key-lock")
    with apply(pipe, [concept], inv) as edit:
        text = edit.encode(["a photo of a <nk-cat>", ""])
        before = attn2_outputs(pipe, text)
        assert all(torch.equal(before[n], v) for n, v in attn2_outputs(pipe, text).items())
        with torch.no_grad():
            for key in edit.states[0].key_targets.values():
                key.mul_(3.0)
        after = attn2_outputs(pipe, text)
        for processor in edit.processors.values():
            processor.clear_cache()
        fresh = attn2_outputs(pipe, text)
    assert all(torch.equal(after[n], fresh[n]) for n in fresh)
    assert max((after[n] - before[n]).abs().max().item() for n in fresh) > 1e-4


def test_mixed_methods_in_one_apply(pipe, inv):
    perfusion = baseline(pipe, "pf-chair", "perfusion", seed=1, superclass="chair")
    textual = baseline(pipe, "ti-cat", "textual-inversion", seed=2)
    unlocked = baseline(pipe, "nk-dog", "no-key-lock", seed=3, superclass="dog")
    prompt = ["a <ti-cat> on a <pf-chair> with a <nk-dog>", ""]
    with apply(pipe, [textual, perfusion, unlocked], inv, record_gates=True) as edit:
        text = edit.encode(prompt)
        mixed = {name: p.key_value(pipe.unet.get_submodule(name), text, None, 1.0,
                                   {"ti-cat": 0.1, "nk-dog": 0.6}, [0.2, 0.15, 0.15], True)
                 for name, p in edit.processors.items()}
        outputs = attn2_outputs(pipe, text)
        assert set(edit.gates()) == {"pf-chair", "nk-dog"}
    assert all(torch.isfinite(o).all() for o in outputs.values())
    # the textual inversion adds nothing and stays out of the projection basis
    with apply(pipe, [perfusion, unlocked], inv) as edit:
        alone = {name: p.key_value(pipe.unet.get_submodule(name), text, None, 1.0,
                                   {"nk-dog": 0.6}, [0.15, 0.15], True)
                 for name, p in edit.processors.items()}
    for name, (key, value) in alone.items():
        assert torch.allclose(mixed[name][0], key, atol=1e-5)
        assert torch.allclose(mixed[name][1], value, atol=1e-5)


# -- training ----------------------------------------------------------------------------------


def tiny_base() -> LoadedBase:
    pipe = tiny_pipeline()
    stats = compute_text_statistics(pipe.tokenizer, pipe.text_encoder, BASE_CAPTIONS,
                                    progress=False)
    fingerprint = BaseFingerprint("tiny", 32, cross_attention_layers(pipe.unet), "0" * 64, "tiny")
    return LoadedBase("tiny", pipe, fingerprint, stats.inverse_covariance, stats.hash, 16,
                      ["a photo of a {}", "{} on the beach"], {"num_inference_steps": 2})


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{index}.png")
    return folder


def train(images, tmp_path, method):
    base = tiny_base()
    options = TrainOptions(steps=2, batch_size=1, grad_accum=2, method=method)
    result = train_loop(base, read_image_folder(images), name="my-cat", superclass="cat",
                        options=options, folder=tmp_path / method, resume=False,
                        reporter=SilentReporter())
    return base, result.state


def test_textual_inversion_trains_only_the_word_embedding(images, tmp_path):
    base, state = train(images, tmp_path, "textual-inversion")
    start = base.pipe.text_encoder.get_input_embeddings().weight[token_id(base.pipe, "cat")]
    assert {name for name, _ in state.named_parameters()} == {"word_embedding"}
    assert not torch.allclose(state.word_embedding.detach(), start.detach())
    assert state.method == "textual-inversion" and state.output_targets() == []


def test_no_key_lock_trains_keys_like_values(images, tmp_path):
    base, state = train(images, tmp_path, "no-key-lock")
    assert state.method == "no-key-lock"
    for layer in cross_attention_layers(base.pipe.unet):
        attn = base.pipe.unet.get_submodule(layer.name)
        locked = attn.to_k.weight.detach() @ state.superclass_input
        assert not torch.allclose(state.key_target(layer.name, attn.to_k.weight).detach(), locked)
        start_value = attn.to_v.weight.detach() @ state.superclass_input
        assert not torch.allclose(state.value_target(layer.name).detach(), start_value)


def test_training_options_validate_the_method():
    with pytest.raises(TrainingError, match="--method must be one of"):
        TrainOptions(method="dreambooth")
    with pytest.raises(TrainingError, match="--lock global needs a rank-1 method"):
        TrainOptions(method="textual-inversion", lock="global")
    assert TrainOptions(method="no-key-lock", lock="global").to_json()["method"] == "no-key-lock"


# -- Hub.train / phub train --method → file → compose -------------------------------------------


def test_each_method_trains_saves_loads_and_composes(tiny_hub, images, tmp_path):
    hub = tiny_hub
    quick = {"base": "tiny", "steps": 1, "batch_size": 1, "grad_accum": 1}
    result = CliRunner().invoke(app, [
        "--home", str(hub.settings.home), "train", str(images), "--name", "ti-cat",
        "--superclass", "cat", "--base", "tiny", "--steps", "1", "--batch-size", "1",
        "--grad-accum", "1", "--method", "textual-inversion"])
    assert result.exit_code == 0, result.output
    hub.train(images, name="nk-dog", superclass="dog", method="no-key-lock", **quick)
    hub.train(images, name="pf-chair", superclass="chair", **quick)
    for name, method in (("ti-cat", "textual-inversion"), ("nk-dog", "no-key-lock"),
                         ("pf-chair", "perfusion")):
        record = hub.get(name)
        assert record.training["options"]["method"] == method
        assert record.training["method"]["name"] == method
        concept, _ = load_concept(hub.export(name, tmp_path / f"{name}.safetensors"))
        assert concept.method == method
        assert (concept.key_targets is not None) == (method == "no-key-lock")
    images_out = hub.compose("a <ti-cat> on a <pf-chair> with a <nk-dog>", base="tiny",
                             steps=2, out=tmp_path / "render.png")
    pixels = np.asarray(Image.open(images_out.paths[0]))
    assert pixels.shape == (16, 16, 3)
    refused = CliRunner().invoke(app, [
        "--home", str(hub.settings.home), "train", str(images), "--name", "x",
        "--superclass", "cat", "--base", "tiny", "--method", "nope"])
    assert refused.exit_code == 1 and "--method must be one of" in refused.output
