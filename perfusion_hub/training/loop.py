"""The optimisation of method.md §5 on one loaded base: v* and o*_V learn, all else is frozen.

Per optimiser step (effective batch B = batch_size × grad_accum):
    sample B (template, image, flip, timestep, noise) from one seeded generator
    i* ← 0.99 · i* + 0.01 · mean_b enc(prompt_b)[concept position]      (before use)
    loss = mean ‖ε − ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε, t, enc(prompt))‖²  (× soft mask weight)
    AdamW on {v* (lr 0.006), o*_V (lr 0.03)}, the gated edit (β 0.75, τ 0.10) installed.
Baselines (`options.method`): "no-key-lock" trains o*_K in the o*_V group; "textual-inversion"
trains v* alone (no edit is installed, only its token).
Mixed precision: the frozen base runs in the dtype it was loaded in (bf16 on CUDA, fp16 with a
gradient scaler where bf16 is missing), while v*, o*_V, i*, the loss and the edit's similarities
stay float32. (No autocast: it would run the edit's fp32 similarities in half precision.)
The base's token embedding matrix is never written: `apply` gives the text encoder a longer
copy whose concept row reads v* live (a forward hook), so the gradient reaches v* alone. With
global locking the key path reads the prompt with the superclass word in the token's place.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from perfusion_hub.errors import TrainingError
from perfusion_hub.perfusion.state import ConceptState
from perfusion_hub.training.checkpoint import (
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from perfusion_hub.training.images import ImageFolder, to_tensors
from perfusion_hub.training.options import EMA_DECAY, TRAIN_BETA, TRAIN_TAU, TrainOptions
from perfusion_hub.training.progress import Reporter
from perfusion_hub.training.prompts import (
    fill,
    superclass_token_id,
    token_positions,
    tokenize,
    training_templates,
)

# Options that may change when a run resumes: they do not change what is learned.
RESUMABLE_CHANGES = ("steps", "device", "preview_every", "checkpoint_every", "batch_size",
                     "grad_accum")
PREVIEW_STEPS = 25


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: the run was checkpointed after `step` steps; nothing registered."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


@dataclass
class LoopResult:
    """A finished run: the trained state, the options it ran with (the base's defaults
    filled in) and what happened."""

    state: ConceptState
    options: TrainOptions
    templates: tuple[str, ...]
    resolution: int
    losses: list[float]
    seconds: float
    resumed_from: int
    precision: str
    device: str


def resolve_device(choice: str) -> tuple[torch.device, torch.dtype]:
    """(device, weight dtype): CUDA runs in bf16 (fp16 without bf16 support), CPU in fp32."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda: no CUDA GPU is available here; use --device cpu.")
    if choice == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu"), torch.float32
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.device("cuda"), dtype


