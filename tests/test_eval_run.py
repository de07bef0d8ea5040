"""`phub eval` end to end on a tiny random base with a tiny local CLIP, and the micro judge's
word checks on known checker readings."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import BASE_CAPTIONS, tiny_pipeline, tiny_tokenizer
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.api import Hub
from perfusion_hub.concepts.synthetic import synthetic_concept
from perfusion_hub.errors import PromptError, TrainingError
from perfusion_hub.evaluate.judge import (
    reference_object,
    superclass_prompt,
    word_checks,
)
from perfusion_hub.evaluate.metrics import CSV_COLUMNS
from perfusion_hub.evaluate.prompts import PHOTO_TEMPLATES
from perfusion_hub.evaluate.run import parse_betas, reference_folder
from perfusion_hub.evaluate.words import expectation
from perfusion_hub.micro.checker import ObjectReading, SceneReading


def _images(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{index}.png")
    return folder


def _tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 32,
                     "num_hidden_layers": 1, "num_attention_heads": 2,
                     "max_position_embeddings": 32, "bos_token_id": tokenizer.bos_token_id,
                     "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 16, "patch_size": 8},
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 16},
                       crop_size={"height": 16, "width": 16}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    tiny_pipeline().save_pretrained(root / "tiny-sd")
    hub = Hub(root / "home")
    hub.add_base(root / "tiny-sd", name="tiny", captions=BASE_CAPTIONS)
    for seed, (name, superclass) in enumerate((("my-cat", "cat"), ("my-chair", "chair"))):
        hub.train(_images(root / name, seed), name=name, superclass=superclass, base="tiny",
                  steps=1, batch_size=1, grad_accum=1)
    return {"root": root, "hub": hub, "clip": _tiny_clip(root / "clip")}


def phub(hub: Hub, *args: object):
    return CliRunner().invoke(app, ["--home", str(hub.settings.home), *map(str, args)])


def test_eval_writes_csv_plot_summary_and_metrics(world: dict) -> None:
    hub, out = world["hub"], world["root"] / "out"
    result = phub(hub, "eval", "my-cat", "--with", "my-chair", "--clip", world["clip"],
                  "--seeds", 1, "--sweep", "beta=0.6:0.8:2", "--steps", 2, "--out", out,
                  "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == (len(PHOTO_TEMPLATES) + 1) * 2 == report["renders"]
    assert {r["beta"] for r in rows} == {"0.6000", "0.8000"}
    assert {r["kind"] for r in rows} >= {"plain", "background", "with-concept"}
    assert all(-1 <= float(r["fidelity"]) <= 1 and -1 <= float(r["alignment"]) <= 1
               for r in rows)
    assert all(r["obeyed"] == "" and r["instance_match"] == "" for r in rows)
    assert all((out / r["image"]).is_file() for r in rows)
    with Image.open(out / "fidelity-vs-alignment.png") as plot:
        assert plot.format == "PNG"
    assert json.loads((out / "summary.json").read_text())["renders"] == len(rows)
    stored = hub.get("my-cat").metrics["eval"]
    assert [s["beta"] for s in stored["sweep"]] == [0.6, 0.8]
    assert stored["judge"].startswith("clip:") and stored["renders"] == len(rows) // 2
    assert stored["beta"] == 0.6  # the swept β nearest the concept's own 0.70 (first on a tie)


def test_eval_passes_on_what_the_renderer_notes(world: dict, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from perfusion_hub.perfusion.install import PerfusionEdit

    monkeypatch.setattr(PerfusionEdit, "gate_notes", lambda self, prompt, betas=None,
                        taus=None: [f"{len(self.states)} concepts"])
    report = world["hub"].evaluate("my-cat", other="my-chair", clip=world["clip"], seeds=1,
                                   steps=2, prompts=["a {} next to a {other}"],
                                   out=tmp_path / "out")
    assert report.notes == ["2 concepts"]
    assert json.loads(report.summary_path.read_text())["notes"] == ["2 concepts"]


def test_eval_prompts_file_and_default_images(world: dict, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a {} in the city\n")
    calls: list[tuple[int, int]] = []
    report = world["hub"].evaluate("my-chair", clip=world["clip"], prompts=prompts, seeds=3,
                                   batch=2, steps=2, out=tmp_path / "out",
                                   progress=lambda done, total: calls.append((done, total)))
    assert [(r.kind, r.seed) for r in report.rows] == [("custom", 0), ("custom", 1),
                                                         ("custom", 2)]
    assert calls == [(2, 3), (3, 3)]  # one call per batch of seeds
    assert len({r.image for r in report.rows}) == 3
    assert report.reference_images == world["root"] / "my-chair"
    assert report.headline.beta == pytest.approx(0.70)


def test_eval_refusals(world: dict, tmp_path: Path) -> None:
    hub = world["hub"]
    no_clip = phub(hub, "eval", "my-cat", "--seeds", 1, "--out", tmp_path)
    assert no_clip.exit_code == 1 and "--clip" in no_clip.output
    pair_only = tmp_path / "pair.txt"
    pair_only.write_text("a {} next to a {other}\n")
    refused = phub(hub, "eval", "my-cat", "--prompts", pair_only, "--clip", world["clip"])
    assert refused.exit_code == 1 and "--with" in refused.output
    assert phub(hub, "eval", "nobody", "--clip", world["clip"]).exit_code == 1
    no_batch = phub(hub, "eval", "my-cat", "--batch", 0, "--clip", world["clip"])
    assert no_batch.exit_code == 1 and "--batch" in no_batch.output
    with pytest.raises(PromptError, match="β only"):
        parse_betas("tau=0.1:0.2:2")
    assert parse_betas("beta=0.5:0.8:4") == (0.5, 0.6, 0.7, 0.8)
    assert parse_betas(None) == (None,)


def test_reference_folder_needs_known_images(tmp_path: Path) -> None:
    concept = synthetic_concept("my-cat")
    with pytest.raises(TrainingError, match="--images"):
        reference_folder(concept, None)
    concept.training["images_dir"] = str(tmp_path / "gone")
    with pytest.raises(TrainingError, match="no longer exists"):
        reference_folder(concept, None)
    concept.training["images_dir"] = str(tmp_path)
    assert reference_folder(concept, None) == tmp_path
    assert reference_folder(concept, tmp_path / "x") == tmp_path / "x"


def test_superclass_prompt() -> None:
    sup = {"my-cat": "cat", "my-chair": "chair"}
    assert superclass_prompt("a <my-cat:beta=0.6> on a <my-chair>", sup) == "a cat on a chair"


def _obj(category: str, colour: str, position: str = "centre", pattern: str | None = None,
         accent: str | None = None, eyes: str | None = None) -> ObjectReading:
    return ObjectReading(category, colour, pattern, accent, eyes, position, None)


SUP = {"my-cat": "cat", "my-chair": "chair"}


def test_word_checks_single_object() -> None:
    wanted = expectation("a <my-cat> on the left on a green background", SUP)
    assert wanted is not None
    good = SceneReading("single", "green", (_obj("cat", "orange", "left"),))
    assert word_checks(good, wanted) == {"count": True, "object0.category": True,
                                         "object0.position": True, "background": True}
    bad = SceneReading("side", "blue", (_obj("cat", "orange", "right"), _obj("ball", "red")))
    checks = word_checks(bad, wanted)
    assert checks["count"] is False and checks["background"] is False
    assert checks["object0.category"] is True


def test_word_checks_relations_pick_the_best_assignment() -> None:
    next_to = expectation("a <my-cat> next to a red ball", SUP)
    assert next_to is not None
    # the checker reads objects left to right: the ball is on the left here
    reading = SceneReading("side", "white", (_obj("ball", "red", "left"),
                                             _obj("cat", "orange", "right")))
    assert all(word_checks(reading, next_to).values())
    left_of = expectation("a <my-cat> left of a red ball", SUP)
    assert left_of is not None
    assert word_checks(reading, left_of)["relation"] is False
    on = expectation("a <my-cat> on a <my-chair>", SUP)
    assert on is not None
    stacked = SceneReading("stacked", "white", (_obj("cat", "orange"), _obj("chair", "green")))
    assert all(word_checks(stacked, on).values())
    assert word_checks(SceneReading("side", "white", stacked.objects), on)["relation"] is False
    upside_down = SceneReading("stacked", "white", (_obj("chair", "green"), _obj("cat", "o")))
    assert word_checks(upside_down, on)["relation"] is False


def test_reference_object_is_the_mode_of_one_object_readings() -> None:
    cat = _obj("cat", "orange", pattern="striped", accent="blue", eyes="green")
    odd = _obj("cat", "red", pattern="striped", accent="blue", eyes="green")
    readings = [SceneReading("single", bg, (o,)) for bg, o in
                (("red", cat), ("blue", cat), ("white", odd))]
    readings.append(SceneReading("side", "white", (odd, odd)))
    ref = reference_object(readings)
    assert (ref.category, ref.colour, ref.pattern, ref.accent, ref.eyes) == (
        "cat", "orange", "striped", "blue", "green")
    assert reference_object([readings[-1]]) is None
