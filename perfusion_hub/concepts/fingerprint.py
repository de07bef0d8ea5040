"""Identity of a base model as far as a concept cares: text width, edited layers, weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerSpec:
    """One cross-attention layer the edit lives in: its module name and output width."""

    name: str
    out_features: int


@dataclass(frozen=True)
class BaseFingerprint:
    """What must agree between a concept and the base it is applied to (method.md §6)."""

    architecture: str
    text_width: int
    layers: tuple[LayerSpec, ...]
    weights_hash: str
    source: str = field(default="", compare=False)

    @property
    def total_out_features(self) -> int:
        return sum(layer.out_features for layer in self.layers)

    @property
    def label(self) -> str:
        """Short human-readable identity: source (or architecture) and hash prefix."""
        return f"{self.source or self.architecture} [{self.weights_hash[:12]}]"

    def differences(self, other: BaseFingerprint) -> list[str]:
        """Human-readable list of what differs between two fingerprints (empty if none)."""
        found: list[str] = []
        if self.architecture != other.architecture:
            found.append(f"architecture {self.architecture} vs {other.architecture}")
        if self.text_width != other.text_width:
            found.append(f"text width {self.text_width} vs {other.text_width}")
        if self.layers != other.layers:
            mine = {layer.name: layer.out_features for layer in self.layers}
            theirs = {layer.name: layer.out_features for layer in other.layers}
            missing = sorted(set(mine) - set(theirs))
            extra = sorted(set(theirs) - set(mine))
            resized = sorted(n for n in set(mine) & set(theirs) if mine[n] != theirs[n])
            detail = [f"{len(missing)} layers missing"] if missing else []
            detail += [f"{len(extra)} extra layers"] if extra else []
            detail += [f"{len(resized)} layers of other width"] if resized else []
            found.append("cross-attention layers differ (" + (", ".join(detail) or "order") + ")")
        if self.weights_hash != other.weights_hash:
            found.append(f"weights hash {self.weights_hash[:12]} vs {other.weights_hash[:12]}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "text_width": self.text_width,
            "layers": [[layer.name, layer.out_features] for layer in self.layers],
            "weights_hash": self.weights_hash,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseFingerprint:
        return cls(
            architecture=str(data["architecture"]),
            text_width=int(data["text_width"]),
            layers=tuple(LayerSpec(str(name), int(width)) for name, width in data["layers"]),
            weights_hash=str(data["weights_hash"]),
            source=str(data.get("source", "")),
        )
