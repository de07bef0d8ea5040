"""Concept files: bad input is refused with the file and the problem named, nothing is
registered; an SD-1.x concept fits in 32 KB at fp16."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from perfusion_hub.concepts import BaseFingerprint, LayerSpec, load_concept, save_concept
from perfusion_hub.concepts.file import METADATA_KEY, VALUES_KEY
from perfusion_hub.concepts.synthetic import synthetic_concept
from perfusion_hub.errors import ConceptFileError


def rewrite(source: Path, target: Path,
            tensors: Callable[[dict[str, np.ndarray]], None] | None = None,
            details: Callable[[dict], None] | None = None) -> Path:
    """Copy a concept file, letting `tensors` / `details` (the namespaced JSON) be edited."""
    with safe_open(str(source), framework="numpy") as handle:
        metadata = dict(handle.metadata())
        names = handle.keys()
        arrays = {key: handle.get_tensor(key) for key in names}
    if tensors:
        tensors(arrays)
    if details:
        parsed = json.loads(metadata[METADATA_KEY])
        details(parsed)
        metadata[METADATA_KEY] = json.dumps(parsed)
    save_file(arrays, str(target), metadata=metadata)
    return target


def refused(registry, path: Path, *patterns: str) -> None:
    """Importing `path` fails naming the file and each pattern; nothing is registered."""
    with pytest.raises(ConceptFileError) as caught:
        registry.import_file(path)
    message = str(caught.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    assert registry.list() == [] and registry.list_bases() == []
    assert not any(p.is_file() for p in registry.store.root.rglob("*"))


def test_a_file_that_is_not_safetensors(registry, tmp_path):
    path = tmp_path / "photo.safetensors"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    refused(registry, path, "not a readable safetensors file")
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    refused(registry, text_file, "not a readable safetensors file")


def test_a_truncated_file(registry, concept_file, tmp_path):
    data = concept_file("my-cat").read_bytes()
    for cut in (4, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut-{cut}.safetensors"
        path.write_bytes(data[:cut])
        refused(registry, path, "not a readable safetensors file")


def test_an_empty_and_a_missing_file(registry, tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    refused(registry, empty)
    with pytest.raises(ConceptFileError, match="no such file"):
        registry.import_file(tmp_path / "absent.safetensors")


def test_a_plain_safetensors_file_without_our_metadata(registry, tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"weight": np.zeros(4, np.float32)}, str(path))
    refused(registry, path, "not a perfusion-hub concept file")


def test_an_unknown_format_version(registry, concept_file, tmp_path):
    path = rewrite(concept_file("my-cat"), tmp_path / "future.safetensors",
                   details=lambda d: d.update(format_version=99))
    refused(registry, path, "unknown format version 99", "upgrade perfusion-hub")


def test_missing_metadata_keys(registry, concept_file, tmp_path):
    path = rewrite(concept_file("my-cat"), tmp_path / "partial.safetensors",
                   details=lambda d: d.pop("superclass"))
    refused(registry, path, "lacks superclass")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_infinite_tensors(registry, concept_file, tmp_path, bad):
    def poison(arrays):
        arrays[VALUES_KEY] = arrays[VALUES_KEY].copy()
        arrays[VALUES_KEY][7] = bad

    path = rewrite(concept_file("my-cat"), tmp_path / "poisoned.safetensors", tensors=poison)
    refused(registry, path, VALUES_KEY, "NaN or infinite")


def test_shapes_that_disagree_with_the_declared_layers(registry, concept_file, tmp_path):
    def shorten(arrays):
        arrays[VALUES_KEY] = arrays[VALUES_KEY][:-1].copy()

    short = rewrite(concept_file("my-cat"), tmp_path / "short.safetensors", tensors=shorten)
    refused(registry, short, VALUES_KEY, "declared base")

    def widen_a_layer(details):
        details["base"]["layers"][0][1] += 8

    widened = rewrite(concept_file("my-cat"), tmp_path / "widened.safetensors",
                      details=widen_a_layer)
    refused(registry, widened, VALUES_KEY, "declared base")

    def wrong_text_width(arrays):
        arrays["word_embedding"] = np.zeros(5, np.float16)

    narrow = rewrite(concept_file("my-cat"), tmp_path / "narrow.safetensors",
                     tensors=wrong_text_width)
    refused(registry, narrow, "word_embedding")


def test_an_extra_or_missing_tensor(registry, concept_file, tmp_path):
    extra = rewrite(concept_file("my-cat"), tmp_path / "extra.safetensors",
                    tensors=lambda a: a.update(inverse_covariance=np.zeros(4, np.float16)))
    refused(registry, extra, "do not match")
    missing = rewrite(concept_file("my-cat"), tmp_path / "missing.safetensors",
                      tensors=lambda a: a.pop("target_input"))
    refused(registry, missing, "do not match")


def test_an_invalid_name_inside_the_file(registry, concept_file, tmp_path):
    path = rewrite(concept_file("my-cat"), tmp_path / "bad-name.safetensors",
                   details=lambda d: d.update(name="../../etc/passwd"))
    refused(registry, path, "Invalid concept name", "lowercase letters")


def test_identity_ignores_the_header(concept_file, tmp_path):
    source = concept_file("my-cat")
    described = rewrite(source, tmp_path / "described.safetensors",
                        details=lambda d: d.update(training={"note": "re-described"}))
    assert load_concept(source)[1] == load_concept(described)[1]
    assert source.read_bytes() != described.read_bytes()


def sd15_attn2_layers() -> tuple[LayerSpec, ...]:
    """Every `attn2` of the SD-1.5 UNet (built from its config, no weights) and its width."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel

    with init_empty_weights():
        unet = UNet2DConditionModel(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                              "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                            "CrossAttnUpBlock2D"),
            cross_attention_dim=768,
            attention_head_dim=8,
            layers_per_block=2,
        )
    return tuple(LayerSpec(name, module.to_v.out_features)
                 for name, module in unet.named_modules() if name.endswith("attn2"))