def train_loop(loaded: Any, images: ImageFolder, *, name: str, superclass: str,
               options: TrainOptions, folder: Path, resume: bool, reporter: Reporter,
               on_step: Callable[[int, float], None] | None = None) -> LoopResult:
    """Train one concept on `loaded` (a `LoadedBase` opened on the run's device and dtype).

    Writes checkpoints to `folder`; Ctrl-C checkpoints the last completed step and raises
    `TrainingInterrupted`. `on_step(step, loss)` is called after each completed step.
    """
    from diffusers import DDPMScheduler

    from perfusion_hub.perfusion import apply

    started = time.perf_counter()
    options = options.for_base(loaded.options)
    pipe = loaded.pipe
    device = pipe.unet.device
    for module in (pipe.text_encoder, pipe.unet, pipe.vae):
        module.requires_grad_(False).eval()
    half = pipe.unet.dtype if pipe.unet.dtype != torch.float32 else None
    resolution = options.resolution or int(loaded.resolution)
    superclass_id = superclass_token_id(pipe.tokenizer, superclass)
    templates = training_templates(loaded.train_templates, pipe.tokenizer, superclass_id)
    generator = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    data = _Latents.encode(pipe.vae, images, resolution, device)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    identity = {"name": name, "superclass": superclass, "data": images.digest,
                "base": loaded.fingerprint.weights_hash, "templates": list(templates),
                "resolution": resolution}

    checkpoint = load_checkpoint(folder) if resume else None
    if resume and checkpoint is None:
        reporter.message(f"No checkpoint in {folder}: starting from step 0.")
    elif not resume and checkpoint_path(folder).is_file():
        reporter.message(f"Starting over: the checkpoint of an earlier run in {folder} will be "
                         "replaced (--resume continues it instead).")
    if checkpoint is not None:
        _check_resumable(checkpoint, identity, options)
        state = _state_from(checkpoint, pipe.unet, superclass_id, superclass, name, options.lock,
                            options.method)
        generator.set_state(checkpoint.generator)
    else:
        plain = _TextEncoder(pipe.tokenizer, pipe.text_encoder, device)
        state = _initial_state(plain, pipe.unet, templates, name, superclass, superclass_id,
                               options, generator)
    state.to(device)
    groups = [{"params": [state.word_embedding], "lr": options.lr_embedding}]
    if state.edits:  # o*_V, and o*_K without key-locking
        groups.append({"params": state.output_targets(), "lr": options.lr_values})
    optimizer = torch.optim.AdamW(groups, weight_decay=options.weight_decay)
    superclass_norm = float(pipe.text_encoder.get_input_embeddings().weight[superclass_id].norm())
    embedding_limit = options.max_embedding_norm * superclass_norm
    completed = 0
    losses: list[float] = []
    elapsed_before = 0.0
    if checkpoint is not None:
        _load_optimizer(optimizer, checkpoint.optimizer, device)
        completed = checkpoint.step
        losses = list(checkpoint.record.get("losses", []))
        elapsed_before = float(checkpoint.record.get("seconds", 0.0))
        reporter.message(f"Resuming from step {completed} ({folder}).")
    scaler = torch.amp.GradScaler(device.type) if half == torch.float16 else None
    resumed_from = completed

    def save() -> Path:
        record = {**identity, "options": options.to_json(), "losses": losses,
                  "seconds": elapsed_before + time.perf_counter() - started}
        moments = {index: dict(values) for index, values in
                   enumerate(optimizer.state[p] for group in optimizer.param_groups
                             for p in group["params"]) if values}
        return save_checkpoint(folder, Checkpoint(completed, dict(state.state_dict()), moments,
                                                  generator.get_state(), record))

    with apply(pipe, [state], loaded.inverse_covariance, beta=TRAIN_BETA, tau=TRAIN_TAU) as edit:
        token_id = int(edit.token_ids[0])
        text = _TextEncoder(edit.tokenizer, pipe.text_encoder, device)
        reporter.start(options.steps, completed)
        try:
            while completed < options.steps:
                rollback = (generator.get_state(), state.target_input.detach().clone())
                try:
                    loss = _step(state, text, pipe.unet, data, scheduler, optimizer, scaler,
                                 templates, token_id, options, generator)
                except BaseException:
                    generator.set_state(rollback[0])
                    with torch.no_grad():
                        state.target_input.copy_(rollback[1])
                    raise
                with _deferred_interrupt():
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if embedding_limit:
                        _cap_norm_(state.word_embedding, embedding_limit)
                    completed += 1
                    losses.append(loss)
                reporter.advance(completed, loss)
                if options.checkpoint_every and completed % options.checkpoint_every == 0:
                    save()
                if options.preview_every and completed % options.preview_every == 0:
                    _preview(pipe, edit, state, templates, folder / f"preview-{completed:06d}.png",
                             resolution, options.seed, loaded.options)
                if on_step is not None:
                    on_step(completed, loss)
            save()
        except KeyboardInterrupt:
            path = save()
            raise TrainingInterrupted(completed, path) from None
        except torch.OutOfMemoryError as error:
            path = save()
            raise TrainingError(
                f"The GPU ran out of memory at batch size {options.batch_size}. Use a smaller "
                f"--batch-size with a larger --grad-accum (e.g. --batch-size "
                f"{max(1, options.batch_size // 2)} --grad-accum {options.grad_accum * 2}) and "
                f"add --resume to continue from step {completed} ({path})."
            ) from error
        finally:
            reporter.stop()
    return LoopResult(state.cpu(), options, templates, resolution, losses,
                      elapsed_before + time.perf_counter() - started, resumed_from,
                      str(half or torch.float32).removeprefix("torch."), device.type)


@torch.no_grad()
def _cap_norm_(vector: torch.Tensor, limit: float) -> None:
    """Scale `vector` down, in place, to norm `limit` when it is longer."""
    norm = float(vector.norm())
    if norm > limit:
        vector.mul_(limit / norm)


