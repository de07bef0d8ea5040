"""`train_concept`: images → trained concept → registry, the path behind `Hub.train`.

Everything that can be refused is checked before the first step: options, the image folder,
the base, the name (already registered for that base unless `force`), the superclass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfusion_hub.errors import ConflictError, NotFoundError
from perfusion_hub.names import validate_name
from perfusion_hub.training.checkpoint import remove_checkpoint
from perfusion_hub.training.images import read_image_folder
from perfusion_hub.training.options import EMA_DECAY, TRAIN_BETA, TRAIN_TAU, TrainOptions
from perfusion_hub.training.progress import Reporter, SilentReporter
from perfusion_hub.training.prompts import superclass_token_id

KEYS = {"perfusion": "locked to W_K ī_super (never trained)",
        "no-key-lock": "learned like values (start W_K ī_super, lr of values)",
        "textual-inversion": "stock W_K (no edit)"}


@dataclass(frozen=True)
class TrainResult:
    """A registered, freshly trained concept."""

    record: Any
    concept: Any
    seconds: float
    final_loss: float
    checkpoint_dir: Path
    skipped: list[Path] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {**self.record.to_json(), "seconds": round(self.seconds, 2),
                "final_loss": self.final_loss, "checkpoint_dir": str(self.checkpoint_dir)}


def train_concept(hub: Any, images: str | Path, *, name: str, superclass: str,
                  base: str | None = None, masks: str | Path | None = None, force: bool = False,
                  resume: bool = False, reporter: Reporter | None = None,
                  on_step: Callable[[int, float], None] | None = None,
                  **options: Any) -> TrainResult:
    """Train concept `name` (token `<name>`) on the images in `images` and register it.

    `options` are the fields of `TrainOptions`. Raises `TrainingInterrupted` (a
    `KeyboardInterrupt`) on Ctrl-C after checkpointing; nothing is registered then.
    """
    from perfusion_hub.registry.bases import open_base
    from perfusion_hub.training.loop import resolve_device, train_loop

    reporter = reporter or SilentReporter()
    validate_name(name)
    settings = TrainOptions(**options)
    folder = read_image_folder(images, masks)
    for path in folder.skipped:
        reporter.message(f"[yellow]Skipping[/] {path.name}: not a png, jpg or webp image.")
    device, dtype = resolve_device(settings.device)
    loaded = open_base(hub.registry, hub.settings, base, device=device, dtype=dtype)
    if not force:
        _refuse_existing(hub.registry, name, loaded.name)
    superclass_token_id(loaded.pipe.tokenizer, superclass)
    checkpoints = hub.settings.checkpoints_dir / loaded.name / name
    reporter.message(f"Training <{name}> ({superclass}) on base {loaded.name!r} from "
                     f"{len(folder)} images, {settings.steps} steps on {device.type}.")
    result = train_loop(loaded, folder, name=name, superclass=superclass, options=settings,
                        folder=checkpoints, resume=resume, reporter=reporter, on_step=on_step)
    ran = result.options  # with the base's defaults filled in
    final = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    training = {
        "tool": "phub train",
        "options": {**ran.to_json(), "resolution": result.resolution},
        "images": [path.name for path in folder.paths],
        "images_dir": str(Path(images).expanduser().resolve()),
        "images_sha256": folder.digest,
        "masks": folder.masks is not None,
        "templates": list(result.templates),
        "steps": len(result.losses),
        "effective_batch": ran.batch_size * ran.grad_accum,
        "loss_first": result.losses[0] if result.losses else None,
        "loss_last10": final,
        "seconds": round(result.seconds, 2),
        "device": result.device,
        "precision": result.precision,
        "resumed_from": result.resumed_from,
        "method": {
            "train_beta": TRAIN_BETA, "train_tau": TRAIN_TAU, "ema_decay": EMA_DECAY,
            "target_input_gradient": False, "weight_decay": ran.weight_decay,
            "max_embedding_norm": ran.max_embedding_norm,
            "lock": ran.lock, "name": ran.method, "keys": KEYS[ran.method],
            "superclass_input": "superclass encoding at the concept position, first batch mean",
            "covariance_positions": _covariance_positions(hub.registry, loaded.name),
            "loss": "epsilon-MSE, uniform timesteps" + (", soft mask weight"
                                                        if folder.masks is not None else ""),
        },
    }
    concept = result.state.to_concept(loaded.fingerprint, loaded.covariance_hash, training)
    record = hub.registry.add(concept, replace=force)
    if record.name != name:  # the registry keeps one row per content hash
        reporter.message(f"[yellow]The trained tensors are identical to concept "
                         f"{record.name!r}[/] (same images, seed and options), which stays "
                         "registered under that name.")
    remove_checkpoint(checkpoints)
    return TrainResult(record, concept, result.seconds, final, checkpoints, folder.skipped)


def _refuse_existing(registry: Any, name: str, base: str) -> None:
    try:
        registry.get(name, base=base)
    except NotFoundError:
        return
    raise ConflictError(f"A concept named {name!r} is already registered for base {base!r}: "
                        "choose another --name, pass --force to replace it, or `phub rm "
                        f"{name}` first.")


def _covariance_positions(registry: Any, base: str) -> str | None:
    """Which token positions entered the base's C, as its statistics file records."""
    from perfusion_hub.bases.statistics import read_statistics

    path = registry.get_base(base).covariance_path
    return str(read_statistics(path)[1].get("positions")) if path is not None else None
