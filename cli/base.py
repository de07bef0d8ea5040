"""Base-model commands: `phub base add`, `phub base list`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, hub, print_json

base_app = typer.Typer(help="Register base models and their text statistics.",
                       no_args_is_help=True)


@base_app.command("add")
def add(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(
        help="Hub id, local diffusers folder, .safetensors/.ckpt checkpoint, or 'micro'.")],
    name: Annotated[str | None, typer.Option("--name", help="Name of the base.")] = None,
    captions: Annotated[Path | None, typer.Option(
        "--captions", help="Caption file (one per line) for the text statistics; default: the "
        "built-in corpus.")] = None,
    device: Annotated[str, typer.Option("--device", help="Device for the statistics.")] = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Register a base model and compute its text statistics C⁻¹."""
    from perfusion_hub.bases import read_captions

    corpus = read_captions(captions) if captions is not None else None
    record = hub(ctx).add_base(source, name=name, captions=corpus, device=device)
    if as_json:
        print_json(record.to_json())
        return
    console.print(f"Registered base [bold]{record.name}[/] ({record.architecture}, "
                  f"weights {record.fingerprint.weights_hash[:12]}, "
                  f"statistics {(record.covariance_hash or 'none')[:12]}).", highlight=False)


@base_app.command("list")
def list_bases(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List registered bases."""
    records = hub(ctx).bases()
    if as_json:
        print_json([record.to_json() for record in records])
        return
    if not records:
        console.print("No bases registered. Add one with `phub base add SOURCE`.")
        return
    from rich.table import Table

    table = Table("name", "architecture", "text width", "layers", "weights", "statistics",
                  "source")
    for record in records:
        table.add_row(record.name, record.architecture, str(record.fingerprint.text_width),
                      str(len(record.fingerprint.layers)), record.fingerprint.weights_hash[:12],
                      (record.covariance_hash or "—")[:12], record.source)
    console.print(table, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the `base` command group to `app`."""
    app.add_typer(base_app, name="base")
