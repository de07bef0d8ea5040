"""`phub render` / `Hub.render`: batches on one loaded base, resumable, shardable."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_compose import World, build_world, pixels, registered_twin

from perfusion_hub.compose import Renderer, read_png_parameters

JOBS = [
    {"prompt": "a <my-cat> on a chair", "name": "cat-first"},
    {"prompt": "a <my-cat:beta=0.6> on a table"},
    {"prompt": "a <my-cat> on a <my-chair>", "seed": 99},
    {"prompt": "a <my-chair> by a <my-cat>", "num_images": 2},
    {"prompt": "a dog on a chair"},
    {"prompt": "a <my-cat> in the garden", "steps": 2},
]
OUTPUTS = {"cat-first.png", "job-000001.png", "job-000002.png", "job-000003-0.png",
           "job-000003-1.png", "job-000004.png", "job-000005.png"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return build_world(tmp_path_factory.mktemp("render"))


def job_file(folder: Path, entries: list, name: str = "jobs.jsonl") -> Path:
    path = folder / name
    path.write_text("".join((entry if isinstance(entry, str) else json.dumps(entry)) + "\n"
                            for entry in entries))
    return path


def pngs(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_killed_batch_resumes_and_writes_each_image_once(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs, out = job_file(tmp_path, JOBS), tmp_path / "out"
    saved: Counter[str] = Counter()
    original_save = Renderer.save

    def save(self, image, params, path):
        if sum(saved.values()) == 3 and not killed:
            killed.append(path)
            raise KeyboardInterrupt
        saved[Path(path).name] += 1
        return original_save(self, image, params, path)

    killed: list[Path] = []
    monkeypatch.setattr(Renderer, "save", save)
    logged_before = len(world.hub.history(limit=None))
    with pytest.raises(KeyboardInterrupt):
        world.hub.render(jobs, base=world.base, out=out, steps=3)
    assert len(pngs(out)) == 3 and all(name.endswith(".png") for name in pngs(out))

    code, stdout, output = world.cli("render", str(jobs), "--base", world.base, "--out", str(out),
                                     "--steps", "3")
    assert code == 0, output
    assert pngs(out) == OUTPUTS
    assert set(saved) == OUTPUTS and set(saved.values()) == {1}
    assert "4 images rendered" in " ".join(stdout.split())
    assert len(world.hub.history(limit=None)) == logged_before + len(OUTPUTS)

    code, stdout, output = world.cli("render", str(jobs), "--base", world.base, "--out", str(out),
                                     "--json")
    assert code == 0, output
    summary = json.loads(stdout)
    assert (summary["rendered_images"], summary["skipped_jobs"], summary["jobs"]) == (0, 6, 6)


def test_seeds_names_and_reuse_of_concept_sets(
        world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import perfusion_hub.perfusion as perfusion

    installs: list[list[str]] = []
    real_apply = perfusion.apply

    def counting_apply(pipe, concepts, *args, **kwargs):
        installs.append([c.name for c in concepts])
        return real_apply(pipe, concepts, *args, **kwargs)

    monkeypatch.setattr(perfusion, "apply", counting_apply)
    out = tmp_path / "out"
    summary = world.hub.render(JOBS, base=world.base, out=out, seed=10, steps=3)
    assert summary.rendered_images == len(OUTPUTS) and pngs(out) == OUTPUTS
    assert installs == [["my-cat"], ["my-cat", "my-chair"], ["my-chair", "my-cat"], ["my-cat"]]

    seeds = {name: read_png_parameters(out / name).seed for name in OUTPUTS}
    assert seeds == {"cat-first.png": 10, "job-000001.png": 11, "job-000002.png": 99,
                     "job-000003-0.png": 13, "job-000003-1.png": 14, "job-000004.png": 14,
                     "job-000005.png": 15}
    assert read_png_parameters(out / "job-000005.png").steps == 2
    assert read_png_parameters(out / "job-000001.png").concepts[0].beta == 0.6

    again = world.hub.compose(from_png=out / "job-000002.png", out=tmp_path / "again.png")
    assert np.array_equal(pixels(again[0]), pixels(out / "job-000002.png"))


def test_concepts_whose_gates_open_on_each_other_are_named(world: World,
                                                             tmp_path: Path) -> None:
    jobs = job_file(tmp_path, [{"prompt": "a <my-cat> next to a <my-twin>"},
                               {"prompt": "a <my-cat> on a <my-chair>"}])
    with registered_twin(world):
        code, _, output = world.cli("render", str(jobs), "--base", world.base, "--steps", "2",
                                    "--out", str(tmp_path / "out"))
        summary = world.hub.render(jobs, base=world.base, out=tmp_path / "again", steps=2)
    assert code == 0, output
    assert "note: <my-cat> opens the gate of <my-twin>" in output
    # <my-twin> shares <my-cat>'s i*, but its own v* (−v*_cat) leaves its token unlike it
    assert sorted(n.split(" (")[0] for n in summary.to_json()["notes"]) == [
        "<my-cat> opens the gate of <my-twin> to 88%",
        "<my-twin> opens its own gate only to 0% in this prompt"]


def test_shards_split_the_jobs(world: World, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    entries = [{"prompt": f"a <my-cat> on a {w}"} for w in ("chair", "table", "car", "tree")]
    jobs = job_file(tmp_path, entries, "jobs.yaml")
    jobs.write_text("".join(f"- prompt: {e['prompt']}\n" for e in entries))
    first, second = tmp_path / "first", tmp_path / "second"
    code, _, output = world.cli("render", str(jobs), "--base", world.base, "--out", str(first),
                                "--steps", "2", "--shard", "0/2")
    assert code == 0, output
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    summary = world.hub.render(jobs, base=world.base, out=second, steps=2)
    assert str(summary.shard) == "1/2"
    assert pngs(first) == {"job-000000.png", "job-000002.png"}
    assert pngs(second) == {"job-000001.png", "job-000003.png"}


def test_invalid_line_stops_before_anything_is_rendered(world: World, tmp_path: Path) -> None:
    jobs = job_file(tmp_path, [JOBS[0], JOBS[1], '{"prompt": "a <my-cat:beta=7>"}', JOBS[4]])
    out = tmp_path / "out"
    code, _, output = world.cli("render", str(jobs), "--base", world.base, "--out", str(out))
    assert code == 1
    assert "line 3" in output and "out of range" in output and "Traceback" not in output
    assert pngs(out) == set()

    code, stdout, output = world.cli("render", str(jobs), "--base", world.base, "--out",
                                     str(out), "--steps", "2", "--skip-invalid")
    assert code == 0, output
    assert pngs(out) == {"cat-first.png", "job-000001.png", "job-000003.png"}
    assert "1 invalid" in stdout and "line 3" in stdout


def test_unknown_concept_in_a_job_names_its_line(world: World, tmp_path: Path) -> None:
    jobs = job_file(tmp_path, [JOBS[4], {"prompt": "a <my-cta>"}])
    out = tmp_path / "out"
    code, _, output = world.cli("render", str(jobs), "--base", world.base, "--out", str(out),
                                "--steps", "2")
    assert code == 1
    text = " ".join(output.split())
    assert "line 2" in text and "Did you mean 'my-cat'" in text
    assert pngs(out) == {"job-000000.png"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "2/2"], "0 <= i < n"),
        (["--beta", "2"], "out of range"),
        (["--size", "7x7"], "Size"),
        (["--out", "{blocker}"], "is a file"),
    ],
)
def test_bad_batch_options(world: World, tmp_path: Path, args: list[str], message: str) -> None:
    jobs = job_file(tmp_path, JOBS[:1])
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    args = [a.format(blocker=blocker) for a in args]
    code, _, output = world.cli("render", str(jobs), "--base", world.base, *args)
    assert code == 1 and message in output, output
