"""Evaluation: fidelity and text alignment of a concept over prompts, seeds and β; the demo.

Submodules load on first use, so that the CLI can read `defaults` without numpy or PIL.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DemoReport": "demo", "run_demo": "demo",
    "EvalRow": "metrics", "Summary": "metrics",
    "EvalReport": "run", "evaluate_concept": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'perfusion_hub.evaluate' has no attribute {name!r}")
    return getattr(import_module(f"perfusion_hub.evaluate.{_EXPORTS[name]}"), name)
