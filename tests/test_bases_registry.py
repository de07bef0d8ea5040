"""Registering and opening bases: fingerprint + statistics in the registry, Hub and CLI."""

from __future__ import annotations

import json

import pytest
import torch
from tiny import tiny_captions, tiny_pipeline
from typer.testing import CliRunner

from perfusion_hub.api import Hub
from perfusion_hub.bases.fingerprint import FINGERPRINT_ATTRIBUTE
from perfusion_hub.errors import BaseModelError, NotFoundError
from perfusion_hub.perfusion import apply
from perfusion_hub.registry import bases as registry_bases
from perfusion_hub.registry.bases import open_base, register_base


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("bases") / "tiny-base"
    tiny_pipeline().save_pretrained(path)
    return path


@pytest.fixture
def quick_captions(monkeypatch):
    monkeypatch.setattr(registry_bases, "default_captions", lambda *_: tiny_captions(120))


def test_register_base_stores_statistics_once(registry, settings, folder):
    record = register_base(registry, settings, folder, captions=tiny_captions(120),
                           progress=False)
    assert record.name == "tiny-base" and record.architecture == "sd-like-32"
    assert record.source == str(folder.resolve())
    assert record.covariance_path == settings.bases_dir / f"{record.covariance_hash}.safetensors"
    assert record.covariance_path.is_file()
    again = register_base(registry, settings, folder, progress=False)
    assert again.covariance_hash == record.covariance_hash
    assert [b.name for b in registry.list_bases()] == ["tiny-base"]
    assert len(list(settings.bases_dir.iterdir())) == 1


def test_open_base_by_name_attaches_identity(registry, settings, folder):
    record = register_base(registry, settings, folder, name="tiny",
                           captions=tiny_captions(120), progress=False)
    base = open_base(registry, settings, "tiny", progress=False)
    assert base.name == "tiny" and base.fingerprint == record.fingerprint
    assert base.covariance_hash == record.covariance_hash
    assert base.inverse_covariance.shape == (32, 32)
    assert base.inverse_covariance.dtype == torch.float32
    assert base.resolution == 16 and base.train_templates
    assert getattr(base.pipe, FINGERPRINT_ATTRIBUTE) == record.fingerprint
    half = open_base(registry, settings, "tiny", dtype=torch.float16, progress=False)
    assert half.pipe.unet.dtype == torch.float16
    assert half.covariance_hash == record.covariance_hash


def test_open_base_registers_a_source_on_first_use(registry, settings, folder, quick_captions):
    base = open_base(registry, settings, str(folder), progress=False)
    assert base.name == "tiny-base"
    assert registry.get_base("tiny-base").covariance_hash == base.covariance_hash


def test_open_base_default_comes_from_the_environment(registry, settings, folder, monkeypatch,
                                                      quick_captions):
    monkeypatch.setenv("PHUB_DEFAULT_BASE", str(folder))
    assert open_base(registry, settings, None, progress=False).name == "tiny-base"


def test_unknown_base_names_the_next_step(registry, settings):
    with pytest.raises(NotFoundError, match="phub base add"):
        open_base(registry, settings, "no-such-base")


def test_changed_weights_are_detected(registry, settings, folder, tmp_path):
    copy = tmp_path / "copy"
    pipe = tiny_pipeline()
    pipe.save_pretrained(copy)
    register_base(registry, settings, copy, name="copy", captions=tiny_captions(60),
                  progress=False)
    tiny_pipeline(seed=3).save_pretrained(copy)
    with pytest.raises(BaseModelError, match="changed since"):
        open_base(registry, settings, "copy", progress=False)


def test_concept_for_the_opened_base_installs(registry, settings, folder):
    from tiny import tiny_concept

    register_base(registry, settings, folder, captions=tiny_captions(60), progress=False)
    base = open_base(registry, settings, "tiny-base", progress=False)
    concept = tiny_concept(base.pipe, "my-cat")
    with apply(base.pipe, [concept], base.inverse_covariance) as edit:
        assert edit.states[0].name == "my-cat"


def test_hub_and_cli(home, folder, tmp_path):
    captions = tmp_path / "captions.txt"
    captions.write_text("\n".join(tiny_captions(80)))
    runner = CliRunner()
    from cli.main import app

    result = runner.invoke(app, ["--home", str(home), "base", "add", str(folder), "--name",
                                 "tiny", "--captions", str(captions)])
    assert result.exit_code == 0, result.output
    assert "Registered base" in result.output and "tiny" in result.output
    result = runner.invoke(app, ["--home", str(home), "base", "list", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)
    assert [b["name"] for b in listed] == ["tiny"] and listed[0]["covariance_hash"]
    result = runner.invoke(app, ["--home", str(home), "base", "add", str(tmp_path / "nope")])
    assert result.exit_code == 1 and "neither a" in " ".join(result.output.split())
    hub = Hub(home)
    assert [b.name for b in hub.bases()] == ["tiny"]
    assert hub.open_base("tiny").covariance_hash == listed[0]["covariance_hash"]


def test_micro_statistics_use_the_micro_worlds_own_words():
    from perfusion_hub.micro.world import vocabulary

    captions = registry_bases.default_captions("phub-micro", 200)
    words = set(vocabulary())
    assert len(captions) == 200
    assert all(word in words for caption in captions for word in caption.split())
    assert registry_bases.default_captions("sd-like-32", 100)[0] != captions[0]


def test_a_folder_that_ships_statistics_is_not_recomputed(registry, settings, folder, tmp_path,
                                                          monkeypatch):
    from perfusion_hub.bases import compute_text_statistics, save_statistics

    shipped = tmp_path / "with-statistics"
    tiny_pipeline().save_pretrained(shipped)
    pipe = tiny_pipeline()
    stats = compute_text_statistics(pipe.tokenizer, pipe.text_encoder, tiny_captions(80),
                                    progress=False)
    save_statistics(stats, shipped / registry_bases.SHIPPED_STATISTICS)

    def no_computing(*args, **kwargs):
        raise AssertionError("statistics recomputed although the base ships them")

    monkeypatch.setattr(registry_bases, "compute_text_statistics", no_computing)
    loaded = open_base(registry, settings, str(shipped), progress=False)
    assert loaded.covariance_hash == stats.hash
    assert torch.equal(loaded.inverse_covariance, stats.inverse_covariance.float())
