"""Concept files: safetensors with ModelSpec metadata, validated on load, hashed by content.

Layout (all tensors 1-D, float16 by default, float32 on request):
    word_embedding, target_input, superclass_input   (d each)
    value_targets   o*_V of every layer concatenated in the declared layer order
                    (absent for textual inversion)
    key_targets     learned o*_K, same layout (only for the `no-key-lock` baseline)
Metadata: ModelSpec keys plus `perfusion_hub`, one JSON object with everything else.
Identity is the SHA-256 of the tensors (names, dtypes, shapes, bytes), never of the header,
so renaming or re-describing a concept keeps its identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_numpy

from perfusion_hub import __version__
from perfusion_hub.concepts.concept import LOCK_MODES, METHODS, Concept
from perfusion_hub.concepts.fingerprint import BaseFingerprint
from perfusion_hub.errors import ConceptFileError, InvalidNameError
from perfusion_hub.files import atomic_write_bytes

FORMAT_VERSION = 1
METADATA_KEY = "perfusion_hub"
VECTOR_KEYS = ("word_embedding", "target_input", "superclass_input")
VALUES_KEY = "value_targets"
KEYS_KEY = "key_targets"
DTYPES = {"float16": np.float16, "float32": np.float32}


def concept_tensors(concept: Concept, dtype: str = "float16") -> dict[str, np.ndarray]:
    """The tensors a file stores for `concept`, in the storage dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
    np_dtype = DTYPES[dtype]
    tensors = {key: np.asarray(getattr(concept, key)).reshape(-1) for key in VECTOR_KEYS}
    if concept.method != "textual-inversion":
        tensors[VALUES_KEY] = _concatenate_layers(concept, concept.value_targets, VALUES_KEY)
    if concept.key_targets is not None:
        tensors[KEYS_KEY] = _concatenate_layers(concept, concept.key_targets, KEYS_KEY)
    return {key: np.ascontiguousarray(value.astype(np_dtype)) for key, value in tensors.items()}


def _concatenate_layers(
    concept: Concept, per_layer: dict[str, np.ndarray], what: str
) -> np.ndarray:
    missing = [layer.name for layer in concept.base.layers if layer.name not in per_layer]
    if missing:
        raise ValueError(f"{what} lacks layers {missing[:3]}")
    return np.concatenate(
        [np.asarray(per_layer[layer.name]).reshape(-1) for layer in concept.base.layers]
    )


def tensors_hash(tensors: dict[str, np.ndarray]) -> str:
    """SHA-256 over (name, dtype, shape, bytes) of each tensor in name order."""
    digest = hashlib.sha256()
    for key in sorted(tensors):
        array = np.ascontiguousarray(tensors[key])
        digest.update(f"{key}|{array.dtype.str}|{list(array.shape)}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def concept_hash(concept: Concept, dtype: str = "float16") -> str:
    """Identity of `concept` as it would be stored in `dtype`."""
    return tensors_hash(concept_tensors(concept, dtype))


def concept_to_bytes(concept: Concept, dtype: str = "float16") -> tuple[bytes, str]:
    """Serialise `concept`; returns (file bytes, content hash)."""
    tensors = concept_tensors(concept, dtype)
    content_hash = tensors_hash(tensors)
    return save_numpy(tensors, metadata=_metadata(concept, content_hash)), content_hash


def save_concept(concept: Concept, path: str | Path, dtype: str = "float16") -> str:
    """Write `concept` atomically to `path`; returns its content hash."""
    data, content_hash = concept_to_bytes(concept, dtype)
    atomic_write_bytes(path, data)
    return content_hash


def _metadata(concept: Concept, content_hash: str) -> dict[str, str]:
    details = {
        "format_version": FORMAT_VERSION,
        "tool_version": __version__,
        "name": concept.name,
        "superclass": concept.superclass,
        "superclass_token_id": concept.superclass_token_id,
        "lock": concept.lock,
        "method": concept.method,
        "beta": concept.beta,
        "tau": concept.tau,
        "base": concept.base.to_json(),
        "covariance_hash": concept.covariance_hash,
        "training": concept.training,
        "created": concept.created,
    }
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{concept.base.architecture}/perfusion",
        "modelspec.implementation": "perfusion-hub",
        "modelspec.title": concept.name,
        "modelspec.date": concept.created,
        "modelspec.hash_sha256": "0x" + content_hash,
        "modelspec.trigger_phrase": concept.token,
        METADATA_KEY: json.dumps(details, separators=(",", ":"), sort_keys=True),
    }


