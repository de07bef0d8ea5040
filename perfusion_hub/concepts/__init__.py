"""The concept file format: `Concept` ⇄ safetensors, validation and content hash."""

from perfusion_hub.concepts.concept import (
    DEFAULT_BETA,
    DEFAULT_TAU,
    LOCK_MODES,
    METHODS,
    Concept,
    LockMode,
    Method,
)
from perfusion_hub.concepts.file import (
    concept_hash,
    concept_to_bytes,
    load_concept,
    save_concept,
    tensors_hash,
)
from perfusion_hub.concepts.fingerprint import BaseFingerprint, LayerSpec

__all__ = [
    "DEFAULT_BETA",
    "DEFAULT_TAU",
    "LOCK_MODES",
    "METHODS",
    "BaseFingerprint",
    "Concept",
    "LayerSpec",
    "LockMode",
    "Method",
    "concept_hash",
    "concept_to_bytes",
    "load_concept",
    "save_concept",
    "tensors_hash",
]
