"""Composition commands: `phub compose PROMPT` and `phub render JOBS`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import console, err_console, hub, print_json

if TYPE_CHECKING:
    from perfusion_hub.compose.jobs import Job

BaseOption = Annotated[str | None, typer.Option(
    "--base", help="Base model (registered name or folder); default: the micro base.")]
NegativeOption = Annotated[str | None, typer.Option("--negative", help="Negative prompt.")]
StepsOption = Annotated[int | None, typer.Option(
    "--steps", help="Denoising steps (default: the base's).")]
GuidanceOption = Annotated[float | None, typer.Option(
    "--guidance", help="Classifier-free guidance scale (default: the base's).")]
SchedulerOption = Annotated[str | None, typer.Option(
    "--scheduler", help="ddim, dpm, euler, euler-a or pndm (default: the base's own sampler).")]
SizeOption = Annotated[str | None, typer.Option(
    "--size", help="Image size WxH (default: the base's resolution).")]
BetaOption = Annotated[float | None, typer.Option(
    "--beta", help="Gate bias β in [0, 1] for concepts without an inline override.")]
TauOption = Annotated[float | None, typer.Option(
    "--tau", help="Gate temperature τ in (0, 1] for concepts without an inline override.")]
DeviceOption = Annotated[str | None, typer.Option(
    "--device", help="cpu, cuda, cuda:1, mps (default: the best available).")]
DtypeOption = Annotated[str | None, typer.Option(
    "--dtype", help="float32, float16 or bfloat16 (default: the base's for the device).")]


def compose_command(
    ctx: typer.Context,
    prompt: Annotated[str | None, typer.Argument(
        help="Prompt; <name> inserts a registered concept, <name:beta=0.6,tau=0.2,lock=global> "
             "overrides its gate.", show_default=False)] = None,
    base: BaseOption = None,
    negative: NegativeOption = None,
    seed: Annotated[int | None, typer.Option(
        "--seed", help="Seed of the first image (image k uses seed + k); default: random.")] = None,
    num_images: Annotated[int | None, typer.Option(
        "--num-images", "-n", help="Images to render (default 1).")] = None,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    scheduler: SchedulerOption = None,
    size: SizeOption = None,
    beta: BetaOption = None,
    tau: TauOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="A .png file name, or a folder (default: the renders folder).")] = None,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    sweep: Annotated[list[str] | None, typer.Option(
        "--sweep", help="Grid over beta and/or tau, e.g. --sweep beta=0.5:0.8:4 "
                        "(same seeds everywhere; also writes a contact sheet).")] = None,
    from_png: Annotated[Path | None, typer.Option(
        "--from-png", help="Render a phub PNG again from its metadata (options given here "
                           "override its values).")] = None,
) -> None:
    """Render a prompt with registered concepts; print the paths of the saved PNGs."""
    images = hub(ctx).compose(
        prompt, base=base, negative=negative, seed=seed, num_images=num_images, steps=steps,
        guidance=guidance, scheduler=scheduler, size=size, beta=beta, tau=tau, out=out,
        device=device, dtype=dtype, sweep=list(sweep or []), from_png=from_png,
    )
    for note in images.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for path in images.paths:
        typer.echo(str(path))
    if images.sheet is not None:
        typer.echo(str(images.sheet))


class _RichProgress:
    """A rich progress bar fed by `render_jobs`."""

    def __init__(self) -> None:
        from perfusion_hub.progress import progress_bar

        self.bar = progress_bar("render", "{task.fields[job]}", console=console)
        self.task = None

    def start(self, total: int) -> None:
        self.task = self.bar.add_task("render", total=total, job="")

    def advance(self, job: Job, paths: list[Path]) -> None:
        self.bar.update(self.task, advance=1, job=job.stem + ("" if paths else " (exists)"))


def render_command(
    ctx: typer.Context,
    jobs: Annotated[Path, typer.Argument(
        help="Job file: JSONL (one entry a line) or YAML (a list); each entry a prompt or an "
             "object with prompt, name, seed, negative, steps, guidance, scheduler, size, beta, "
             "tau, num_images.", show_default=False)],
    base: BaseOption = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: <renders folder>/<job file name>).")] = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Base seed: a job without a seed uses seed + its index.")] = 0,
    negative: NegativeOption = None,
    steps: StepsOption = None,
    guidance: GuidanceOption = None,
    scheduler: SchedulerOption = None,
    size: SizeOption = None,
    beta: BetaOption = None,
    tau: TauOption = None,
    shard: Annotated[str | None, typer.Option(
        "--shard", help="Render only share i of n (i/n, 0 <= i < n); under `accelerate launch` "
                        "each process takes its own share automatically.")] = None,
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Skip invalid entries (reported at the end) instead of stopping.")
    ] = False,
    device: DeviceOption = None,
    dtype: DtypeOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Render a job file on one loaded base; existing outputs are skipped, so a killed batch
    resumes where it stopped."""
    progress = None if as_json else _RichProgress()
    options = dict(base=base, out=out, seed=seed, negative=negative, steps=steps,
                   guidance=guidance, scheduler=scheduler, size=size, beta=beta, tau=tau,
                   shard=shard, skip_invalid=skip_invalid, device=device, dtype=dtype,
                   progress=progress)
    if progress is None:
        summary = hub(ctx).render(jobs, **options)
    else:
        with progress.bar:
            summary = hub(ctx).render(jobs, **options)
    if as_json:
        print_json(summary.to_json())
        return
    share = f" (shard {summary.shard})" if summary.shard else ""
    console.print(
        f"{summary.jobs} jobs{share}: {summary.rendered_images} images rendered, "
        f"{summary.skipped_jobs} jobs already done, {len(summary.invalid)} invalid, "
        f"in {summary.seconds:.1f} s → {summary.output_dir}", highlight=False)
    for message in summary.invalid[:10]:
        console.print(f"  [yellow]skipped[/] {message}", highlight=False)
    if len(summary.invalid) > 10:
        console.print(f"  … and {len(summary.invalid) - 10} more", highlight=False)
    for note in summary.notes:
        console.print(f"  [yellow]note:[/] {note}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("compose")(compose_command)
    app.command("render")(render_command)
