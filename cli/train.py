"""`phub train`: learn a concept from a folder of images and register it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.common import console, err_console, hub, print_json


def train(
    ctx: typer.Context,
    images: Annotated[Path, typer.Argument(help="Folder of 4-8 images (png, jpg, webp).")],
    name: Annotated[str, typer.Option("--name", help="Concept name; its token is <name>.")],
    superclass: Annotated[str, typer.Option(
        "--superclass", help="One-token word for what the concept is (cat, chair, ...).")],
    base: Annotated[str | None, typer.Option(
        "--base", help="Base name or source (default: $PHUB_DEFAULT_BASE, else micro).")] = None,
    steps: Annotated[int, typer.Option("--steps", help="Optimiser steps.")] = 400,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per pass.")] = 4,
    grad_accum: Annotated[int, typer.Option(
        "--grad-accum", help="Passes per step (effective batch = batch size × this).")] = 4,
    lr_embedding: Annotated[float, typer.Option(
        "--lr-embedding", help="Learning rate of the word embedding v*.")] = 0.006,
    lr_values: Annotated[float, typer.Option(
        "--lr-values", help="Learning rate of the value targets o*_V.")] = 0.03,
    weight_decay: Annotated[float, typer.Option(
        "--weight-decay", help="AdamW weight decay.")] = 0.0,
    max_embedding_norm: Annotated[float | None, typer.Option(
        "--max-embedding-norm", help="Keep ‖v*‖ at most this multiple of the superclass word "
        "embedding's norm (0: no limit; default: the base's, 1 on micro, else 0).")] = None,
    masks: Annotated[Path | None, typer.Option(
        "--masks", help="Folder of grayscale masks named like the images; weights the loss.")
    ] = None,
    lock: Annotated[str, typer.Option("--lock", help="Key locking: local or global.")] = "local",
    method: Annotated[str, typer.Option(
        "--method", help="perfusion, or a baseline for comparison: no-key-lock (keys learned "
        "like values) or textual-inversion (v* only).")] = "perfusion",
    seed: Annotated[int, typer.Option("--seed", help="Seed of all sampling.")] = 0,
    resolution: Annotated[int | None, typer.Option(
        "--resolution", help="Training resolution (default: the base's).")] = None,
    no_flip: Annotated[bool, typer.Option(
        "--no-flip", help="No horizontal flips (asymmetric objects).")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    preview_every: Annotated[int, typer.Option(
        "--preview-every", help="Render a preview PNG every N steps (0: never).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(
        "--checkpoint-every", help="Write a checkpoint every N steps (0: only on Ctrl-C).")] = 50,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the interrupted run of this name and base.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace a concept of this name on this base.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Train a Perfusion concept from a few images and register it."""
    from perfusion_hub.training import RichReporter, TrainingInterrupted

    try:
        result = hub(ctx).train(
            images, name=name, superclass=superclass, base=base, masks=masks, force=force,
            resume=resume, reporter=RichReporter(err_console), steps=steps,
            batch_size=batch_size, grad_accum=grad_accum, lr_embedding=lr_embedding,
            lr_values=lr_values, weight_decay=weight_decay,
            max_embedding_norm=max_embedding_norm, lock=lock, method=method, seed=seed,
            resolution=resolution, flip=not no_flip, device=device,
            preview_every=preview_every, checkpoint_every=checkpoint_every,
        )
    except TrainingInterrupted as stopped:
        err_console.print(
            f"Interrupted after step {stopped.step}; nothing was registered. The checkpoint is "
            f"in {stopped.checkpoint.parent}. Continue with the same command plus --resume.",
            highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:
        err_console.print("Interrupted before training started; nothing was saved.")
        raise typer.Exit(130) from None
    if as_json:
        print_json(result.to_json())
        return
    record = result.record
    console.print(
        f"Registered [bold]{record.name}[/] (token {record.token}, base {record.base_name}): "
        f"{record.size / 1024:.1f} KB, hash {record.content_hash[:12]}, "
        f"{result.seconds:.1f} s, final loss {result.final_loss:.4f}.", highlight=False)


def register(app: typer.Typer) -> None:
    """Add `phub train` to `app`."""
    app.command("train")(train)
