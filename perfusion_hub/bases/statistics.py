"""Base text statistics: C = mean e eᵀ over text encodings of a caption corpus, and C⁻¹
(method.md §2). One file per base text encoder, named by the hash of its tensors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.progress import Progress
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_numpy

from perfusion_hub.concepts import tensors_hash
from perfusion_hub.errors import BaseModelError
from perfusion_hub.files import atomic_write_bytes

Positions = Literal["content", "all"]
POSITIONS: tuple[str, ...] = ("content", "all")
RIDGE_CONDITION = 1e7
METADATA_KEY = "perfusion_hub_statistics"
# A base folder may ship its statistics under this name; registering it then skips computing C.
SHIPPED_STATISTICS = "phub_statistics.safetensors"


@dataclass
class TextStatistics:
    """C and C⁻¹ (float32 for storage; computed in float64), and how they were obtained.

    `ridge` is the multiple of the mean eigenvalue added to C's diagonal when C was
    numerically singular (0 when it was not); it keeps C⁻¹ invariant to C → kC.
    """

    covariance: torch.Tensor
    inverse_covariance: torch.Tensor
    count: int
    captions: int
    condition_number: float
    positions: str
    ridge: float = 0.0

    def tensors(self) -> dict[str, np.ndarray]:
        return {
            "covariance": self.covariance.float().cpu().numpy(),
            "inverse_covariance": self.inverse_covariance.float().cpu().numpy(),
        }

    @property
    def hash(self) -> str:
        """Identity of these statistics: SHA-256 of the stored tensors."""
        return tensors_hash(self.tensors())

    def metadata(self) -> dict[str, Any]:
        return {"count": self.count, "captions": self.captions,
                "condition_number": self.condition_number, "positions": self.positions,
                "ridge": self.ridge, "text_width": int(self.covariance.shape[0])}


@torch.no_grad()
def compute_text_statistics(tokenizer: Any, text_encoder: Any, captions: Sequence[str],
                            batch_size: int = 64, positions: Positions = "content",
                            progress: bool = True) -> TextStatistics:
    """C = (1/M) Σ e eᵀ over the text encodings e of `captions` at the chosen token positions.

    positions="content" (default): the start token, every word token and the first end-of-text
    token, i.e. every position a prompt's words actually occupy. The rest of SD's 77-slot
    context is padding (end-of-text repeated) that carries no word; taking it would make most
    of the samples near-copies of the end-of-text state, so that C⁻¹, which weighs directions
    by how rarely words vary along them, would be shaped by padding instead of by words.
    Because CLIP's text encoder is causal, content encodings do not depend on the padding
    after them, so batches are padded to their longest caption only (several times faster).
    positions="all": every slot of the max-length context, as the UNet sees it.
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, not {positions!r}")
    captions = list(captions)
    if not captions:
        raise BaseModelError("No captions to compute text statistics from.")
    device = next(text_encoder.parameters()).device
    width = text_encoder.get_input_embeddings().weight.shape[1]
    total = torch.zeros(width, width, dtype=torch.float64, device=device)
    count = 0
    padding = "longest" if positions == "content" else "max_length"
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("Text statistics", total=len(captions))
        for start in range(0, len(captions), batch_size):
            batch = captions[start:start + batch_size]
            tokens = tokenizer(batch, padding=padding, truncation=True, return_tensors="pt",
                               max_length=tokenizer.model_max_length)
            encoding = text_encoder(tokens.input_ids.to(device))[0]
            if positions == "content":
                rows = encoding[tokens.attention_mask.to(device).bool()]
            else:
                rows = encoding.reshape(-1, width)
            rows = rows.double()
            total += rows.T @ rows
            count += rows.shape[0]
            bar.advance(task, len(batch))
    covariance = (total / count).cpu()
    covariance = (covariance + covariance.T) / 2
    return _with_inverse(covariance, count, len(captions), positions)


def _with_inverse(covariance: torch.Tensor, count: int, captions: int,
                  positions: str) -> TextStatistics:
    """Invert C in float64; add a relative ridge only when C is numerically singular."""
    eigenvalues = torch.linalg.eigvalsh(covariance)
    largest, smallest = float(eigenvalues[-1]), float(eigenvalues[0])
    if largest <= 0:
        raise BaseModelError("The text encodings are all zero; this text encoder is broken.")
    ridge = 0.0
    if smallest <= largest / RIDGE_CONDITION:
        ridge = 1.0 / RIDGE_CONDITION * largest / float(eigenvalues.mean())
        covariance = covariance + ridge * float(eigenvalues.mean()) * torch.eye(len(covariance),
                                                                                dtype=torch.float64)
        eigenvalues = torch.linalg.eigvalsh(covariance)
    inverse = torch.linalg.inv(covariance)
    inverse = (inverse + inverse.T) / 2
    return TextStatistics(
        covariance=covariance.float(), inverse_covariance=inverse.float(), count=count,
        captions=captions, condition_number=float(eigenvalues[-1] / eigenvalues[0]),
        positions=positions, ridge=ridge,
    )


def save_statistics(stats: TextStatistics, path: str | Path) -> str:
    """Write C and C⁻¹ (safetensors, metadata in the header) atomically; returns their hash."""
    data = save_numpy(stats.tensors(), metadata={METADATA_KEY: json.dumps(stats.metadata())})
    atomic_write_bytes(path, data)
    return stats.hash


def read_statistics(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Stored tensors and metadata of a statistics file (never unpickles)."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "{}"))
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as error:
        raise BaseModelError(f"Cannot read base statistics {path}: {error}. Recompute them with "
                             "`phub base add` for this base.") from error
    if "inverse_covariance" not in tensors:
        raise BaseModelError(f"{path} holds no inverse_covariance; it is not a statistics file.")
    return tensors, metadata


def load_inverse_covariance(path: str | Path, expected_hash: str | None = None) -> torch.Tensor:
    """C⁻¹ (float32) from a statistics file, checked against `expected_hash` when given."""
    tensors, _ = read_statistics(path)
    if expected_hash is not None and tensors_hash(tensors) != expected_hash:
        raise BaseModelError(f"Base statistics {path} do not match their recorded hash "
                             f"{expected_hash[:12]}; delete the file to recompute them.")
    return torch.from_numpy(tensors["inverse_covariance"].copy())
