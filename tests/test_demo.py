"""`phub demo` on the shipped micro base with a very small step count: every output exists,
both concepts are registered, and a rerun replaces them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.api import Hub
from perfusion_hub.evaluate.demo import write_instance_data
from perfusion_hub.micro.world import MY_CAT


def test_instance_data_has_images_and_matching_masks(tmp_path: Path) -> None:
    images, masks = write_instance_data(MY_CAT, tmp_path, count=3, seed=0)
    names = sorted(p.name for p in images.iterdir())
    assert names == ["00.png", "01.png", "02.png"] == sorted(p.name for p in masks.iterdir())
    with Image.open(masks / "00.png") as mask, Image.open(images / "00.png") as image:
        assert mask.mode == "L" and mask.size == image.size == (64, 64)
        assert set(np.unique(np.asarray(mask)).tolist()) == {0, 255}
    write_instance_data(MY_CAT, tmp_path, count=2, seed=1)
    assert len(list(images.iterdir())) == 2


def test_demo_end_to_end_and_rerun(tmp_path: Path) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    result = CliRunner().invoke(app, ["--home", str(home), "demo", "--steps", "2", "--renders",
                                      "2", "--eval-seeds", "1", "--sample-steps", "8", "--out",
                                      str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for name in ("my-cat", "my-chair"):
        assert len(list((out / "data" / name / "images").glob("*.png"))) == 6
        assert len(list((out / "data" / name / "masks").glob("*.png"))) == 6
    assert len(report["renders"]) == 2 and all(Path(p).is_file() for p in report["renders"])
    with Image.open(report["contact_sheet"]) as sheet:
        assert sheet.format == "PNG"
    with open(out / "eval" / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["kind"] for r in rows} >= {"plain", "with-concept"}
    assert all(r["instance_match"] != "" for r in rows if r["kind"] == "plain")
    assert (out / "eval" / "fidelity-vs-alignment.png").is_file()
    hub = Hub(home)
    assert {r.name for r in hub.list()} == {"my-cat", "my-chair"}
    assert "eval" in hub.get("my-cat").metrics
    first_hash = hub.get("my-cat").content_hash

    again = hub.demo(out=out, steps=1, renders=1, eval_seeds=1, sample_steps=4)
    assert len(again.renders) == 1 and again.evaluation.rows
    assert {r.name for r in hub.list()} == {"my-cat", "my-chair"}
    assert hub.get("my-cat").content_hash != first_hash


def test_demo_says_each_note_once(tmp_path: Path) -> None:
    """Composing and evaluating both render the pair; on the micro base <my-chair>'s gate stays
    shut after "a <my-cat> on a", which both phases note."""
    result = CliRunner().invoke(app, ["--home", str(tmp_path / "home"), "demo", "--steps", "1",
                                      "--renders", "1", "--eval-seeds", "1", "--sample-steps",
                                      "2", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("Note: ")]
    assert any("<my-chair> opens its own gate only" in note for note in notes)
    assert len(notes) == len(set(notes))
