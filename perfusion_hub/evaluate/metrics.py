"""Evaluation metrics: fidelity, text alignment, and their aggregation over a β sweep.

Fidelity of a render = mean cosine similarity of its image embedding to the embeddings of the
concept's training images (the image-image score of the Perfusion and DreamBooth papers).
Text alignment = cosine similarity of a render's image embedding to the embedding of its
prompt with each concept token replaced by its superclass word (real bases), or the fraction
of the prompt's checkable words the micro checker finds obeyed (micro base). Both are means over
renders; the sweep over β traces the fidelity ↔ alignment trade-off of method.md §3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of embeddings, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """All pairwise cosine similarities: (n, d) × (m, d) → (n, m)."""
    return _unit_rows(a) @ _unit_rows(b).T


def fidelity_scores(renders: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Per render: mean cosine similarity to every reference (training) image embedding."""
    if len(references) == 0:
        raise ValueError("fidelity needs at least one reference image embedding")
    return cosine_matrix(renders, references).mean(axis=1)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally long lists of embeddings (image i ↔ text i)."""
    ua, ub = _unit_rows(a), _unit_rows(b)
    if ua.shape != ub.shape:
        raise ValueError(f"paired embeddings differ in shape: {ua.shape} vs {ub.shape}")
    return np.einsum("nd,nd->n", ua, ub)


def word_accuracy(checks: dict[str, bool]) -> float:
    """Fraction of a prompt's checkable words that a render obeys (1.0 when nothing is checked)."""
    return sum(checks.values()) / len(checks) if checks else 1.0


@dataclass(frozen=True)
class EvalRow:
    """One render of the evaluation: a row of the CSV."""

    kind: str
    prompt: str
    seed: int
    beta: float
    fidelity: float
    alignment: float | None
    obeyed: float | None = None
    instance_match: float | None = None
    missed: str = ""
    image: str = ""


CSV_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(EvalRow))


def row_to_csv(row: EvalRow) -> dict[str, str]:
    """A row as CSV cells: floats to 4 decimals, missing values empty."""
    out: dict[str, str] = {}
    for key, value in asdict(row).items():
        if value is None:
            out[key] = ""
        elif isinstance(value, float):
            out[key] = f"{value:.4f}"
        else:
            out[key] = str(value)
    return out


def _mean(values: Iterable[float | None]) -> float | None:
    kept = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(kept) / len(kept) if kept else None


@dataclass(frozen=True)
class Summary:
    """Means over a group of rows (one β, or one β and one prompt kind)."""

    beta: float
    kind: str
    renders: int
    fidelity: float | None
    alignment: float | None
    obeyed: float | None
    instance_match: float | None

    def to_json(self) -> dict[str, float | int | str | None]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(rows: Sequence[EvalRow], by_kind: bool = False) -> list[Summary]:
    """Mean fidelity, alignment, obeyed rate and instance-match rate per β (and per kind),
    sorted by β then kind; `kind` is "all" when not grouped by kind."""
    groups: dict[tuple[float, str], list[EvalRow]] = {}
    for row in rows:
        groups.setdefault((row.beta, row.kind if by_kind else "all"), []).append(row)
    return [
        Summary(
            beta=beta,
            kind=kind,
            renders=len(group),
            fidelity=_mean(r.fidelity for r in group),
            alignment=_mean(r.alignment for r in group),
            obeyed=_mean(r.obeyed for r in group),
            instance_match=_mean(r.instance_match for r in group),
        )
        for (beta, kind), group in sorted(groups.items())
    ]