def _step(state: ConceptState, text: _TextEncoder, unet: nn.Module, data: _Latents,
          scheduler: Any, optimizer: torch.optim.Optimizer, scaler: Any,
          templates: tuple[str, ...], token_id: int,
          options: TrainOptions, generator: torch.Generator) -> float:
    """One optimiser step's forward/backward passes; returns the mean loss (grads are set)."""
    size = options.batch_size * options.grad_accum
    batch = data.sample(size, options.flip, scheduler.config.num_train_timesteps, generator,
                        len(templates))
    prompts = [fill(templates[i], state.token) for i in batch["template"].tolist()]
    ids = tokenize(text.tokenizer, prompts)
    positions = token_positions(ids, token_id, prompts)
    with torch.no_grad():
        concept = text.concept_rows(ids, positions).mean(0)
    state.target_input.mul_(EMA_DECAY).add_(concept, alpha=1 - EMA_DECAY)  # i* EMA, before use
    key_ids = None
    if state.lock == "global":  # the key path reads the superclass prompt (method.md §3)
        key_ids = tokenize(text.tokenizer, [fill(templates[i], state.superclass)
                                            for i in batch["template"].tolist()])

    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for part in torch.arange(size).split(options.batch_size):
        extra = None
        if key_ids is not None:
            with torch.no_grad():
                extra = {"key_encoder_hidden_states": text(key_ids[part])}
        encoding = text(ids[part])
        noisy, target, timesteps, weight = data.noisy(batch, part, scheduler)
        prediction = unet(noisy.to(unet.dtype), timesteps, encoder_hidden_states=encoding,
                          cross_attention_kwargs=extra).sample
        error = (prediction.float() - target.float()).square()
        loss = (error * weight).mean() if weight is not None else error.mean()
        scaled = loss / options.grad_accum
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += float(loss.detach()) * len(part) / size
    if scaler is not None:
        scaler.unscale_(optimizer)
    return total


