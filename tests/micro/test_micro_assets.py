"""The shipped micro base: loads offline, renders, and stays small."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from perfusion_hub.micro import world as w
from perfusion_hub.micro.assets import (
    ASSETS_DIR,
    MicroAssetsMissingError,
    base_metadata,
    image_embeddings,
    load_micro_clip,
    micro_pipeline_path,
    text_embeddings,
)
from perfusion_hub.micro.recipe import GUIDANCE, MAX_EMBEDDING_NORM, TRAIN_TEMPLATES


def test_shipped_pipeline_loads_offline_and_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = StableDiffusionPipeline.from_pretrained(micro_pipeline_path(), torch_dtype=torch.float32)
    assert pipe.unet.dtype == torch.float32
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    gen = torch.Generator().manual_seed(0)
    out = pipe("a red ball", num_inference_steps=2, generator=gen, output_type="np").images
    assert out.shape == (1, 64, 64, 3)
    attn2 = [n for n, _ in pipe.unet.named_modules() if n.endswith("attn2")]
    assert len(attn2) >= 5
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    for word in w.vocabulary():
        assert len(pipe.tokenizer.tokenize(word)) == 1


def test_base_metadata_matches_the_recipe() -> None:
    meta = base_metadata()
    assert meta["name"] == "micro" and meta["resolution"] == 64
    assert tuple(meta["train_templates"]) == TRAIN_TEMPLATES
    assert meta["max_embedding_norm"] == MAX_EMBEDDING_NORM
    assert meta["guidance"] == GUIDANCE


@pytest.mark.parametrize("template", TRAIN_TEMPLATES)
def test_training_templates_name_nothing_the_images_may_lack(template: str) -> None:
    """A training prompt holds for every image of an instance: one object, and no background,
    position or size that an image could contradict."""
    assert template.count("{}") == 1
    spec = w.parse_caption(template.format("red cat"))
    assert len(spec.objects) == 1 and spec.background is None
    assert spec.objects[0].position is None and spec.objects[0].size is None


def test_assets_fit_the_size_budget() -> None:
    total = sum(f.stat().st_size for f in ASSETS_DIR.rglob("*") if f.is_file())
    assert total <= 25 * 2**20


def test_micro_clip_scores_matching_captions_higher() -> None:
    model, tok = load_micro_clip()
    specs = w.sample_scenes(32, seed=11)
    imgs, _ = w.render(specs, seed=12)
    sims = (
        image_embeddings(model, imgs) @ text_embeddings(model, tok, [w.caption(s) for s in specs]).T
    )
    assert sims.shape == (32, 32)
    assert float(torch.diagonal(sims).mean()) > float(sims.mean())
    assert np.mean((sims.argmax(1) == torch.arange(32)).numpy()) > 0.3


def test_missing_assets_raise_a_phub_error(tmp_path) -> None:
    with pytest.raises(MicroAssetsMissingError, match="train-base"):
        micro_pipeline_path(tmp_path)
