"""`phub micro train-base`: rebuild the bundled micro base (users never need to)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, print_json, state

micro_app = typer.Typer(help="The micro world: rebuild its bundled base model.",
                        no_args_is_help=True)


def parse_budgets(values: list[str], cast: type[int] | type[float], option: str,
                  stages: tuple[str, ...]) -> dict[str, int | float]:
    """`["unet=5000", "clip=500"]` → `{"unet": 5000, "clip": 500}`; a usage error otherwise."""
    budgets: dict[str, int | float] = {}
    for value in values:
        stage, sep, amount = value.partition("=")
        try:
            number = cast(amount)
            if not sep or stage not in stages or not 0 < number < math.inf:
                raise ValueError
        except ValueError:
            raise typer.BadParameter(
                f"{value!r} is not STAGE=NUMBER with a positive NUMBER and STAGE one of "
                f"{', '.join(stages)} (e.g. {option} unet=5000)", param_hint=option) from None
        budgets[stage] = number
    return budgets


@micro_app.command("train-base")
def train_base(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Work folder (default: <home>/micro-base); a run resumes from it.")] = None,
    stage: Annotated[list[str] | None, typer.Option(
        "--stage", help="Stage to run, repeatable: clip, vae, unet, decoder, checker "
        "(default: all).")
    ] = None,
    steps: Annotated[list[str] | None, typer.Option(
        "--steps", help="Step budget of a stage, STAGE=N, repeatable (default: the recipe's).")
    ] = None,
    minutes: Annotated[list[str] | None, typer.Option(
        "--minutes", help="Time cap of a stage, STAGE=MINUTES, repeatable (its step budget "
        "still applies).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the whole recipe.")] = 0,
    fresh: Annotated[bool, typer.Option(
        "--fresh", help="Retrain the chosen stages from scratch, ignoring earlier results.")
    ] = False,
    install: Annotated[bool, typer.Option(
        "--install", help="Copy the finished base into the package (the bundled micro base).")
    ] = False,
    unet_from: Annotated[Path | None, typer.Option(
        "--unet-from", help="Fine-tune the UNet of this pipeline folder (e.g. an earlier "
        "run's <work>/pipeline) instead of training one from scratch.")] = None,
    tiny: Annotated[bool, typer.Option("--tiny", help="Tiny models: a smoke test.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Train the micro base: CLIP, VAE, UNet, VAE decoder and checker; seeded, resumable."""
    from perfusion_hub.micro.assets import install_assets
    from perfusion_hub.micro.recipe import STAGES
    from perfusion_hub.micro.recipe import train_base as run_recipe
    from perfusion_hub.settings import Settings

    step_budgets = parse_budgets(steps or [], int, "--steps", STAGES)
    minute_caps = parse_budgets(minutes or [], float, "--minutes", STAGES)
    for chosen in stage or []:
        if chosen not in STAGES:
            raise typer.BadParameter(f"{chosen!r} is not one of {', '.join(STAGES)}",
                                     param_hint="--stage")
    work = out or Settings.resolve(state(ctx).home).home / "micro-base"
    report = run_recipe(work, stages=tuple(stage or STAGES), steps=step_budgets,
                        minutes=minute_caps, device=None if device == "auto" else device,
                        resume=not fresh, seed=seed, tiny=tiny, show=not as_json,
                        unet_from=unet_from)
    sizes = install_assets(work, progress=not as_json) if install else None
    if as_json:
        print_json({"work": str(work), "report": report, "installed_bytes": sizes})
        return
    for name, info in report.items():
        console.print(f"[bold]{name}[/]: {info}", highlight=False)
    console.print(f"Pipeline folder: {work / 'pipeline'}", highlight=False)
    if sizes is not None:
        console.print(f"Installed into the package: {sizes} bytes", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `micro` command group to `app`."""
    app.add_typer(micro_app, name="micro")
