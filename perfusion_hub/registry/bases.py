"""Bases in the registry: register a base (fingerprint + text statistics), open one for use.

The statistics file (C and C⁻¹) is stored once per base as `<bases_dir>/<hash>.safetensors`
and referenced by hash from the base's registry row and from every concept trained on it.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from perfusion_hub.bases import (
    LoadedBase,
    base_options,
    compute_text_statistics,
    fingerprint_pipeline,
    generate_captions,
    load_inverse_covariance,
    load_pipeline,
    resolve_source,
    save_statistics,
)
from perfusion_hub.bases.captions import DEFAULT_COUNT
from perfusion_hub.bases.fingerprint import FINGERPRINT_ATTRIBUTE, HASH_ATTRIBUTE
from perfusion_hub.bases.source import MICRO
from perfusion_hub.bases.statistics import SHIPPED_STATISTICS, read_statistics
from perfusion_hub.concepts import tensors_hash
from perfusion_hub.errors import BaseModelError, NotFoundError
from perfusion_hub.files import atomic_write_bytes
from perfusion_hub.registry.records import BaseRecord
from perfusion_hub.registry.registry import Registry, slugify
from perfusion_hub.settings import Settings

DEFAULT_BASE_ENV = "PHUB_DEFAULT_BASE"


def register_base(registry: Registry, settings: Settings, source: str | Path,
                  name: str | None = None, captions: list[str] | None = None,
                  device: str | torch.device = "cpu", *, progress: bool = True) -> BaseRecord:
    """Resolve and load `source`, fingerprint it, register it and compute its text statistics
    (over `captions`, default: the built-in corpus) unless they are already stored."""
    resolve_source(source)
    pipe = load_pipeline(source, device, torch.float32)
    return _register(registry, settings, str(source), pipe, name, captions, progress)


def open_base(registry: Registry, settings: Settings, base: str | None = None, *,
              device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
              progress: bool = True) -> LoadedBase:
    """Load a base by registered name, or by source (registered on first use).

    `base` None → $PHUB_DEFAULT_BASE, else the bundled micro base. Statistics are computed and
    stored if the base has none yet.
    """
    base = base or os.environ.get(DEFAULT_BASE_ENV) or MICRO
    try:
        record: BaseRecord | None = registry.get_base(base)
    except NotFoundError as missing:
        record = None
        try:
            resolve_source(base)
        except BaseModelError:
            known = ", ".join(r.name for r in registry.list_bases()) or "none yet"
            raise NotFoundError(f"No base named {base!r} (registered: {known}), and it is not "
                                "a folder, checkpoint or hub id. Add it with `phub base add`."
                                ) from missing
    source = record.source if record is not None else base
    pipe = load_pipeline(source, device, dtype)
    if record is None:
        record = _register(registry, settings, source, pipe, None, None, progress)
    elif dtype in (torch.float32, torch.float16):
        here = fingerprint_pipeline(pipe, source)
        if here.weights_hash != record.fingerprint.weights_hash:
            raise BaseModelError(
                f"The weights at {source} changed since base {record.name!r} was registered "
                f"({'; '.join(record.fingerprint.differences(here))}); register them under a new "
                "name with `phub base add`."
            )
    if not _statistics_present(record):
        record = _store_statistics(registry, settings, record.name, pipe, None, progress)
    setattr(pipe, FINGERPRINT_ATTRIBUTE, record.fingerprint)
    setattr(pipe, HASH_ATTRIBUTE, record.fingerprint.weights_hash)
    assert record.covariance_hash is not None and record.covariance_path is not None
    inverse = load_inverse_covariance(record.covariance_path, record.covariance_hash)
    options = base_options(pipe)
    return LoadedBase(
        name=record.name, pipe=pipe, fingerprint=record.fingerprint,
        inverse_covariance=inverse.to(pipe.device), covariance_hash=record.covariance_hash,
        resolution=int(options["resolution"]), train_templates=list(options["train_templates"]),
        options=options,
    )


def default_captions(architecture: str, count: int = DEFAULT_COUNT) -> list[str]:
    """The corpus for a base's statistics: the micro world's own captions for the micro base
    (its tokenizer knows only that world's words), the built-in generator otherwise."""
    if architecture == "phub-micro":
        from perfusion_hub.micro.world import caption_corpus

        return caption_corpus(count)
    return generate_captions(count)


def _register(registry: Registry, settings: Settings, source: str, pipe: Any,
              name: str | None, captions: list[str] | None, progress: bool) -> BaseRecord:
    fingerprint = fingerprint_pipeline(pipe, source)
    existing = registry.find_base(fingerprint)
    stored_source = source if source == MICRO or not Path(source).exists() else str(
        Path(source).expanduser().resolve())
    chosen = name or (existing.name if existing is not None else _default_name(source))
    record = registry.add_base(chosen, stored_source, fingerprint)
    if captions is None and _statistics_present(record):
        return record
    return _store_statistics(registry, settings, record.name, pipe, captions, progress)


def _store_statistics(registry: Registry, settings: Settings, name: str, pipe: Any,
                      captions: list[str] | None, progress: bool) -> BaseRecord:
    """Compute C, C⁻¹ with a float32 text encoder (or take the ones the base folder ships, when
    no captions are given) and record them on the base."""
    shipped = Path(getattr(pipe, "name_or_path", "") or "") / SHIPPED_STATISTICS
    if captions is None and shipped.is_file():
        tensors, _ = read_statistics(shipped)
        content_hash = tensors_hash(tensors)
        path = settings.bases_dir / f"{content_hash}.safetensors"
        if not path.is_file():
            atomic_write_bytes(path, shipped.read_bytes())
        return registry.set_base_statistics(name, content_hash, path)
    fingerprint = getattr(pipe, FINGERPRINT_ATTRIBUTE, None) or fingerprint_pipeline(pipe)
    encoder = pipe.text_encoder
    if encoder.dtype != torch.float32:
        encoder = copy.deepcopy(encoder).float()
    corpus = captions if captions is not None else default_captions(fingerprint.architecture)
    stats = compute_text_statistics(pipe.tokenizer, encoder, corpus, progress=progress)
    path = settings.bases_dir / f"{stats.hash}.safetensors"
    if not path.is_file():
        save_statistics(stats, path)
    return registry.set_base_statistics(name, stats.hash, path)


def _statistics_present(record: BaseRecord) -> bool:
    return bool(record.covariance_hash and record.covariance_path
                and Path(record.covariance_path).is_file())


def _default_name(source: str) -> str:
    if source == MICRO:
        return MICRO
    last = Path(source.rstrip("/")).stem if Path(source).exists() else source.rsplit("/", 1)[-1]
    return slugify(last) or "base"
