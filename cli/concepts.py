"""Registry commands: list, show, import, export, rm, rename, verify."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
