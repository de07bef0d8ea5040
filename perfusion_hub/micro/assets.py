"""The shipped micro weights: where they are, how to load them, how to install new ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from perfusion_hub.bases.captions import DEFAULT_COUNT
from perfusion_hub.bases.statistics import (
    SHIPPED_STATISTICS,
    compute_text_statistics,
    save_statistics,
)
from perfusion_hub.errors import PhubError
from perfusion_hub.micro import models
from perfusion_hub.micro.checker import Checker
from perfusion_hub.micro.recipe import STAGES
from perfusion_hub.micro.training import as_pixels
from perfusion_hub.micro.world import caption_corpus

ASSETS_DIR = Path(__file__).parent / "assets"


class MicroAssetsMissingError(PhubError):
    """The bundled micro weights are not where the package expects them."""


def _require(path: Path, marker: str) -> Path:
    if not (path / marker).exists():
        raise MicroAssetsMissingError(
            f"micro base files missing at {path}; reinstall perfusion-hub or rebuild them with "
            "`phub micro train-base`"
        )
    return path


def micro_pipeline_path(assets: Path = ASSETS_DIR) -> Path:
    """The bundled StableDiffusionPipeline folder (load it with `from_pretrained`)."""
    return _require(assets / "pipeline", "model_index.json")


def base_metadata(pipeline_path: Path | None = None) -> dict:
    """The base's `phub_base.json`: name, resolution, training prompt templates."""
    path = pipeline_path or micro_pipeline_path()
    return json.loads((path / "phub_base.json").read_text())


def load_micro_clip(
    device: str | torch.device = "cpu", assets: Path = ASSETS_DIR
) -> tuple[CLIPModel, CLIPTokenizer]:
    """The micro CLIP (fp32, eval mode) and its tokenizer."""
    path = _require(assets / "clip", "config.json")
    model = CLIPModel.from_pretrained(path).float().to(device).eval()
    return model, CLIPTokenizer.from_pretrained(path)


def load_checker(device: str | torch.device = "cpu", assets: Path = ASSETS_DIR) -> Checker:
    """The micro checker (eval mode); call `.read(images)` for structured readings."""
    return Checker.load(_require(assets / "checker", "config.json")).to(device)


@torch.no_grad()
def image_embeddings(
    model: CLIPModel, images: np.ndarray | torch.Tensor | list[Image.Image]
) -> torch.Tensor:
    """Unit-norm micro-CLIP image embeddings of 64×64 images."""
    x = as_pixels(images, next(model.parameters()).device)
    return F.normalize(models.pooled(model.get_image_features(pixel_values=x)), dim=-1)


@torch.no_grad()
def text_embeddings(model: CLIPModel, tok: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    """Unit-norm micro-CLIP text embeddings."""
    ids = tok(
        texts,
        padding="max_length",
        max_length=tok.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    ids = ids.input_ids.to(next(model.parameters()).device)
    return F.normalize(models.pooled(model.get_text_features(input_ids=ids)), dim=-1)


def ship_statistics(pipeline: Path, captions: int = DEFAULT_COUNT, progress: bool = True) -> str:
    """Write the base's text statistics C, C⁻¹ into its pipeline folder (`SHIPPED_STATISTICS`),
    computed as `phub base add` would (float32 text encoder, the micro caption corpus), so that
    registering the base never recomputes them; returns their hash."""
    tokenizer = CLIPTokenizer.from_pretrained(pipeline / "tokenizer")
    encoder = CLIPTextModel.from_pretrained(pipeline / "text_encoder").float().eval()
    stats = compute_text_statistics(tokenizer, encoder, caption_corpus(captions),
                                    progress=progress)
    save_statistics(stats, pipeline / SHIPPED_STATISTICS)
    return stats.hash


def install_assets(work: Path, dest: Path | None = None, captions: int = DEFAULT_COUNT,
                   progress: bool = True) -> dict[str, int]:
    """Copy a finished `train_base` output into `dest` (default: the package's `ASSETS_DIR`)
    in fp16, with the pipeline's text statistics over `captions` captions; returns bytes per
    component."""
    work, dest = Path(work), Path(dest or ASSETS_DIR)
    for stage in STAGES:
        if not (work / f"{stage}.done").exists():
            raise MicroAssetsMissingError(
                f"stage '{stage}' has not finished in {work}; run train_base first"
            )
    ship_statistics(work / "pipeline", captions, progress)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pipeline", "checker"):
        shutil.rmtree(dest / name, ignore_errors=True)
        shutil.copytree(work / name, dest / name)
    shutil.rmtree(dest / "clip", ignore_errors=True)
    CLIPModel.from_pretrained(work / "clip").half().save_pretrained(dest / "clip")
    CLIPTokenizer.from_pretrained(work / "clip").save_pretrained(dest / "clip")
    report = {s: json.loads((work / f"{s}.done").read_text()) for s in STAGES}
    (dest / "training_report.json").write_text(json.dumps(report, indent=2))
    return {
        p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        for p in dest.iterdir()
        if p.is_dir()
    }