class _TextEncoder:
    """Prompt ids → text encoding (the pipeline's last hidden state), on the run's device."""

    def __init__(self, tokenizer: Any, text_encoder: nn.Module, device: torch.device) -> None:
        self.tokenizer = tokenizer
        self.encoder = text_encoder
        self.device = device

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(ids.to(self.device))[0]

    def concept_rows(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The encoding at each prompt's concept position, float32 (B, d)."""
        encoding = self(ids)
        return encoding[torch.arange(len(ids)), positions.to(encoding.device)].float()


@dataclass
class _Latents:
    """VAE latent distributions of every image and its mirror image, computed once.

    Index i < N is image i, N + i its horizontal flip. A latent is drawn per use as
    (mean + std · ξ) · scaling_factor, ξ from the run's generator.
    """

    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor | None
    scaling: float
    count: int

    @classmethod
    def encode(cls, vae: nn.Module, images: ImageFolder, resolution: int,
               device: torch.device) -> _Latents:
        tensors = to_tensors(images, resolution)
        pixels = torch.cat([tensors.pixels, tensors.pixels.flip(-1)])
        means, stds = [], []
        with torch.no_grad():
            for chunk in pixels.split(8):
                dist = vae.encode(chunk.to(device, vae.dtype)).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        mean, std = torch.cat(means), torch.cat(stds)
        weights = None
        if tensors.masks is not None:
            masks = torch.cat([tensors.masks, tensors.masks.flip(-1)]).to(device)
            weights = F.interpolate(masks, size=mean.shape[-2:], mode="area")
            weights = weights / weights.mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return cls(mean, std, weights, float(vae.config.scaling_factor), len(images))

    def sample(self, size: int, flip: bool, timesteps: int, generator: torch.Generator,
               templates: int) -> dict[str, torch.Tensor]:
        """Everything random in one optimiser step, drawn in a fixed order."""
        shape = (size, *self.mean.shape[1:])
        image = torch.randint(self.count, (size,), generator=generator)
        flipped = torch.rand(size, generator=generator) < 0.5
        return {
            "template": torch.randint(templates, (size,), generator=generator),
            "source": image + self.count * (flipped & flip),
            "timesteps": torch.randint(timesteps, (size,), generator=generator),
            "noise": torch.randn(shape, generator=generator),
            "latent_noise": torch.randn(shape, generator=generator),
        }

    def noisy(self, batch: dict[str, torch.Tensor], part: torch.Tensor, scheduler: Any
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(noisy latents, regression target, timesteps, loss weight) of one micro-batch."""
        device = self.mean.device
        source = batch["source"][part].to(device)
        noise = batch["noise"][part].to(device)
        timesteps = batch["timesteps"][part].to(device)
        latents = (self.mean[source] + self.std[source] * batch["latent_noise"][part].to(device))
        latents = latents * self.scaling
        noisy = scheduler.add_noise(latents, noise, timesteps)
        if scheduler.config.prediction_type == "v_prediction":
            target = scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        weight = self.weights[source] if self.weights is not None else None
        return noisy, target, timesteps, weight


def _initial_state(text: _TextEncoder, unet: nn.Module, templates: tuple[str, ...], name: str,
                   superclass: str, superclass_id: int, options: TrainOptions,
                   generator: torch.Generator) -> ConceptState:
    """v* = the superclass embedding; ī_super = mean superclass encoding at the concept position
    over a first batch of prompts (superclass word in the token's place); i* = ī_super and
    o*_V = W_V ī_super (method.md §5)."""
    size = options.batch_size * options.grad_accum
    chosen = torch.randint(len(templates), (size,), generator=generator).tolist()
    prompts = [fill(templates[i], superclass) for i in chosen]
    ids = tokenize(text.tokenizer, prompts)
    with torch.no_grad():
        superclass_input = text.concept_rows(ids, token_positions(ids, superclass_id, prompts))
    embedding = text.encoder.get_input_embeddings().weight[superclass_id].detach().float().cpu()
    return ConceptState.initial(name, superclass, superclass_id, superclass_input.mean(0).cpu(),
                                embedding, unet, lock=options.lock, method=options.method)


def _state_from(checkpoint: Checkpoint, unet: nn.Module, superclass_id: int, superclass: str,
                name: str, lock: str, method: str) -> ConceptState:
    """The state saved in `checkpoint` (layer names taken from the UNet, tensors from the file)."""
    saved = checkpoint.state
    state = ConceptState.initial(name, superclass, superclass_id, saved["superclass_input"],
                                 saved["word_embedding"], unet, lock=lock, method=method)
    state.load_state_dict(saved)
    return state


def _check_resumable(checkpoint: Checkpoint, identity: dict[str, Any],
                     options: TrainOptions) -> None:
    changed = [f"{key}: {checkpoint.record.get(key)!r} → {value!r}" for key, value in
               identity.items() if checkpoint.record.get(key) != value]
    changed += options.differences(checkpoint.record.get("options", {}), RESUMABLE_CHANGES)
    if changed:
        raise TrainingError("Cannot resume: the checkpoint was made with other data or options ("
                            + "; ".join(changed) + "). Use the same ones, or train without "
                            "--resume to start over.")
    if checkpoint.step > options.steps:
        raise TrainingError(f"Cannot resume: the checkpoint is at step {checkpoint.step}, beyond "
                            f"--steps {options.steps}. Pass --steps {checkpoint.step} or more.")


def _load_optimizer(optimizer: torch.optim.Optimizer, moments: dict[int, dict[str, torch.Tensor]],
                    device: torch.device) -> None:
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {index: {key: (value if key == "step" else value.to(device))
                     for key, value in moments[index].items()}
             for index in range(len(params)) if index in moments}
    groups = optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, so an optimiser step is applied whole or not at all."""
    received: list[Any] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda *args: received.append(args))
    except ValueError:  # not the main thread: signals cannot be caught here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _preview(pipe: Any, edit: Any, state: ConceptState, templates: tuple[str, ...], path: Path,
             resolution: int, seed: int, base_options: dict[str, Any]) -> None:
    """Render the first template with the current concept (fixed seed) to `path`."""
    from perfusion_hub.files import atomic_path

    device = pipe.unet.device
    prompt = fill(templates[0], state.token)
    guidance = float(base_options.get("guidance", 7.5))
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        kwargs = None
        if state.lock == "global":
            kwargs = {"key_encoder_hidden_states":
                      edit.key_encoder_hidden_states(prompt, guidance=guidance > 1)}
        image = pipe(prompt, height=resolution, width=resolution, guidance_scale=guidance,
                     num_inference_steps=int(base_options.get("steps",
                                                              PREVIEW_STEPS)),
                     generator=torch.Generator(device).manual_seed(seed),
                     cross_attention_kwargs=kwargs).images[0]
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
