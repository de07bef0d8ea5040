"""Base models: layers, fingerprints, sources, options, captions and text statistics."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_captions, tiny_pipeline

from perfusion_hub.bases import (
    base_options,
    compute_text_statistics,
    cross_attention_layers,
    fingerprint_pipeline,
    generate_captions,
    load_inverse_covariance,
    load_pipeline,
    read_captions,
    resolve_source,
    save_statistics,
)
from perfusion_hub.bases.statistics import read_statistics
from perfusion_hub.errors import BaseModelError


@pytest.fixture(scope="module")
def stats(pipe):
    return compute_text_statistics(pipe.tokenizer, pipe.text_encoder, tiny_captions(200),
                                   batch_size=32, progress=False)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("base") / "tiny-base"
    pipe.save_pretrained(folder)
    return folder


def test_cross_attention_layers_in_module_order(pipe):
    layers = cross_attention_layers(pipe.unet)
    names = [n for n, _ in pipe.unet.named_modules() if n.endswith(".attn2")]
    assert [layer.name for layer in layers] == names and len(layers) == 7
    assert {layer.out_features for layer in layers} == {16, 32}


def test_fingerprint_identity_and_cache(pipe):
    fingerprint = fingerprint_pipeline(pipe, "tiny")
    assert fingerprint.architecture == "sd-like-32" and fingerprint.text_width == 32
    assert fingerprint.layers == cross_attention_layers(pipe.unet)
    assert fingerprint_pipeline(pipe).weights_hash == fingerprint.weights_hash
    half = tiny_pipeline().to(dtype=torch.float16)
    assert fingerprint_pipeline(half).weights_hash == fingerprint.weights_hash
    other = tiny_pipeline(seed=1)
    assert fingerprint_pipeline(other).weights_hash != fingerprint.weights_hash
    assert fingerprint_pipeline(tiny_pipeline(width=48)).architecture == "sd-like-48"


def test_resolve_source(saved, tmp_path):
    assert resolve_source(str(saved)) == saved.resolve()
    assert resolve_source("stable-diffusion-v1-5/stable-diffusion-v1-5") == (
        "stable-diffusion-v1-5/stable-diffusion-v1-5")
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"x")
    assert resolve_source(checkpoint) == checkpoint.resolve()
    with pytest.raises(BaseModelError, match="model_index.json"):
        resolve_source(tmp_path)
    with pytest.raises(BaseModelError, match="neither a local folder"):
        resolve_source("./missing-folder")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(BaseModelError, match="not a .safetensors"):
        resolve_source(tmp_path / "notes.txt")


def test_load_local_folder_and_options(saved, pipe):
    loaded = load_pipeline(saved)
    assert fingerprint_pipeline(loaded).weights_hash == fingerprint_pipeline(pipe).weights_hash
    options = base_options(loaded)
    assert options["resolution"] == 16 and options["name"] is None
    assert options["train_templates"] and all("{}" in t for t in options["train_templates"])
    (saved / "phub_base.json").write_text(json.dumps(
        {"name": "micro", "resolution": 64, "train_templates": ["a {}"]}))
    try:
        assert base_options(saved)["train_templates"] == ["a {}"]
        assert base_options(saved)["resolution"] == 64
        assert fingerprint_pipeline(load_pipeline(saved), saved).architecture == "phub-micro"
    finally:
        (saved / "phub_base.json").unlink()


def test_caption_corpus_is_large_varied_and_deterministic():
    captions = generate_captions()
    assert len(captions) >= 20_000 and len(set(captions)) == len(captions)
    assert captions == generate_captions()
    assert generate_captions(500, seed=1) != generate_captions(500, seed=2)
    assert len({c.split()[1] for c in captions}) > 50
    assert len({len(c.split()) for c in captions}) > 8


def test_read_captions(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a cat\n\n  a dog on a chair \n")
    assert read_captions(path) == ["a cat", "a dog on a chair"]
    path.write_text("\n\n")
    with pytest.raises(BaseModelError, match="no captions"):
        read_captions(path)


def test_statistics_are_a_valid_second_moment(stats):
    c, inv = stats.covariance.double(), stats.inverse_covariance.double()
    assert torch.allclose(c, c.T) and torch.linalg.eigvalsh(c).min() > 0
    assert torch.allclose(inv @ c, torch.eye(32, dtype=torch.float64), atol=1e-3)
    assert stats.positions == "content" and stats.ridge == 0.0
    assert stats.count > 200 and stats.captions == 200
    assert 1 < stats.condition_number < 1e7


def test_statistics_match_a_direct_computation(pipe, stats):
    captions = tiny_captions(200)
    tokens = pipe.tokenizer(captions, padding="max_length", return_tensors="pt",
                            max_length=pipe.tokenizer.model_max_length)
    with torch.no_grad():
        full = pipe.text_encoder(tokens.input_ids)[0].double()
    rows = full[tokens.attention_mask.bool()]  # longest-padding must equal max-length padding
    direct = rows.T @ rows / rows.shape[0]
    assert rows.shape[0] == stats.count
    assert torch.allclose(stats.covariance.double(), direct, rtol=1e-4, atol=1e-5)
    every = compute_text_statistics(pipe.tokenizer, pipe.text_encoder, captions, progress=False,
                                    positions="all")
    assert every.count == 200 * pipe.tokenizer.model_max_length and every.positions == "all"


def test_inverse_is_invariant_to_scale_up_to_the_scale(stats):
    from perfusion_hub.bases.statistics import _with_inverse

    scaled = _with_inverse(stats.covariance.double() * 9.0, stats.count, stats.captions,
                           "content")
    assert torch.allclose(scaled.inverse_covariance * 9.0, stats.inverse_covariance, rtol=1e-3)
    assert scaled.condition_number == pytest.approx(stats.condition_number, rel=1e-3)


def test_singular_covariance_gets_a_relative_ridge():
    from perfusion_hub.bases.statistics import _with_inverse

    rows = torch.randn(100, 8, dtype=torch.float64)
    rows[:, 0] = 0
    c = rows.T @ rows / 100
    a, b = _with_inverse(c, 100, 10, "content"), _with_inverse(c * 50, 100, 10, "content")
    assert a.ridge > 0 and a.ridge == pytest.approx(b.ridge)
    assert torch.isfinite(a.inverse_covariance).all()


def test_save_and_load_statistics(stats, tmp_path):
    path = tmp_path / "stats.safetensors"
    digest = save_statistics(stats, path)
    assert digest == stats.hash
    inverse = load_inverse_covariance(path, expected_hash=digest)
    assert torch.equal(inverse, stats.inverse_covariance)
    _, metadata = read_statistics(path)
    assert metadata["positions"] == "content" and metadata["count"] == stats.count
    with pytest.raises(BaseModelError, match="do not match"):
        load_inverse_covariance(path, expected_hash="0" * 64)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(BaseModelError, match="Cannot read"):
        load_inverse_covariance(tmp_path / "bad.safetensors")
