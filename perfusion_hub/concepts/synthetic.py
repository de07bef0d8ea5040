"""Random but well-formed concepts, for tests and benchmarks of everything around the math."""

from __future__ import annotations

import numpy as np

from perfusion_hub.concepts.concept import Concept
from perfusion_hub.concepts.fingerprint import BaseFingerprint, LayerSpec


def synthetic_base(
    text_width: int = 32,
    widths: tuple[int, ...] = (32, 64, 64, 32),
    weights_hash: str = "0" * 64,
    architecture: str = "synthetic",
) -> BaseFingerprint:
    """A fingerprint with one cross-attention layer per entry of `widths`."""
    layers = tuple(
        LayerSpec(f"blocks.{index}.attn2", width) for index, width in enumerate(widths)
    )
    return BaseFingerprint(architecture, text_width, layers, weights_hash, source=architecture)


def synthetic_concept(name: str, base: BaseFingerprint | None = None, seed: int = 0,
                      superclass: str = "cat") -> Concept:
    """A concept with standard-normal tensors shaped for `base`."""
    base = base or synthetic_base()
    rng = np.random.default_rng(seed)
    width = base.text_width

    def vector(n: int) -> np.ndarray:
        return rng.standard_normal(n).astype(np.float32)

    return Concept(
        name=name,
        superclass=superclass,
        superclass_token_id=1000 + seed % 1000,
        word_embedding=vector(width),
        target_input=vector(width),
        superclass_input=vector(width),
        value_targets={layer.name: vector(layer.out_features) for layer in base.layers},
        base=base,
        covariance_hash="c" * 64,
        training={"steps": 0, "seed": seed},
    )
