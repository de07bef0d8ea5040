"""Evaluation commands: `phub eval CONCEPT` and `phub demo`."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from cli.common import console, err_console, hub, print_json
from perfusion_hub.evaluate.defaults import (
    DEFAULT_EVAL_SEEDS,
    DEFAULT_RENDERS,
    DEFAULT_SAMPLE_STEPS,
    DEFAULT_SEEDS,
    DEFAULT_STEPS,
    RENDER_BATCH,
)


class _Bar:
    """A rich progress bar on stderr fed with (done, total), shown from the first update on
    (so that it never overlaps the training bar of `phub demo`)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.bar: Any = None
        self.task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from perfusion_hub.progress import progress_bar

            self.bar = progress_bar(self.label, console=err_console)
            self.task = self.bar.add_task(self.label, total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@contextmanager
def _progress(enabled: bool, label: str) -> Iterator[_Bar | None]:
    """A `_Bar`, stopped on exit; None when disabled."""
    if not enabled:
        yield None
        return
    bar = _Bar(label)
    try:
        yield bar
    finally:
        bar.close()


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary_table(title: str, summaries: Sequence[Any], by_kind: bool = False) -> Table:
    """Fidelity, alignment, obeyed and instance-match means, one row per β (or β × kind)."""
    table = Table(title=title, title_justify="left")
    table.add_column("β", justify="right")
    if by_kind:
        table.add_column("prompts")
    for name in ("renders", "fidelity", "alignment", "obeyed", "instance"):
        table.add_column(name, justify="right")
    for s in summaries:
        kind = [s.kind] if by_kind else []
        table.add_row(f"{s.beta:.2f}", *kind, str(s.renders), _cell(s.fidelity),
                      _cell(s.alignment), _cell(s.obeyed), _cell(s.instance_match))
    return table


def print_report(report: Any, said: Collection[str] = ()) -> None:
    """The evaluation's tables, notes (but those in `said`) and output files."""
    console.print(summary_table(f"<{report.concept}> on {report.base} (judge: {report.judge})",
                                report.overall))
    headline = report.headline.beta
    console.print(summary_table(f"by prompt kind at β={headline:.2f}",
                                [s for s in report.by_kind if s.beta == headline], by_kind=True))
    for note in (n for n in report.notes if n not in said):
        console.print(f"[yellow]Note:[/] {note}", highlight=False, soft_wrap=True)
    console.print(f"results: {report.csv_path}", highlight=False, soft_wrap=True)
    if report.plot_path is not None:
        console.print(f"plot:    {report.plot_path}", highlight=False, soft_wrap=True)
    console.print(f"renders: {report.out_dir / 'images'}", highlight=False, soft_wrap=True)


def eval_command(
    ctx: typer.Context,
    concept: Annotated[str, typer.Argument(help="Registered concept to evaluate.",
                                           show_default=False)],
    base: Annotated[str | None, typer.Option(
        "--base", help="Base the concept is registered for (when several).")] = None,
    other: Annotated[str | None, typer.Option(
        "--with", help="A second concept for the two-concept prompts ({other}).")] = None,
    prompts: Annotated[Path | None, typer.Option(
        "--prompts", help="Prompt templates, one a line, '{}' for the concept, '{other}' for "
                          "--with (default: built-in templates for the base).")] = None,
    seeds: Annotated[int, typer.Option(
        "--seeds", help="Seeds per prompt (0..N-1).")] = DEFAULT_SEEDS,
    sweep: Annotated[str | None, typer.Option(
        "--sweep", help="β values, e.g. beta=0.5:0.8:4 (default: the concept's own β).")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", help="The concept's training images (default: the folder its training "
                         "recorded).")] = None,
    clip: Annotated[Path | None, typer.Option(
        "--clip", help="Local CLIP model folder for fidelity and text alignment (required "
                       "off the micro base, whose own CLIP and checker are the default).")] = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: <renders folder>/eval/CONCEPT).")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="Denoising steps (default: the base's).")] = None,
    guidance: Annotated[float | None, typer.Option(
        "--guidance", help="Guidance scale (default: the base's).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, ... (default: the best available).")] = None,
    batch: Annotated[int, typer.Option(
        "--batch", help="Seeds rendered together (lower it if memory runs out).")
    ] = RENDER_BATCH,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Measure a concept: fidelity to its training images and alignment with the prompt, over
    prompt templates × seeds × β; writes results.csv and a fidelity-vs-alignment plot."""
    with _progress(not as_json, "eval") as progress:
        report = hub(ctx).evaluate(
            concept, base=base, other=other, prompts=prompts, seeds=seeds, sweep=sweep,
            images=images, clip=clip, out=out, steps=steps, guidance=guidance, device=device,
            batch=batch, progress=progress)
    if as_json:
        print_json(report.to_json())
    else:
        print_report(report)


def demo_command(
    ctx: typer.Context,
    steps: Annotated[int, typer.Option(
        "--steps", help="Training steps per concept (batch 4).")] = DEFAULT_STEPS,
    renders: Annotated[int, typer.Option(
        "--renders", help="Images of the composed prompt (seeds 0..N-1).")] = DEFAULT_RENDERS,
    eval_seeds: Annotated[int, typer.Option(
        "--eval-seeds", help="Seeds per evaluation prompt.")] = DEFAULT_EVAL_SEEDS,
    sample_steps: Annotated[int | None, typer.Option(
        "--sample-steps", help="Denoising steps per render (default: the base's).")
    ] = DEFAULT_SAMPLE_STEPS,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Output folder (default: <home>/demo).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", help="cpu, cuda, ... (default: the best available).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """The whole job on the bundled micro base: make training images of two instances, train
    <my-cat> and <my-chair>, compose "a <my-cat> on a <my-chair>", evaluate."""
    from perfusion_hub.training import RichReporter, SilentReporter

    def say(line: str) -> None:
        if not as_json:
            err_console.print(line, highlight=False, soft_wrap=True)

    reporter = SilentReporter() if as_json else RichReporter(err_console)
    with _progress(not as_json, "eval") as progress:
        report = hub(ctx).demo(steps=steps, renders=renders, eval_seeds=eval_seeds,
                               sample_steps=sample_steps, out=out, device=device, say=say,
                               reporter=reporter, progress=progress)
    if as_json:
        print_json(report.to_json())
        return
    print_report(report.evaluation, said=report.notes)
    console.print(f"training images: {report.out_dir / 'data'}", highlight=False, soft_wrap=True)
    console.print(f"composed:        {', '.join(str(p) for p in report.renders)}",
                  highlight=False, soft_wrap=True)
    console.print(f"contact sheet:   {report.sheet}", highlight=False, soft_wrap=True)
    times = ", ".join(f"{k} {v:.0f} s" for k, v in report.seconds.items() if k != "total")
    console.print(f"time: {times}; total {report.seconds['total']:.0f} s", highlight=False,
                  soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("eval")(eval_command)
    app.command("demo")(demo_command)
