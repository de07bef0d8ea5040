"""Database commands: `phub db upgrade`, `phub db current`."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.common import console, hub, print_json

db_app = typer.Typer(help="The registry database: schema revision and upgrades.",
                     no_args_is_help=True)


@db_app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Upgrade the registry schema to the newest revision (backing up SQLite first)."""
    before, after, backup = hub(ctx).upgrade_database()
    if before == after:
        console.print(f"Already at revision {after}.")
        return
    console.print(f"Upgraded the registry from {before or 'empty'} to {after}.")
    if backup is not None:
        console.print(f"Backup of the previous database: {backup}", highlight=False)


@db_app.command("current")
def current(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the schema revision of the registry and the one this version writes."""
    the_hub = hub(ctx)
    revision, head = the_hub.database_revision()
    if as_json:
        print_json({"database": the_hub.settings.database_url, "current": revision, "head": head,
                    "up_to_date": revision == head})
        return
    state = "up to date" if revision == head else "run `phub db upgrade`"
    console.print(f"{the_hub.settings.database_url}: revision {revision or 'none (empty)'}, "
                  f"head {head} ({state}).", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `db` command group to `app`."""
    app.add_typer(db_app, name="db")
