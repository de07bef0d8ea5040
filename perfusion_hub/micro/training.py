"""A small resumable training loop shared by the micro stages: budget, lr schedule, checkpoints."""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass(frozen=True)
class Budget:
    """When a stage stops: after `steps`, or after `minutes` of training time, whichever first."""

    minutes: float | None = None
    steps: int | None = None

    def fraction(self, step: int, elapsed_s: float) -> float:
        parts = []
        if self.steps:
            parts.append(step / self.steps)
        if self.minutes:
            parts.append(elapsed_s / (60.0 * self.minutes))
        return min(1.0, max(parts)) if parts else 1.0


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


T = TypeVar("T")


def data_workers(device: torch.device) -> int:
    """Processes that draw scenes ahead of training: none on a CPU, whose cores do the
    training, most of the host's cores beside a GPU (drawing scenes is what limits it)."""
    return 0 if device.type == "cpu" else max(1, min(14, (os.cpu_count() or 2) - 2))


class Prefetch(Generic[T]):
    """`batches[i]` is `make(i)`, computed up to `depth` indices ahead by `workers` processes
    (inline when 0); any index can be asked for, so a resumed loop just asks for its step.

    `make` must be picklable (a module-level function or a `functools.partial` of one).
    """

    def __init__(self, make: Callable[[int], T], workers: int, depth: int | None = None):
        self.make = make
        self.depth = depth or 3 * workers
        self.pending: dict[int, Future[T]] = {}
        self.pool = (
            ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            if workers > 0
            else None
        )

    def __getitem__(self, i: int) -> T:
        if self.pool is None:
            return self.make(i)
        for stale in [k for k in self.pending if not i <= k < i + self.depth]:
            self.pending.pop(stale).cancel()
        for k in range(i, i + self.depth):
            if k not in self.pending:
                self.pending[k] = self.pool.submit(self.make, k)
        return self.pending.pop(i).result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> Prefetch[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def optimiser_step(opt: torch.optim.Optimizer, model: torch.nn.Module, loss: torch.Tensor,
                   clip: float | None = 1.0) -> float:
    """Backpropagate `loss`, clip the gradient norm of `model` (unless `clip` is None), step;
    returns the loss value."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    return loss.item()


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on both CPU and CUDA (the micro models train well in it)."""
    return torch.autocast(device.type, dtype=torch.bfloat16)


def as_pixels(
    images: np.ndarray | torch.Tensor | Sequence[Image.Image], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """64×64 RGB images (uint8 HWC array, PIL list, or a tensor already in [-1, 1]) → float
    (B, 3, H, W) in [-1, 1], the input convention of every micro model."""
    if isinstance(images, torch.Tensor):
        return images.to(device).float()
    if not isinstance(images, np.ndarray):
        images = np.stack([np.asarray(im.convert("RGB")) for im in images])
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def warmup_cosine(
    peak: float, warmup_steps: int, floor: float = 0.05
) -> Callable[[int, float], float]:
    """lr(step, fraction of budget): linear warm-up, then cosine down to `floor`·peak."""

    def lr(step: int, frac: float) -> float:
        warm = min(1.0, (step + 1) / warmup_steps)
        return peak * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))

    return lr


def run_loop(
    name: str,
    modules: dict[str, torch.nn.Module],
    opt: torch.optim.Optimizer,
    step_fn: Callable[[int], float],
    budget: Budget,
    lr_fn: Callable[[int, float], float],
    ckpt: Path,
    save_every_s: float = 300.0,
    on_checkpoint: Callable[[], None] | None = None,
    show: bool = True,
) -> int:
    """Run `step_fn(step) -> loss` until the budget is spent; resumable from `ckpt`.

    Returns the number of steps done. Each step's randomness must derive from its index, so
    that a resumed run draws the same data as an uninterrupted one.
    """
    step, elapsed = 0, 0.0
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if ckpt.exists():
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        for key, mod in modules.items():
            mod.load_state_dict(state["modules"][key])
        opt.load_state_dict(state["opt"])
        step, elapsed = state["step"], state["elapsed"]

    def save() -> None:
        state = {
            "modules": {k: m.state_dict() for k, m in modules.items()},
            "opt": opt.state_dict(),
        }
        tmp = ckpt.with_suffix(".tmp")
        torch.save({**state, "step": step, "elapsed": elapsed}, tmp)
        tmp.replace(ckpt)
        if on_checkpoint:
            on_checkpoint()

    columns = (
        TextColumn(f"[bold]{name}"),
        BarColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    avg = None
    last_save = last_log = time.monotonic()
    with Progress(*columns, disable=not show) as bar:
        task = bar.add_task(name, total=1.0, info="")
        while (frac := budget.fraction(step, elapsed)) < 1.0:
            for group in opt.param_groups:
                group["lr"] = lr_fn(step, frac) * group.get("lr_scale", 1.0)
            t0 = time.monotonic()
            loss = step_fn(step)
            elapsed += time.monotonic() - t0
            step += 1
            avg = loss if avg is None else 0.98 * avg + 0.02 * loss
            bar.update(task, completed=frac, info=f"step {step} loss {avg:.4f}")
            if show and not bar.console.is_terminal and time.monotonic() - last_log > 60:
                bar.console.log(f"{name}: step {step} loss {avg:.4f} {100 * frac:.0f}%")
                last_log = time.monotonic()
            if time.monotonic() - last_save > save_every_s:
                save()
                last_save = time.monotonic()
        bar.update(task, completed=1.0)
    save()
    return step
