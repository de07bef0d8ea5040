"""Job files for `phub render`: JSONL (one entry a line) or YAML (a top-level list), read as
a stream so that a file of any length keeps memory flat.

Each entry is a prompt string or an object with `prompt` and optional overrides:

    {"prompt": "a <my-cat> on a <my-chair>", "seed": 7, "name": "cat-on-chair"}
    {"prompt": "a <my-cat:beta=0.6>", "negative": "blurry", "steps": 30, "size": "64x64"}

Keys: prompt, name, negative, seed, steps, guidance, scheduler, size, beta, tau, num_images.
Jobs are numbered by their position in the file (0, 1, …; blank lines do not count).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from perfusion_hub.compose.options import (
    check_guidance,
    check_positive_int,
    check_seed,
    parse_size,
)
from perfusion_hub.compose.prompt import check_beta, check_tau, parse_prompt
from perfusion_hub.compose.schedulers import check_scheduler_name
from perfusion_hub.errors import InvalidNameError, PromptError
from perfusion_hub.names import validate_name

JOB_KEYS = ("prompt", "name", "negative", "seed", "steps", "guidance", "scheduler", "size",
            "beta", "tau", "num_images")
MAX_STEPS = 1000
MAX_IMAGES_PER_JOB = 64
JSONL_SUFFIXES = (".jsonl", ".ndjson")
YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Job:
    """One validated entry of a job file."""

    index: int
    line: int
    prompt: str
    name: str | None = None
    negative: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    beta: float | None = None
    tau: float | None = None
    num_images: int = 1

    @property
    def stem(self) -> str:
        """Output file stem: the job's name, else `job-<index>`."""
        return self.name or f"job-{self.index:06d}"

    def output_names(self) -> list[str]:
        """File names of this job's images, fixed by its index or name alone."""
        if self.num_images == 1:
            return [f"{self.stem}.png"]
        return [f"{self.stem}-{k}.png" for k in range(self.num_images)]


@dataclass(frozen=True)
class InvalidEntry:
    """An entry that failed validation, kept as its error (for `--skip-invalid`)."""

    index: int
    line: int
    error: PromptError


def read_jobs(path: str | Path) -> Iterator[Job | InvalidEntry]:
    """Every entry of a job file, validated, in file order; a generator (one entry in memory)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"Job file {path} does not exist.")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        entries = _jsonl_entries(path)
    elif suffix in YAML_SUFFIXES:
        entries = _yaml_entries(path)
    else:
        raise PromptError(
            f"Job file {path}: unknown format {suffix or '(no suffix)'}; use .jsonl or .yaml."
        )
    for index, (line, data) in enumerate(entries):
        if isinstance(data, PromptError):
            yield InvalidEntry(index, line, data)
            continue
        try:
            yield job_from_entry(data, index, line)
        except PromptError as error:
            yield InvalidEntry(index, line, error)


def job_from_entry(data: Any, index: int, line: int) -> Job:
    """Validate one parsed entry; errors name the line."""
    def fail(problem: str) -> PromptError:
        return PromptError(f"Job file line {line}: {problem}")

    if isinstance(data, str):
        data = {"prompt": data}
    if not isinstance(data, dict):
        raise fail(f"expected an object with a 'prompt' (or a prompt string), not {data!r:.60}.")
    unknown = [key for key in data if key not in JOB_KEYS]
    if unknown:
        raise fail(f"unknown key {unknown[0]!r}; use {', '.join(JOB_KEYS)}.")
    if not isinstance(data.get("prompt"), str):
        raise fail("'prompt' (a string) is required.")
    try:
        parse_prompt(data["prompt"])
        values: dict[str, Any] = {"prompt": data["prompt"]}
        if data.get("name") is not None:
            values["name"] = validate_name(str(data["name"]), "job")
        if data.get("negative") is not None:
            values["negative"] = _string(data["negative"], "negative")
        if data.get("seed") is not None:
            values["seed"] = check_seed(data["seed"])
        if data.get("steps") is not None:
            values["steps"] = check_positive_int(data["steps"], "steps", MAX_STEPS)
        if data.get("guidance") is not None:
            values["guidance"] = check_guidance(data["guidance"])
        if data.get("scheduler") is not None:
            values["scheduler"] = check_scheduler_name(str(data["scheduler"]))
        if data.get("size") is not None:
            values["size"] = parse_size(str(data["size"]))
        if data.get("beta") is not None:
            values["beta"] = check_beta(_number(data["beta"], "beta"))
        if data.get("tau") is not None:
            values["tau"] = check_tau(_number(data["tau"], "tau"))
        if data.get("num_images") is not None:
            values["num_images"] = check_positive_int(data["num_images"], "num_images",
                                                      MAX_IMAGES_PER_JOB)
    except (PromptError, InvalidNameError) as error:
        raise fail(str(error)) from None
    return Job(index=index, line=line, **values)


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise PromptError(f"'{key}' must be a string.")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PromptError(f"'{key}' must be a number, not {value!r}.")
    return float(value)


def _jsonl_entries(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as error:
                yield number, PromptError(f"Job file line {number}: not valid JSON ({error.msg}).")


def _yaml_entries(path: Path) -> Iterator[tuple[int, Any]]:
    """Items of a top-level YAML list, composed one at a time from the event stream."""
    with open(path, encoding="utf-8") as handle:
        loader = yaml.SafeLoader(handle)
        try:
            loader.get_event()  # stream start
            if loader.check_event(yaml.StreamEndEvent):
                return
            loader.get_event()  # document start
            if loader.check_event(yaml.ScalarEvent) and loader.peek_event().value == "":
                return
            if not loader.check_event(yaml.SequenceStartEvent):
                line = loader.peek_event().start_mark.line + 1
                raise PromptError(f"Job file line {line}: a YAML job file is a list of entries "
                                  "('- prompt: ...').")
            loader.get_event()
            while not loader.check_event(yaml.SequenceEndEvent):
                node = loader.compose_node(None, None)  # type: ignore[arg-type]
                line = node.start_mark.line + 1
                try:
                    yield line, loader.construct_document(node)
                except yaml.YAMLError as error:
                    yield line, PromptError(f"Job file line {line}: {error}")
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            line = mark.line + 1 if mark else 0
            raise PromptError(f"Job file line {line}: invalid YAML ({error.problem}).") from None
        finally:
            loader.dispose()

