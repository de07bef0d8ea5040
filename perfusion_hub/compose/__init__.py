"""Composition: prompts with several concepts, reproducible PNGs, sweeps and batch renders."""

from perfusion_hub.compose.batch import BatchDefaults, BatchSummary, render_jobs
from perfusion_hub.compose.compose import ComposeOptions, RenderedImages, compose
from perfusion_hub.compose.metadata import (
    ConceptUse,
    RenderParameters,
    parse_parameters_text,
    read_png_parameters,
)
from perfusion_hub.compose.prompt import GateOverrides, ParsedPrompt, parse_prompt
from perfusion_hub.compose.session import ImageRequest, Renderer

__all__ = [
    "BatchDefaults",
    "BatchSummary",
    "ComposeOptions",
    "ConceptUse",
    "GateOverrides",
    "ImageRequest",
    "ParsedPrompt",
    "RenderParameters",
    "RenderedImages",
    "Renderer",
    "compose",
    "parse_parameters_text",
    "parse_prompt",
    "read_png_parameters",
    "render_jobs",
]
