"""Identity of a loaded base pipeline: architecture, text width, `attn2` layers, weights hash."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from perfusion_hub.bases.layers import cross_attention_layers
from perfusion_hub.concepts import BaseFingerprint
from perfusion_hub.errors import PhubError

FINGERPRINT_ATTRIBUTE = "_phub_fingerprint"
EDIT_ATTRIBUTE = "_phub_edit"
HASH_ATTRIBUTE = "_phub_weights_hash"
OPTIONS_FILE = "phub_base.json"
ARCHITECTURES = {768: "stable-diffusion-v1", 1024: "stable-diffusion-v2"}


def text_width(pipe: Any) -> int:
    """Width d of the text encoding (= every `attn2` key/value input width)."""
    return int(pipe.text_encoder.get_input_embeddings().weight.shape[1])


def pipeline_folder(pipe: Any, source: str | Path | None = None) -> Path | None:
    """The local folder the pipeline was loaded from, if any."""
    for candidate in (source, getattr(pipe, "name_or_path", None)):
        if candidate and Path(str(candidate)).is_dir():
            return Path(str(candidate))
    return None


def architecture_id(pipe: Any, source: str | Path | None = None) -> str:
    """'phub-micro' for the bundled micro base, 'stable-diffusion-v1'/'-v2' by text width
    768/1024, else 'sd-like-<width>'."""
    folder = pipeline_folder(pipe, source)
    if folder is not None and (folder / OPTIONS_FILE).is_file():
        options = json.loads((folder / OPTIONS_FILE).read_text())
        if options.get("name") == "micro":
            return "phub-micro"
    width = text_width(pipe)
    return ARCHITECTURES.get(width, f"sd-like-{width}")


def weights_hash(pipe: Any) -> str:
    """SHA-256 over the text encoder's parameters and every `attn2` `to_k`/`to_v` weight.

    Tensors are hashed as float16 (name, shape, bytes) so that a base loaded in float32 or
    float16 hashes the same. Cached on the pipeline object.
    """
    cached = getattr(pipe, HASH_ATTRIBUTE, None)
    if cached:
        return cached
    if getattr(pipe, EDIT_ATTRIBUTE, None) is not None:
        raise PhubError("Fingerprint a base before installing concepts into it.")
    digest = hashlib.sha256()

    def add(name: str, tensor: torch.Tensor) -> None:
        data = tensor.detach().to("cpu", torch.float16).contiguous()
        digest.update(f"{name}|{list(data.shape)}|".encode())
        digest.update(data.view(torch.int16).numpy().tobytes())

    for name, parameter in sorted(pipe.text_encoder.named_parameters()):
        add(f"text_encoder.{name}", parameter)
    for layer in cross_attention_layers(pipe.unet):
        module = pipe.unet.get_submodule(layer.name)
        add(f"unet.{layer.name}.to_k", module.to_k.weight)
        add(f"unet.{layer.name}.to_v", module.to_v.weight)
    value = digest.hexdigest()
    setattr(pipe, HASH_ATTRIBUTE, value)
    return value


def fingerprint_pipeline(pipe: Any, source: str | Path | None = None) -> BaseFingerprint:
    """The `BaseFingerprint` of a loaded pipeline; also attached to it, so that `apply` checks
    concepts against the full fingerprint (weights hash included)."""
    label = str(source) if source is not None else str(getattr(pipe, "name_or_path", "") or "")
    fingerprint = BaseFingerprint(
        architecture=architecture_id(pipe, source), text_width=text_width(pipe),
        layers=cross_attention_layers(pipe.unet), weights_hash=weights_hash(pipe), source=label,
    )
    setattr(pipe, FINGERPRINT_ATTRIBUTE, fingerprint)
    return fingerprint
