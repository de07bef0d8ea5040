"""Job files: JSONL and YAML entries, validation with line numbers, streaming, sharding."""

from __future__ import annotations

import inspect
import json
import tracemalloc
from pathlib import Path

import pytest

from perfusion_hub.compose.jobs import InvalidEntry, Job, read_jobs
from perfusion_hub.compose.options import Shard, shard_from_environment
from perfusion_hub.errors import PromptError


def write_jsonl(path: Path, entries: list[object]) -> Path:
    path.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    return path


def test_jsonl_entries_are_validated_jobs(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "jobs.jsonl", [
        {"prompt": "a <my-cat>", "seed": 3, "name": "first", "size": "64x64"},
        "a plain prompt",
        {"prompt": "a <my-cat:beta=0.6>", "num_images": 2, "scheduler": "ddim"},
    ])
    jobs = list(read_jobs(path))
    assert all(isinstance(job, Job) for job in jobs)
    assert jobs[0] == Job(index=0, line=1, prompt="a <my-cat>", seed=3, name="first",
                          size=(64, 64))
    assert jobs[1].prompt == "a plain prompt" and jobs[1].output_names() == ["job-000001.png"]
    assert jobs[2].output_names() == ["job-000002-0.png", "job-000002-1.png"]


def test_yaml_list_is_read_item_by_item(tmp_path: Path) -> None:
    path = tmp_path / "jobs.yaml"
    path.write_text("# batch\n- prompt: a <my-cat>\n  seed: 1\n\n- a red ball\n"
                    "- prompt: a <my-chair>\n  tau: 0.2\n")
    jobs = list(read_jobs(path))
    assert [(job.index, job.line) for job in jobs] == [(0, 2), (1, 5), (2, 6)]
    assert jobs[2].tau == 0.2
    assert inspect.isgenerator(read_jobs(path))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "line 2: not valid JSON"),
        ('{"prompt": "a <cat"}', "line 2: Unbalanced"),
        ('{"prompt": "a cat", "colour": "red"}', "line 2: unknown key 'colour'"),
        ('{"prompt": "a cat", "beta": 3}', "line 2: beta=3.0 is out of range"),
        ('{"prompt": "a cat", "seed": -1}', "line 2: Seed"),
        ('{"prompt": "a cat", "steps": 0}', "line 2: steps"),
        ('{"prompt": "a cat", "scheduler": "lms"}', "line 2: Unknown scheduler"),
        ('{"prompt": "a cat", "name": "../x"}', "line 2: Invalid job name"),
        ('{"seed": 1}', "line 2: 'prompt'"),
        ("[1, 2]", "line 2: expected an object"),
    ],
)
def test_invalid_lines_name_their_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    entries = list(read_jobs(path))
    assert isinstance(entries[0], Job)
    assert isinstance(entries[1], InvalidEntry)
    assert message in str(entries[1].error)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="does not exist"):
        list(read_jobs(tmp_path / "none.jsonl"))
    (tmp_path / "jobs.txt").write_text("a cat\n")
    with pytest.raises(PromptError, match="unknown format"):
        list(read_jobs(tmp_path / "jobs.txt"))
    (tmp_path / "jobs.yaml").write_text("prompt: a cat\n")
    with pytest.raises(PromptError, match="list of entries"):
        list(read_jobs(tmp_path / "jobs.yaml"))
    (tmp_path / "bad.yaml").write_text("- prompt: a cat\n- prompt: [unclosed\n")
    with pytest.raises(PromptError, match="line"):
        list(read_jobs(tmp_path / "bad.yaml"))


def write_many(path: Path, count: int) -> Path:
    with open(path, "w") as handle:
        for index in range(count):
            text = f"a <my-cat> number {index}"
            handle.write(json.dumps({"prompt": text, "seed": index}) + "\n"
                         if path.suffix == ".jsonl" else f"- prompt: {text}\n  seed: {index}\n")
    return path


def streaming_peak(path: Path) -> tuple[int, int]:
    """(entries read, peak traced bytes) while iterating the job file."""
    tracemalloc.start()
    seen = sum(1 for job in read_jobs(path) if isinstance(job, Job))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return seen, peak


def test_hundred_thousand_lines_are_a_stream(tmp_path: Path) -> None:
    path = write_many(tmp_path / "jobs.jsonl", 100_000)
    assert inspect.isgenerator(read_jobs(path))
    assert sum(1 for job in read_jobs(path) if isinstance(job, Job)) == 100_000


@pytest.mark.parametrize(("suffix", "small"), [(".jsonl", 2_000), (".yaml", 300)])
def test_memory_stays_flat_as_the_file_grows(tmp_path: Path, suffix: str, small: int) -> None:
    seen_small, peak_small = streaming_peak(write_many(tmp_path / f"small{suffix}", small))
    seen_large, peak_large = streaming_peak(write_many(tmp_path / f"large{suffix}", 10 * small))
    assert (seen_small, seen_large) == (small, 10 * small)
    assert peak_large < peak_small + 100_000, (peak_small, peak_large)


def test_shard_from_accelerate_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert shard_from_environment() is None
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    assert shard_from_environment() == Shard(2, 4)
