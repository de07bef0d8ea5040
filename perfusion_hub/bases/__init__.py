"""Base models: resolve, load, fingerprint, options, and text statistics (C, C⁻¹)."""

from perfusion_hub.bases.captions import generate_captions, read_captions
from perfusion_hub.bases.fingerprint import architecture_id, fingerprint_pipeline, weights_hash
from perfusion_hub.bases.layers import cross_attention_layers
from perfusion_hub.bases.loaded import LoadedBase
from perfusion_hub.bases.source import base_options, load_pipeline, resolve_source
from perfusion_hub.bases.statistics import (
    TextStatistics,
    compute_text_statistics,
    load_inverse_covariance,
    save_statistics,
)

__all__ = [
    "LoadedBase",
    "TextStatistics",
    "architecture_id",
    "base_options",
    "compute_text_statistics",
    "cross_attention_layers",
    "fingerprint_pipeline",
    "generate_captions",
    "load_inverse_covariance",
    "load_pipeline",
    "read_captions",
    "resolve_source",
    "save_statistics",
    "weights_hash",
]
