"""`phub history`: the render log kept in the registry."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, hub, print_json


def history(
    ctx: typer.Context,
    limit: Annotated[
        int, typer.Option("--limit", min=0, help="Show at most this many renders (0: all).")
    ] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List past renders, newest first."""
    records = hub(ctx).history(limit=limit or None)
    if as_json:
        print_json([record.to_json() for record in records])
        return
    if not records:
        console.print("No renders yet. Make one with `phub compose`.")
        return
    from rich.table import Table

    table = Table("id", "when", "prompt", "concepts", "seed", "output")
    for record in records:
        names = ", ".join(str(item.get("name", "?")) for item in record.concepts)
        table.add_row(str(record.id), record.created.astimezone().strftime("%Y-%m-%d %H:%M"),
                      record.prompt, names or "—", "—" if record.seed is None else str(record.seed),
                      str(record.output_path or "—"))
    console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add `history` to `app`."""
    app.command("history")(history)
