"""The Perfusion method (method.md §3–4) for any diffusers UNet: math, concept state,
attention processors and `apply`."""

from perfusion_hub.perfusion.install import PerfusionEdit, apply
from perfusion_hub.perfusion.processor import PerfusionAttnProcessor
from perfusion_hub.perfusion.state import ConceptState

__all__ = ["ConceptState", "PerfusionAttnProcessor", "PerfusionEdit", "apply"]
