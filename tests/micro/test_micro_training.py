"""Scenes drawn ahead by worker processes are exactly the scenes drawn inline."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from perfusion_hub.micro import recipe
from perfusion_hub.micro.recipe import _object_scenes, train_base
from perfusion_hub.micro.training import Prefetch, data_workers


def test_prefetched_batches_match_inline_ones_in_any_order() -> None:
    draw = partial(_object_scenes, seed=3, stream=2, batch=4)
    with Prefetch(draw, workers=2, depth=3) as batches:
        for i in (0, 1, 2, 7, 1):
            imgs, fg = batches[i]
            want_imgs, want_fg = draw(i)
            np.testing.assert_array_equal(imgs, want_imgs)
            np.testing.assert_array_equal(fg, want_fg)
        assert set(batches.pending) == {2, 3}
    assert batches.pool is None


def test_batches_differ_by_index_and_seed() -> None:
    first, _ = _object_scenes(0, seed=0, stream=2, batch=4)
    assert not np.array_equal(first, _object_scenes(1, seed=0, stream=2, batch=4)[0])
    assert not np.array_equal(first, _object_scenes(0, seed=1, stream=2, batch=4)[0])


def test_data_workers_only_beside_a_gpu() -> None:
    assert data_workers(torch.device("cpu")) == 0
    assert data_workers(torch.device("cuda")) >= 1


def test_a_stage_fed_by_workers_trains_like_an_inline_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inline = train_base(tmp_path / "inline", stages=("vae",), steps={"vae": 3},
                        device="cpu", tiny=True, show=False)
    monkeypatch.setattr(recipe, "data_workers", lambda device: 1)
    fed = train_base(tmp_path / "fed", stages=("vae",), steps={"vae": 3},
                     device="cpu", tiny=True, show=False)
    assert fed == inline
    weights = [load_file(tmp_path / run / "vae" / "diffusion_pytorch_model.safetensors")
               for run in ("inline", "fed")]
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=0, atol=0)