def load_concept(path: str | Path) -> tuple[Concept, str]:
    """Read and validate a concept file; returns (concept, content hash).

    Never unpickles: safetensors holds plain arrays and a JSON header.
    """
    path = Path(path)
    if not path.is_file():
        raise ConceptFileError(f"{path}: no such file.")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise ConceptFileError(
            f"{path}: not a readable safetensors file ({error}). "
            "Concept files are written by `phub train` or `phub export`."
        ) from error
    return _concept_from(path, metadata, tensors), tensors_hash(tensors)


def _concept_from(path: Path, metadata: dict[str, str], tensors: dict[str, np.ndarray]) -> Concept:
    def fail(problem: str) -> ConceptFileError:
        return ConceptFileError(f"{path}: {problem}.")

    if METADATA_KEY not in metadata:
        raise fail(f"no '{METADATA_KEY}' metadata; this is not a perfusion-hub concept file")
    try:
        details: dict[str, Any] = json.loads(metadata[METADATA_KEY])
    except json.JSONDecodeError as error:
        raise fail(f"metadata is not valid JSON ({error})") from error
    version = details.get("format_version")
    if version != FORMAT_VERSION:
        raise fail(
            f"unknown format version {version!r} (this perfusion-hub reads version "
            f"{FORMAT_VERSION}); upgrade perfusion-hub or re-export the concept"
        )
    required = ("name", "superclass", "superclass_token_id", "lock", "beta", "tau", "base",
                "covariance_hash")
    absent = [key for key in required if key not in details]
    if absent:
        raise fail(f"metadata lacks {', '.join(absent)}")
    try:
        base = BaseFingerprint.from_json(details["base"])
    except (KeyError, TypeError, ValueError) as error:
        raise fail(f"invalid base fingerprint ({error})") from error
    if details["lock"] not in LOCK_MODES:
        raise fail(f"lock mode {details['lock']!r} is not one of {LOCK_MODES}")
    method = details.get("method", "perfusion")
    if method not in METHODS:
        raise fail(f"method {method!r} is not one of {METHODS}")

    expected = {key: base.text_width for key in VECTOR_KEYS}
    if method != "textual-inversion":
        expected[VALUES_KEY] = base.total_out_features
    if method == "no-key-lock":
        expected[KEYS_KEY] = base.total_out_features
    if set(tensors) != set(expected):
        raise fail(f"tensors {sorted(tensors)} do not match the expected {sorted(expected)}")
    for key, length in expected.items():
        array = tensors[key]
        if array.shape != (length,):
            raise fail(
                f"tensor '{key}' has shape {list(array.shape)}, but the declared base needs "
                f"[{length}]"
            )
        if array.dtype not in (np.float16, np.float32):
            raise fail(f"tensor '{key}' has dtype {array.dtype}; expected float16 or float32")
        if not np.isfinite(array).all():
            raise fail(f"tensor '{key}' holds NaN or infinite values")

    offsets = np.cumsum([0] + [layer.out_features for layer in base.layers])

    def per_layer(key: str) -> dict[str, np.ndarray]:
        return {
            layer.name: tensors[key][start:end]
            for layer, start, end in zip(base.layers, offsets[:-1], offsets[1:], strict=True)
        }

    try:
        return Concept(
            name=str(details["name"]),
            superclass=str(details["superclass"]),
            superclass_token_id=int(details["superclass_token_id"]),
            word_embedding=tensors["word_embedding"],
            target_input=tensors["target_input"],
            superclass_input=tensors["superclass_input"],
            value_targets=per_layer(VALUES_KEY) if VALUES_KEY in tensors else {},
            base=base,
            covariance_hash=str(details["covariance_hash"]),
            lock=details["lock"],
            beta=float(details["beta"]),
            tau=float(details["tau"]),
            training=dict(details.get("training") or {}),
            method=method,
            key_targets=per_layer(KEYS_KEY) if KEYS_KEY in tensors else None,
            created=str(details.get("created", "")),
        )
    except InvalidNameError as error:
        raise fail(str(error)) from error
