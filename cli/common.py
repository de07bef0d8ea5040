"""Shared pieces of the CLI: the console, the Hub of the current invocation, error handling."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from perfusion_hub.errors import PhubError

console = Console()
err_console = Console(stderr=True)


@dataclass
class CliState:
    """Global options, stored on the Click context."""

    home: Path | None = None
    verbose: bool = False

    def hub(self):
        """The Hub for this invocation (imported lazily to keep `phub --help` fast)."""
        from perfusion_hub.api import Hub

        return Hub(home=self.home)


def state(ctx: typer.Context) -> CliState:
    """The global options of the running command."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState()
    return root.obj


def hub(ctx: typer.Context):
    """Shortcut: the Hub of the running command."""
    return state(ctx).hub()


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, no colour, no wrapping. A list is
    written one compact item per line (the C encoder: fast for long listings)."""
    if isinstance(data, list):
        encode = json.JSONEncoder(default=str).encode
        typer.echo("[" + ",\n ".join(map(encode, data)) + "]")
    else:
        typer.echo(json.dumps(data, indent=2, default=str))


class PhubGroup(TyperGroup):
    """Root command group: a `PhubError` becomes one red line and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PhubError as error:
            if isinstance(ctx.obj, CliState) and ctx.obj.verbose:
                err_console.print(traceback.format_exc(), markup=False, highlight=False)
            err_console.print(f"[bold red]Error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
