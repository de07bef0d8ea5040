"""Entry point of the `phub` command. Each command group lives in its own module."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated

import typer

from cli import base, compose, concepts, db, evaluate, history, micro, train
from cli.common import CliState, PhubGroup

app = typer.Typer(
    cls=PhubGroup,
    name="phub",
    help="Perfusion personalization: train, register and compose key-locked concepts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="Home directory (default: $PHUB_HOME, else the user data dir)."
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks.")] = False,
) -> None:
    """Perfusion personalization: train, register and compose key-locked concepts."""
    ctx.obj = CliState(home=home, verbose=verbose)


concepts.register(app)
base.register(app)
compose.register(app)
db.register(app)
history.register(app)
evaluate.register(app)
micro.register(app)
train.register(app)


def run() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # Exiting: spare the collector a last walk over every object the libraries created
        # (a tenth of a second for `phub list`); memory goes back to the OS either way.
        gc.freeze()
