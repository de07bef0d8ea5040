"""The micro world: a procedural 64×64 universe and a small SD-shaped base trained on it.

Importing this package is cheap; the torch-backed names load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from perfusion_hub.micro.world import (
    CATEGORIES,
    COLOUR_NAMES,
    INSTANCES,
    MY_CAT,
    MY_CHAIR,
    MY_CUP,
    PATTERNS,
    Instance,
    ObjectSpec,
    SceneSpec,
    caption,
    complete,
    instance_images,
    instance_scene,
    parse_caption,
    random_scene,
    render,
    sample_scenes,
    vocabulary,
)

_LAZY = {
    "build_tokenizer": "perfusion_hub.micro.tokenizer",
    "as_pixels": "perfusion_hub.micro.training",
    "Checker": "perfusion_hub.micro.checker",
    "ObjectReading": "perfusion_hub.micro.checker",
    "SceneReading": "perfusion_hub.micro.checker",
    "matches_caption": "perfusion_hub.micro.checker",
    "matches_instance": "perfusion_hub.micro.checker",
    "object_matches": "perfusion_hub.micro.checker",
    "ASSETS_DIR": "perfusion_hub.micro.assets",
    "MicroAssetsMissingError": "perfusion_hub.micro.assets",
    "base_metadata": "perfusion_hub.micro.assets",
    "image_embeddings": "perfusion_hub.micro.assets",
    "install_assets": "perfusion_hub.micro.assets",
    "load_checker": "perfusion_hub.micro.assets",
    "load_micro_clip": "perfusion_hub.micro.assets",
    "micro_pipeline_path": "perfusion_hub.micro.assets",
    "text_embeddings": "perfusion_hub.micro.assets",
    "DEFAULT_STEPS": "perfusion_hub.micro.recipe",
    "STAGES": "perfusion_hub.micro.recipe",
    "TRAIN_TEMPLATES": "perfusion_hub.micro.recipe",
    "train_base": "perfusion_hub.micro.recipe",
}

__all__ = [
    "CATEGORIES",
    "COLOUR_NAMES",
    "INSTANCES",
    "MY_CAT",
    "MY_CHAIR",
    "MY_CUP",
    "PATTERNS",
    "Instance",
    "ObjectSpec",
    "SceneSpec",
    "caption",
    "complete",
    "instance_images",
    "instance_scene",
    "parse_caption",
    "random_scene",
    "render",
    "sample_scenes",
    "vocabulary",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
