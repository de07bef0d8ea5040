"""Sampler choice: short names → diffusers schedulers, and back to A1111 sampler labels."""

from __future__ import annotations

import json
from typing import Any

from perfusion_hub.errors import PromptError

# name → (diffusers class, A1111 label, extra config)
SCHEDULERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", "DDIM", {}),
    "dpm": ("DPMSolverMultistepScheduler", "DPM++ 2M", {}),
    "euler": ("EulerDiscreteScheduler", "Euler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", "Euler a", {}),
    "pndm": ("PNDMScheduler", "PNDM", {"skip_prk_steps": True}),
}
SCHEDULER_NAMES = tuple(SCHEDULERS)


def check_scheduler_name(name: str) -> str:
    """Return `name` if it is a known sampler, else raise `PromptError` listing them."""
    if name not in SCHEDULERS:
        raise PromptError(f"Unknown scheduler {name!r}: use one of {', '.join(SCHEDULER_NAMES)}.")
    return name


def scheduler_class(class_name: str) -> type:
    """The diffusers scheduler class `class_name`; only scheduler classes are accepted."""
    import diffusers
    from diffusers import SchedulerMixin

    found = getattr(diffusers, class_name, None) if class_name.endswith("Scheduler") else None
    if not (isinstance(found, type) and issubclass(found, SchedulerMixin)):
        raise PromptError(f"{class_name!r} is not a diffusers scheduler class.")
    return found


def make_scheduler(name: str, base_config: Any):
    """The scheduler `name`, configured from the base's own scheduler config."""
    class_name, _, extra = SCHEDULERS[check_scheduler_name(name)]
    return scheduler_class(class_name).from_config(base_config, **extra)


def scheduler_from_spec(spec: dict[str, Any]):
    """Rebuild a scheduler exactly from `scheduler_spec` output (class name + full config)."""
    return scheduler_class(str(spec["class"])).from_config(dict(spec["config"]))


def scheduler_spec(scheduler: Any) -> dict[str, Any]:
    """Class name and full JSON config of `scheduler`: enough to rebuild it exactly."""
    config = json.loads(scheduler.to_json_string())
    config = {key: value for key, value in config.items() if not key.startswith("_")}
    return {"class": type(scheduler).__name__, "config": config}


def sampler_label(scheduler: Any) -> str:
    """A1111-style sampler label of a scheduler object (its class name if not one of ours)."""
    name = type(scheduler).__name__
    for class_name, label, _ in SCHEDULERS.values():
        if class_name == name:
            return label
    return name
