"""A smoke run of every training stage on tiny configurations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.bases.statistics import SHIPPED_STATISTICS, read_statistics
from perfusion_hub.errors import PhubError
from perfusion_hub.micro import assets
from perfusion_hub.micro.assets import (
    install_assets,
    load_checker,
    load_micro_clip,
    micro_pipeline_path,
)
from perfusion_hub.micro.checker import Checker
from perfusion_hub.micro.models import make_unet
from perfusion_hub.micro.recipe import STAGES, train_base


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("micro")
    steps = dict.fromkeys(STAGES, 2)
    return out, train_base(out, steps=steps, device="cpu", tiny=True, show=False)


def test_every_stage_runs_and_reports(tiny_run: tuple[Path, dict]) -> None:
    out, report = tiny_run
    assert set(report) == set(STAGES)
    assert all(report[s]["steps"] == 2 for s in STAGES)
    assert 0.0 <= report["clip"]["retrieval_acc"] <= 1.0
    assert report["vae"]["scaling_factor"] > 0
    assert set(report["checker"]["accuracy_through_vae"]) == set(report["checker"]["accuracy"])
    assert Checker.load(out / "checker").read(torch.zeros(1, 3, 64, 64))[0].layout


def test_decoder_stage_keeps_the_latent_space(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    joint = AutoencoderKL.from_pretrained(out / "vae")
    refined = AutoencoderKL.from_pretrained(out / "decoder")
    for part in ("encoder", "quant_conv"):
        mine, theirs = getattr(refined, part).state_dict(), getattr(joint, part).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert not all(torch.equal(a, b) for a, b in zip(refined.decoder.parameters(),
                                                      joint.decoder.parameters(), strict=True))
    shipped = AutoencoderKL.from_pretrained(out / "pipeline" / "vae")
    assert torch.equal(shipped.decoder.conv_out.weight.float(),
                       refined.decoder.conv_out.weight.half().float())


def test_tiny_pipeline_loads_and_renders(tiny_run: tuple[Path, dict]) -> None:
    out, _ = tiny_run
    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", torch_dtype=torch.float32)
    assert type(pipe.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    image = pipe("a red cat", num_inference_steps=2, guidance_scale=3.0).images[0]
    assert image.size == (64, 64)
    meta = json.loads((out / "pipeline" / "phub_base.json").read_text())
    assert meta["name"] == "micro" and meta["resolution"] == 64


def test_resume_skips_finished_stages(tiny_run: tuple[Path, dict]) -> None:
    out, report = tiny_run
    before = (out / "unet.done").stat().st_mtime
    again = train_base(out, stages=("unet",), steps={"unet": 50}, tiny=True, show=False)
    assert again["unet"] == report["unet"]
    assert (out / "unet.done").stat().st_mtime == before


def test_a_checkpoint_resumes_where_it_stopped(tmp_path: Path) -> None:
    first = train_base(tmp_path, stages=("vae",), steps={"vae": 2}, tiny=True, show=False)
    (tmp_path / "vae.done").unlink()
    more = train_base(tmp_path, stages=("vae",), steps={"vae": 3}, tiny=True, show=False)
    assert first["vae"]["steps"] == 2 and more["vae"]["steps"] == 3


def test_a_rerun_stage_makes_the_stages_reading_it_stale(
    tiny_run: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny_run
    work = shutil.copytree(out, tmp_path / "work")
    train_base(work, stages=("unet",), steps={"unet": 1}, resume=False, tiny=True, show=False)
    assert all((work / f"{s}.done").exists() for s in STAGES)
    decoder = AutoencoderKL.from_pretrained(work / "decoder").decoder.conv_out.weight
    exported = AutoencoderKL.from_pretrained(work / "pipeline" / "vae").decoder.conv_out.weight
    assert torch.equal(exported.float(), decoder.half().float())
    train_base(work, stages=("vae",), steps={"vae": 1}, resume=False, tiny=True, show=False)
    assert not any((work / f"{s}.done").exists() for s in ("unet", "decoder", "checker"))
    again = train_base(work, stages=("decoder",), steps={"decoder": 1}, tiny=True, show=False)
    assert again["decoder"]["steps"] == 1 and (work / "decoder.done").exists()
    assert not (work / "checker.done").exists()


def test_the_unet_stage_fine_tunes_an_exported_unet(
    tiny_run: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny_run
    shutil.copytree(out / "pipeline", tmp_path / "start")
    work = shutil.copytree(out, tmp_path / "work")
    report = train_base(work, stages=("unet",), steps={"unet": 1}, resume=False, tiny=True,
                        show=False, unet_from=tmp_path / "start")
    assert report["unet"]["fine_tuned_from"] == str(tmp_path / "start")
    start = UNet2DConditionModel.from_pretrained(tmp_path / "start" / "unet").conv_in.weight
    tuned = UNet2DConditionModel.from_pretrained(work / "pipeline" / "unet").conv_in.weight
    assert not torch.equal(start, tuned)
    assert torch.allclose(start.float(), tuned.float(), atol=1e-3)


def test_fine_tuning_refuses_a_folder_without_a_fitting_unet(
    tiny_run: tuple[Path, dict], tmp_path: Path
) -> None:
    out, _ = tiny_run
    work = shutil.copytree(out, tmp_path / "work")
    with pytest.raises(PhubError, match="no unet/ folder"):
        train_base(work, stages=("unet",), steps={"unet": 1}, resume=False, tiny=True,
                   show=False, unet_from=tmp_path)
    wide = tmp_path / "wide"
    UNet2DConditionModel(**{**dict(make_unet(tiny=True).config),
                            "cross_attention_dim": 48}).save_pretrained(wide / "unet")
    with pytest.raises(PhubError, match="width 48"):
        train_base(work, stages=("unet",), steps={"unet": 1}, resume=False, tiny=True,
                   show=False, unet_from=wide)


def test_stages_need_the_outputs_they_read(tmp_path: Path) -> None:
    with pytest.raises(PhubError, match="clip"):
        train_base(tmp_path, stages=("unet",), steps={"unet": 1}, tiny=True, show=False)
    with pytest.raises(PhubError, match="decoder"):
        train_base(tmp_path, stages=("checker",), steps={"checker": 1}, tiny=True, show=False)
    with pytest.raises(PhubError, match="unknown"):
        train_base(tmp_path, stages=("gan",), tiny=True, show=False)


def test_install_assets_make_a_loadable_bundle(tiny_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = tiny_run
    sizes = install_assets(out, dest=tmp_path, captions=200, progress=False)
    assert set(sizes) == {"pipeline", "clip", "checker"}
    assert micro_pipeline_path(tmp_path).name == "pipeline"
    model, tok = load_micro_clip(assets=tmp_path)
    assert model.dtype == torch.float32 and tok.model_max_length == 32
    assert load_checker(assets=tmp_path).read(torch.zeros(2, 3, 64, 64))[1].background
    assert json.loads((tmp_path / "training_report.json").read_text())["unet"]["steps"] == 2
    tensors, meta = read_statistics(tmp_path / "pipeline" / SHIPPED_STATISTICS)
    assert meta["captions"] == 200 and tensors["inverse_covariance"].shape == (32, 32)


def test_cli_resumes_finished_stages_and_installs(
    tiny_run: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, report = tiny_run
    monkeypatch.setattr(assets, "ASSETS_DIR", tmp_path / "assets")
    result = CliRunner().invoke(app, ["micro", "train-base", "--out", str(out), "--tiny",
                                      "--install", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["report"] == json.loads(json.dumps(report))
    assert set(printed["installed_bytes"]) == {"pipeline", "clip", "checker"}
    assert (tmp_path / "assets" / "pipeline" / SHIPPED_STATISTICS).is_file()


@pytest.mark.parametrize("args", [["--steps", "unet"], ["--steps", "gan=3"],
                                  ["--steps", "unet=-1"], ["--steps", "unet=0"],
                                  ["--minutes", "vae=soon"], ["--minutes", "vae=inf"],
                                  ["--minutes", "vae=nan"], ["--stage", "gan"]])
def test_cli_refuses_bad_budgets(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["micro", "train-base", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert all(stage in result.output for stage in STAGES)
    assert not any(tmp_path.iterdir())