def test_an_sd1_concept_fits_in_32_kb_at_fp16(tmp_path):
    layers = sd15_attn2_layers()
    assert len(layers) == 16
    assert sum(layer.out_features for layer in layers) == 12_480  # method.md §6
    base = BaseFingerprint("stable-diffusion-v1", 768, layers, "0" * 64,
                           source="runwayml/stable-diffusion-v1-5")
    concept = synthetic_concept("my-cat", base=base)
    fp16 = tmp_path / "sd15-fp16.safetensors"
    fp32 = tmp_path / "sd15-fp32.safetensors"
    save_concept(concept, fp16)
    save_concept(concept, fp32, dtype="float32")
    assert fp16.stat().st_size <= 32_768, fp16.stat().st_size
    assert fp32.stat().st_size > 2 * 14_784 * 2  # fp32 on request really is fp32
    loaded, _ = load_concept(fp16)
    assert [layer.name for layer in loaded.base.layers] == [layer.name for layer in layers]


@pytest.mark.parametrize("method", ["textual-inversion", "no-key-lock"])
def test_baseline_methods_round_trip(tmp_path, method):
    concept = synthetic_concept("baseline")
    layers = concept.base.layers
    if method == "no-key-lock":
        keys = {layer.name: np.full(layer.out_features, 0.5, np.float32) for layer in layers}
        concept = replace(concept, method=method, key_targets=keys)
    else:
        concept = replace(concept, method=method, value_targets={})
    content_hash = save_concept(concept, tmp_path / "c.safetensors")
    loaded, loaded_hash = load_concept(tmp_path / "c.safetensors")
    assert loaded_hash == content_hash and loaded.method == method
    if method == "no-key-lock":
        for layer in layers:
            np.testing.assert_array_equal(loaded.key_targets[layer.name], 0.5)
    else:
        assert loaded.value_targets == {} and loaded.key_targets is None


def test_key_targets_only_with_the_no_key_lock_method():
    concept = synthetic_concept("baseline")
    with pytest.raises(ValueError, match="no-key-lock"):
        replace(concept, key_targets=dict(concept.value_targets))


def test_a_method_the_file_declares_without_its_tensors(concept_file, tmp_path):
    source = concept_file("cat")
    target = rewrite(source, tmp_path / "keyless.safetensors",
                     details=lambda d: d.update(method="no-key-lock"))
    with pytest.raises(ConceptFileError, match="key_targets"):
        load_concept(target)
