"""Registry commands: list, show, import, export, rm, rename, verify."""

from __future__ import annotations

import datetime as dt
import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.common import console, err_console, hub, print_json

if TYPE_CHECKING:
    from perfusion_hub.registry import ConceptSummary

BaseOption = Annotated[
    str | None, typer.Option("--base", help="Base model name (when several bases use the name).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def list_concepts(
    ctx: typer.Context,
    base: Annotated[str | None, typer.Option("--base", help="Only concepts of this base.")] = None,
    superclass: Annotated[
        str | None, typer.Option("--superclass", help="Only concepts of this superclass.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """List registered concepts."""
    with _collector_paused():
        records = hub(ctx).list(base=base, superclass=superclass)
        if as_json:
            print_json([record.to_json() for record in records])
            return
    if not records:
        console.print("No concepts registered. Add one with `phub import FILE` or `phub train`.")
        return
    from rich.table import Table

    table = Table("name", "token", "superclass", "base", "lock", "β", "τ", "size", "created")
    for record in records:
        table.add_row(record.name, record.token, record.superclass, record.base_name, record.lock,
                      f"{record.beta:g}", f"{record.tau:g}", _size(record.size),
                      _when(record.created))
    console.print(table)


def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Concept name.")],
    base: BaseOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one concept: identity, defaults, training configuration and metrics."""
    record = hub(ctx).get(name, base=base)
    if as_json:
        print_json(record.to_json())
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in record.to_json().items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "—"
        elif isinstance(value, list):
            value = ", ".join(map(str, value)) or "—"
        table.add_row(key, str(value))
    console.print(table, highlight=False)


def import_files(
    ctx: typer.Context,
    files: Annotated[list[Path], typer.Argument(help="Concept files (.safetensors).")],
    name: Annotated[
        str | None, typer.Option("--name", help="Register under this name (one file only).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a different concept of the same name.")
    ] = False,
) -> None:
    """Copy concept files into the store and register them."""
    from perfusion_hub.errors import PhubError

    if name is not None and len(files) > 1:
        raise typer.BadParameter("can only be used with a single file.", param_hint="--name")
    the_hub = hub(ctx)
    failures = 0
    for path in files:
        started = dt.datetime.now(dt.timezone.utc)
        try:
            record = the_hub.import_file(path, name, replace=force)
        except PhubError as error:
            if len(files) == 1:
                raise
            failures += 1
            err_console.print(f"[bold red]Error:[/] {error}", highlight=False)
            continue
        if record.updated < started:
            console.print(f"{path}: already registered as {_label(record)} (same content).",
                          highlight=False)
        else:
            console.print(f"Imported {_label(record)} from {path} ({_size(record.size)}).",
                          highlight=False)
    if failures:
        err_console.print(f"{failures} of {len(files)} files were not imported.")
        raise typer.Exit(1)


def export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Concept name.")],
    dest: Annotated[Path, typer.Argument(help="Destination file, or a folder.")],
    base: BaseOption = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a registered concept to a file."""
    path = hub(ctx).export(name, dest, base=base, overwrite=force)
    console.print(f"Exported {name!r} to {path}.", highlight=False)


def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Concept name.")],
    base: BaseOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Unregister a concept and delete its stored file."""
    from perfusion_hub.errors import PhubError

    the_hub = hub(ctx)
    record = the_hub.get(name, base=base)
    if not yes:
        try:
            confirmed = typer.confirm(f"Remove {_label(record)}?", default=False)
        except typer.Abort:
            raise PhubError(f"Not removing {_label(record)} without confirmation: "
                            "pass --yes.") from None
        if not confirmed:
            err_console.print("Nothing removed.")
            raise typer.Exit(1)
    the_hub.remove(record.name, base=record.base_name)
    console.print(f"Removed {_label(record)}.", highlight=False)


def rename(
    ctx: typer.Context,
    old: Annotated[str, typer.Argument(help="Current name.")],
    new: Annotated[str, typer.Argument(help="New name.")],
    base: BaseOption = None,
) -> None:
    """Rename a concept (its token follows; its identity does not change)."""
    record = hub(ctx).rename(old, new, base=base)
    console.print(f"Renamed {old!r} to {_label(record)}; prompts now use {record.token}.",
                  highlight=False)


def verify(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """Re-hash every stored concept file; exit 1 if any is missing or corrupt."""
    report = hub(ctx).verify()
    if as_json:
        print_json(report.to_json())
    else:
        for label in report.missing:
            err_console.print(f"[bold red]missing[/] {label}: {report.reasons[label]}",
                              highlight=False)
        for label in report.corrupt:
            err_console.print(f"[bold red]corrupt[/] {label}: {report.reasons[label]}",
                              highlight=False)
        console.print(f"{len(report.ok)} ok, {len(report.missing)} missing, "
                      f"{len(report.corrupt)} corrupt.")
    if not report.healthy:
        raise typer.Exit(1)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a listing builds many small acyclic
    objects (rows, records, dicts): over 10,000 concepts it would otherwise run dozens of
    collections that free nothing, about a quarter of the command's time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _label(record: ConceptSummary) -> str:
    return f"{record.name!r} (base {record.base_name}, {record.content_hash[:12]})"


def _size(size: int) -> str:
    return f"{size / 1024:.1f} KB"


def _when(moment: dt.datetime) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M")


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("list")(list_concepts)
    app.command("show")(show)
    app.command("import")(import_files)
    app.command("export")(export)
    app.command("rm")(remove)
    app.command("rename")(rename)
    app.command("verify")(verify)
