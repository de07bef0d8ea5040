"""Training checkpoints: one safetensors file holding every tensor (concept state, AdamW
moments, the sampling generator's state) and, in its header, a JSON record of the rest.

Written atomically, so an interrupted write leaves the previous checkpoint intact. Nothing is
pickled: resuming reads plain tensors and JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from perfusion_hub.errors import TrainingError
from perfusion_hub.files import atomic_write_bytes

CHECKPOINT_FILE = "checkpoint.safetensors"
FORMAT = 1
_META = "phub_training"


@dataclass
class Checkpoint:
    """The run after `step` completed optimiser steps."""

    step: int
    state: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    generator: torch.Tensor
    record: dict[str, Any] = field(default_factory=dict)


def checkpoint_path(folder: Path) -> Path:
    return folder / CHECKPOINT_FILE


def save_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Write `checkpoint` to `folder/checkpoint.safetensors` (atomic)."""
    tensors = {f"state.{k}": v.detach().cpu().contiguous() for k, v in checkpoint.state.items()}
    for index, moments in checkpoint.optimizer.items():
        for key, value in moments.items():
            tensors[f"optimizer.{index}.{key}"] = value.detach().cpu().contiguous()
    tensors["generator"] = checkpoint.generator.cpu()
    record = {"format": FORMAT, "step": checkpoint.step, **checkpoint.record}
    path = checkpoint_path(folder)
    atomic_write_bytes(path, save_tensors(tensors, metadata={_META: json.dumps(record)}))
    return path


def load_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in `folder`, or None when there is none."""
    path = checkpoint_path(folder)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            record = json.loads((handle.metadata() or {})[_META])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise TrainingError(f"{path}: unreadable checkpoint ({error}); delete it and train "
                            "without --resume.") from error
    if record.pop("format", None) != FORMAT:
        raise TrainingError(f"{path}: checkpoint of another format (this version writes "
                            f"{FORMAT}); delete it and train without --resume.")
    state: dict[str, torch.Tensor] = {}
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            state[key.removeprefix("state.")] = value
        elif key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer.setdefault(int(index), {})[name] = value
    return Checkpoint(int(record.pop("step")), state, optimizer, tensors["generator"], record)


def remove_checkpoint(folder: Path) -> None:
    """Delete the checkpoint file (after its concept was registered); previews stay."""
    checkpoint_path(folder).unlink(missing_ok=True)
