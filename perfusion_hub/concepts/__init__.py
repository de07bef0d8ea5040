"""The concept file format: `Concept` ⇄ safetensors, validation and content hash."""

from perfusion_hub.concepts.concept import DEFAULT_BETA, DEFAULT_TAU, LOCK_MODES, Concept, LockMode
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
    "BaseFingerprint",
    "Concept",
    "LayerSpec",
    "LockMode",
    "concept_hash",
    "concept_to_bytes",
    "load_concept",
    "save_concept",
    "tensors_hash",
]
