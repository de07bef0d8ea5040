"""What the registry hands out: frozen, plain records detached from any database session."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from perfusion_hub.concepts import BaseFingerprint


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


@dataclass(frozen=True)
class BaseRecord:
    """A registered base model: its fingerprint and, once computed, its text statistics C."""

    id: int
    name: str
    source: str
    architecture: str
    fingerprint: BaseFingerprint
    covariance_hash: str | None
    covariance_path: Path | None
    created: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "source": self.source,
            "architecture": self.architecture,
            "text_width": self.fingerprint.text_width,
            "layers": len(self.fingerprint.layers),
            "weights_hash": self.fingerprint.weights_hash,
            "fingerprint": self.fingerprint.to_json(),
            "covariance_hash": self.covariance_hash,
            "covariance_path": str(self.covariance_path) if self.covariance_path else None,
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class ConceptSummary:
    """A registered concept as a listing shows it: identity, stored file, gate defaults."""

    id: int
    name: str
    token: str
    superclass: str
    lock: str
    base_name: str
    content_hash: str
    path: Path
    size: int
    beta: float
    tau: float
    created: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "token": self.token,
            "superclass": self.superclass,
            "lock": self.lock,
            "base": self.base_name,
            "content_hash": self.content_hash,
            "path": str(self.path),
            "size": self.size,
            "beta": self.beta,
            "tau": self.tau,
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class ConceptRecord(ConceptSummary):
    """A registered concept in full: the summary plus its training configuration, metrics,
    tags and last change."""

    training: dict[str, Any]
    metrics: dict[str, Any]
    tags: list[str]
    updated: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "training": self.training, "metrics": self.metrics,
                "tags": self.tags, "updated": _iso(self.updated)}


@dataclass(frozen=True)
class RenderRecord:
    """One logged render: the prompt, the concepts it used, and where the image went."""

    id: int
    prompt: str
    concepts: list[dict[str, Any]]
    seed: int | None
    parameters: dict[str, Any]
    output_path: Path | None
    created: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "prompt": self.prompt,
            "concepts": self.concepts,
            "seed": self.seed,
            "parameters": self.parameters,
            "output_path": str(self.output_path) if self.output_path else None,
            "created": _iso(self.created),
        }


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of re-hashing every stored concept file, by concept label (`base/name`);
    `reasons` says what is wrong with each missing or corrupt one."""

    ok: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        return not self.missing and not self.corrupt

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "missing": self.missing, "corrupt": self.corrupt,
                "reasons": self.reasons, "healthy": self.healthy}
