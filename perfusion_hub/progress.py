"""The one progress bar of perfusion-hub: label, bar, done/total, elapsed, time left."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_bar(label: str, *fields: str, console: Console | None = None,
                 transient: bool = False) -> Progress:
    """A rich `Progress` with the standard columns, then one text column per entry of `fields`
    (rich format strings such as "loss {task.fields[loss]}")."""
    return Progress(
        TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), *(TextColumn(field) for field in fields),
        console=console or Console(stderr=True), transient=transient,
    )
