"""Small option parsers shared by `phub compose`, `phub render` and `Hub.compose`."""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass

import numpy as np

from perfusion_hub.compose.prompt import check_beta, check_tau
from perfusion_hub.errors import PromptError

SWEEP_KEYS = ("beta", "tau")
MAX_SWEEP_POINTS = 64
MAX_SIDE = 4096
_SIZE = re.compile(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*")
_SWEEP = re.compile(r"\s*(\w+)\s*=\s*([^:]+):([^:]+):(\d+)\s*")


def parse_size(text: str) -> tuple[int, int]:
    """`WxH` → (width, height); both multiples of 8 (the VAE's usual factor) in [8, 4096]."""
    match = _SIZE.fullmatch(str(text))
    if not match:
        raise PromptError(f"Size {text!r} is not WxH, e.g. 64x64 or 512x768.")
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if not 8 <= side <= MAX_SIDE or side % 8:
            raise PromptError(
                f"Size {text!r}: each side must be a multiple of 8 between 8 and {MAX_SIDE}."
            )
    return width, height


def check_positive_int(value: object, what: str, upper: int | None = None) -> int:
    """`value` as an int ≥ 1 (and ≤ `upper`), else `PromptError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PromptError(f"{what} must be a whole number ≥ 1, not {value!r}.")
    if upper is not None and value > upper:
        raise PromptError(f"{what} must be at most {upper}, not {value}.")
    return value


def check_seed(value: object) -> int:
    """A seed: a whole number in [0, 2⁶³)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise PromptError(f"Seed must be a whole number between 0 and 2^63-1, not {value!r}.")
    return value


def check_guidance(value: object) -> float:
    """Classifier-free guidance scale: a finite number ≥ 0 (≤ 1 disables guidance)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1e4:
        raise PromptError(f"Guidance must be a number ≥ 0, not {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Sweep:
    """A grid over β and/or τ: every combination is rendered with the same seeds."""

    betas: tuple[float | None, ...] = (None,)
    taus: tuple[float | None, ...] = (None,)

    def points(self) -> list[tuple[float | None, float | None]]:
        """(β, τ) for every grid cell, β outer."""
        return list(itertools.product(self.betas, self.taus))

    @property
    def active(self) -> bool:
        return self.betas != (None,) or self.taus != (None,)


def parse_sweep(specs: list[str] | tuple[str, ...] | None) -> Sweep:
    """`["beta=0.5:0.8:4", "tau=0.1:0.2:2"]` → a `Sweep` (values from `start` to `stop`
    inclusive, `count` evenly spaced, each checked against its range)."""
    axes: dict[str, tuple[float, ...]] = {}
    for spec in specs or ():
        match = _SWEEP.fullmatch(spec)
        if not match:
            raise PromptError(
                f"Sweep {spec!r} is not key=start:stop:count, e.g. beta=0.5:0.8:4."
            )
        key, start_text, stop_text, count_text = match.groups()
        if key not in SWEEP_KEYS:
            raise PromptError(f"Sweep {spec!r}: unknown key {key!r}; use {', '.join(SWEEP_KEYS)}.")
        if key in axes:
            raise PromptError(f"Sweep over {key} is given twice.")
        try:
            start, stop = float(start_text), float(stop_text)
        except ValueError:
            raise PromptError(f"Sweep {spec!r}: start and stop must be numbers.") from None
        count = check_positive_int(int(count_text), f"Sweep {spec!r}: count", MAX_SWEEP_POINTS)
        values = tuple(round(float(v), 6) for v in np.linspace(start, stop, count))
        check = check_beta if key == "beta" else check_tau
        for value in values:
            check(value, f"sweep {key}")
        axes[key] = values
    sweep = Sweep(betas=axes.get("beta", (None,)), taus=axes.get("tau", (None,)))
    if len(sweep.points()) > MAX_SWEEP_POINTS:
        raise PromptError(f"A sweep may have at most {MAX_SWEEP_POINTS} grid points.")
    return sweep


@dataclass(frozen=True)
class Shard:
    """This process renders the jobs whose index ≡ `index` (mod `count`)."""

    index: int
    count: int

    def takes(self, job_index: int) -> bool:
        return job_index % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """`i/n` with 0 ≤ i < n (the same numbering as accelerate's process index)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise PromptError(
            f"Shard {text!r} is not i/n with 0 <= i < n, e.g. --shard 0/4 ... --shard 3/4."
        )
    return Shard(int(match[1]), int(match[2]))


def shard_from_environment() -> Shard | None:
    """The share of this process under `accelerate launch` (or torchrun): RANK of WORLD_SIZE,
    read from the environment so that no process group is started and no GPU is claimed."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
    except ValueError:
        return None
    if world <= 1 or not 0 <= rank < world:
        return None
    return Shard(rank, world)


def default_device() -> str:
    """This process's GPU under a multi-process launcher (LOCAL_RANK), else the first GPU if
    there is one, else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    if shard_from_environment() is not None and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}"
    return "cuda"


DTYPES = ("float32", "float16", "bfloat16")


def torch_dtype(name: str | None):
    """`float32` | `float16` | `bfloat16` → the torch dtype (None → float32)."""
    import torch

    name = name or "float32"
    if name not in DTYPES:
        raise PromptError(f"Unknown dtype {name!r}: use one of {', '.join(DTYPES)}.")
    return getattr(torch, name)
