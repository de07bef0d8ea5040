"""`render_jobs`: a job file rendered on one loaded base, resumable and shardable.

The single code path behind `phub render` and `Hub.render`. A first pass streams the job file
to validate every entry and count the images still to draw (so an invalid line stops the
batch before anything is rendered, and the progress bar knows its total); the second pass
renders. Output names depend only on the job's index or name, and a job whose PNGs exist is
skipped, so a killed batch resumes where it stopped and each image is written once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from perfusion_hub.compose.jobs import MAX_STEPS, InvalidEntry, Job, job_from_entry, read_jobs
from perfusion_hub.compose.options import (
    Shard,
    check_guidance,
    check_positive_int,
    check_seed,
    default_device,
    parse_shard,
    parse_size,
    shard_from_environment,
    torch_dtype,
)
from perfusion_hub.compose.outputs import ensure_writable_dir
from perfusion_hub.compose.prompt import check_beta, check_tau
from perfusion_hub.compose.schedulers import check_scheduler_name
from perfusion_hub.compose.session import ImageRequest, Renderer
from perfusion_hub.errors import PhubError, PromptError


class BatchProgress(Protocol):
    """What `render_jobs` reports while it works (the CLI draws a rich progress bar)."""

    def start(self, total: int) -> None: ...

    def advance(self, job: Job, paths: list[Path]) -> None: ...


@dataclass
class BatchDefaults:
    """Values for jobs that do not set them; `seed` is the base seed (job seed = seed + index)."""

    seed: int = 0
    negative: str = ""
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: tuple[int, int] | None = None
    beta: float | None = None
    tau: float | None = None


@dataclass
class BatchSummary:
    """What a batch did."""

    output_dir: Path
    shard: Shard | None = None
    jobs: int = 0
    rendered_images: int = 0
    skipped_jobs: int = 0
    invalid: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "output_dir": str(self.output_dir), "shard": str(self.shard) if self.shard else None,
            "jobs": self.jobs, "rendered_images": self.rendered_images,
            "skipped_jobs": self.skipped_jobs, "invalid": self.invalid, "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def render_jobs(hub: Any, jobs: str | Path | Iterable[Any], *, base: str | None = None,
                out: str | Path | None = None, seed: int = 0, negative: str | None = None,
                steps: int | None = None, guidance: float | None = None,
                scheduler: str | None = None, size: str | tuple[int, int] | None = None,
                beta: float | None = None, tau: float | None = None,
                shard: str | Shard | None = None, skip_invalid: bool = False,
                device: str | None = None, dtype: str | None = None,
                progress: BatchProgress | None = None) -> BatchSummary:
    """Render every job of this process's share that has no output yet; returns a summary.

    `jobs` is a job file (JSONL or YAML) or an iterable of entries (prompt strings or dicts).
    The other options are the defaults of jobs that do not set them; `seed` is the base seed
    (a job without a seed uses seed + its index). `shard` (`i/n`) defaults to this process's
    share under `accelerate launch` (RANK of WORLD_SIZE).
    """
    started = time.perf_counter()
    defaults = BatchDefaults(
        seed=check_seed(seed), negative=negative or "",
        steps=None if steps is None else check_positive_int(steps, "--steps", MAX_STEPS),
        guidance=None if guidance is None else check_guidance(guidance),
        scheduler=None if scheduler is None else check_scheduler_name(scheduler),
        size=parse_size(size) if isinstance(size, str) else size,
        beta=None if beta is None else check_beta(beta, "--beta"),
        tau=None if tau is None else check_tau(tau, "--tau"),
    )
    torch_type = torch_dtype(dtype)
    shard = (parse_shard(shard) if isinstance(shard, str) else shard) or shard_from_environment()
    entries = _entries(jobs)
    default_name = Path(jobs).stem if isinstance(jobs, str | Path) else "batch"
    output_dir = ensure_writable_dir(Path(out) if out is not None
                                     else hub.settings.renders_dir / default_name)
    summary = BatchSummary(output_dir=output_dir, shard=shard)

    pending = 0
    names: set[str] = set()
    for entry in entries():
        if isinstance(entry, InvalidEntry):
            if not skip_invalid:
                raise entry.error
            summary.invalid.append(str(entry.error))
            continue
        if entry.name is not None:
            if entry.name in names:
                raise PromptError(f"Job file line {entry.line}: name {entry.name!r} is used by an "
                                  "earlier job; job names must be unique.")
            names.add(entry.name)
        if shard is None or shard.takes(entry.index):
            summary.jobs += 1
            pending += sum(not (output_dir / n).exists() for n in entry.output_names())
    del names
    if progress is not None:
        progress.start(summary.jobs)
    if pending == 0:
        summary.skipped_jobs = summary.jobs
        summary.seconds = time.perf_counter() - started
        return summary

    loaded = hub.open_base(base, device=device or default_device(),
                           dtype=torch_type)
    with Renderer(hub.registry, loaded) as renderer:
        for job in entries():
            if isinstance(job, InvalidEntry) or (shard is not None and not shard.takes(job.index)):
                continue
            written = _render_job(renderer, job, defaults, output_dir, summary, skip_invalid)
            if progress is not None:
                progress.advance(job, written)
        summary.notes = list(renderer.notes)
    summary.seconds = time.perf_counter() - started
    return summary


def _render_job(renderer: Renderer, job: Job, defaults: BatchDefaults, output_dir: Path,
                summary: BatchSummary, skip_invalid: bool) -> list[Path]:
    targets = [output_dir / name for name in job.output_names()]
    if all(path.exists() for path in targets):
        summary.skipped_jobs += 1
        return []
    seed = job.seed if job.seed is not None else defaults.seed + job.index
    written = []
    for number, path in enumerate(targets):
        if path.exists():
            continue
        request = ImageRequest(
            prompt=job.prompt, seed=seed + number,
            negative=job.negative if job.negative is not None else defaults.negative,
            steps=job.steps or defaults.steps,
            guidance=job.guidance if job.guidance is not None else defaults.guidance,
            size=job.size or defaults.size, scheduler=job.scheduler or defaults.scheduler,
            beta=job.beta if job.beta is not None else defaults.beta,
            tau=job.tau if job.tau is not None else defaults.tau,
        )
        try:
            image, params = renderer.render(request)
        except PhubError as error:
            message = f"Job file line {job.line}: {error}"
            if not skip_invalid:
                raise type(error)(message) from None
            summary.invalid.append(message)
            return written
        written.append(renderer.save(image, params, path))
    summary.rendered_images += len(written)
    return written


def _entries(jobs: str | Path | Iterable[Any]):
    """A function returning a fresh iterator over validated entries (called once per pass)."""
    if isinstance(jobs, str | Path):
        path = Path(jobs)
        return lambda: read_jobs(path)
    items = list(jobs)

    def iterate() -> Iterator[Job | InvalidEntry]:
        for index, item in enumerate(items):
            if isinstance(item, Job):
                yield item
                continue
            try:
                yield job_from_entry(item, index, index + 1)
            except PromptError as error:
                yield InvalidEntry(index, index + 1, error)

    return iterate
