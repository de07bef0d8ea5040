"""Resolving, loading and describing base models (hub id, local folder, single file, micro)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from perfusion_hub.bases.fingerprint import OPTIONS_FILE, pipeline_folder
from perfusion_hub.errors import BaseModelError

MICRO = "micro"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DEFAULT_TRAIN_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a close-up photo of a {}",
    "a photo of the {}",
    "a good photo of a {}",
    "a photo of a small {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a rendition of a {}",
)


def resolve_source(source: str | Path) -> str | Path:
    """A local diffusers folder or single-file checkpoint (as a Path), or a hub id (as a str).
    `"micro"` is the bundled micro base."""
    text = str(source)
    if text == MICRO:
        from perfusion_hub.micro.assets import micro_pipeline_path

        return micro_pipeline_path()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise BaseModelError(f"{path} is a folder without model_index.json: give a diffusers "
                                 "pipeline folder (saved with `save_pretrained`).")
        return path.resolve()
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise BaseModelError(f"{path} is not a .safetensors or .ckpt checkpoint.")
        return path.resolve()
    if _HUB_ID.fullmatch(text) and not text.startswith((".", "/", "~")):
        return text
    raise BaseModelError(
        f"Base {text!r} is neither a local folder or checkpoint nor a hub id like "
        "'stable-diffusion-v1-5/stable-diffusion-v1-5'; check the path, or use 'micro'."
    )


def load_pipeline(source: str | Path, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Any:
    """A `StableDiffusionPipeline` for `source`; local sources load without network."""
    import diffusers
    from diffusers import StableDiffusionPipeline
    from packaging.version import Version

    resolved = resolve_source(source)
    dtype_key = "dtype" if Version(diffusers.__version__) >= Version("0.36") else "torch_dtype"
    options = {dtype_key: dtype, "safety_checker": None, "requires_safety_checker": False}
    try:
        if isinstance(resolved, Path) and resolved.is_file():
            pipe = StableDiffusionPipeline.from_single_file(str(resolved), local_files_only=True,
                                                            **options)
        elif isinstance(resolved, Path):
            pipe = StableDiffusionPipeline.from_pretrained(resolved, local_files_only=True,
                                                           **options)
        else:
            pipe = StableDiffusionPipeline.from_pretrained(resolved, **options)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        hint = (" A single-file checkpoint needs its diffusers config in the local cache; "
                "convert it to a diffusers folder once (`save_pretrained`) and use the folder."
                if isinstance(resolved, Path) and resolved.is_file() else "")
        raise BaseModelError(f"Cannot load base {source!r}: {error}.{hint}") from error
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def base_options(pipe_or_folder: Any) -> dict[str, Any]:
    """Options of a base: its optional `phub_base.json` over defaults.

    Keys: name (or None), resolution (pixels), train_templates, scheduler (class name or None),
    and optionally the render defaults steps and guidance and the training default
    max_embedding_norm (`TrainOptions.for_base`).
    """
    if isinstance(pipe_or_folder, (str, Path)):
        folder: Path | None = Path(pipe_or_folder)
        pipe = None
    else:
        pipe = pipe_or_folder
        folder = pipeline_folder(pipe)
    stored: dict[str, Any] = {}
    if folder is not None and (folder / OPTIONS_FILE).is_file():
        try:
            stored = json.loads((folder / OPTIONS_FILE).read_text())
        except json.JSONDecodeError as error:
            raise BaseModelError(f"{folder / OPTIONS_FILE} is not valid JSON ({error}).") from error
    options: dict[str, Any] = {
        "name": None,
        "resolution": _resolution(pipe, folder),
        "train_templates": list(DEFAULT_TRAIN_TEMPLATES),
        "scheduler": None,
    }
    options.update(stored)
    options["train_templates"] = list(options["train_templates"])
    return options


def _resolution(pipe: Any, folder: Path | None) -> int:
    """UNet sample size × VAE downsampling, from the loaded pipe or the folder's configs."""
    if pipe is not None:
        return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)
    if folder is None:
        return 512
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text())
        vae = json.loads((folder / "vae" / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return 512
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
