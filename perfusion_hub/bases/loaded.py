"""`LoadedBase`: a base pipeline in memory with its identity and text statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from perfusion_hub.concepts import BaseFingerprint


@dataclass
class LoadedBase:
    """What training and composition need from a base: the pipeline, its fingerprint, C⁻¹
    (float32, on the pipeline's device) and the hash naming it, plus base options."""

    name: str
    pipe: Any
    fingerprint: BaseFingerprint
    inverse_covariance: torch.Tensor
    covariance_hash: str
    resolution: int
    train_templates: list[str]
    options: dict[str, Any] = field(default_factory=dict)
