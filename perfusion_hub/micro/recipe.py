"""The seeded, resumable recipe that trains the micro base: CLIP, VAE, UNet, VAE decoder,
checker."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from rich.progress import track
from transformers import CLIPModel, CLIPTextModel, CLIPTokenizer

from perfusion_hub.errors import PhubError
from perfusion_hub.micro import models
from perfusion_hub.micro.tokenizer import build_tokenizer, tokenize
from perfusion_hub.micro.training import (
    Budget,
    Prefetch,
    as_pixels,
    autocast,
    data_workers,
    optimiser_step,
    pick_device,
    run_loop,
    warmup_cosine,
)
from perfusion_hub.micro.world import CAPTION_DROP, caption, random_scene, render

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("clip", "vae", "unet", "decoder", "checker")
# The stages whose outputs each stage reads: rerunning one makes these later ones stale.
# The decoder reads only the VAE: the UNet stage exports the pipeline with the refined
# decoder when there is one, and the decoder stage swaps it into an exported pipeline.
READS: dict[str, tuple[str, ...]] = {
    "unet": ("clip", "vae"), "decoder": ("vae",), "checker": ("decoder",),
}
# Step budgets per hardware (with `BATCH`'s batch sizes). The shipped base is the "gpu"
# recipe on one H100 (CLIP, UNet, decoder and checker in about 10 minutes; its VAE is the
# "cpu" one); its training_report.json has the exact counts. The "cpu" recipe takes about
# 11, 9, 150, 13 and 17 minutes on a 2-core CPU.
DEFAULT_STEPS: dict[str, dict[str, int]] = {
    "cpu": {"clip": 500, "vae": 2600, "unet": 6700, "decoder": 900, "checker": 2000},
    "gpu": {"clip": 960, "vae": 1000, "unet": 3450, "decoder": 550, "checker": 3600},
    "tiny": dict.fromkeys(STAGES, 20),
}
# Scenes per step on a CPU, and beside a GPU (fed by `data_workers` processes); tiny runs
# are smoke tests.
BATCH: dict[str, dict[str, int]] = {
    "cpu": {"clip": 256, "vae": 16, "unet": 64, "decoder": 32, "checker": 128},
    "gpu": {"clip": 1024, "vae": 64, "unet": 512, "decoder": 128, "checker": 512},
    "tiny": {"clip": 16, "vae": 8, "unet": 8, "decoder": 8, "checker": 16},
}
# Scenes whose latents the UNet trains on (encoded once, before its first step).
POOL: dict[str, int] = {"cpu": 40_000, "gpu": 200_000, "tiny": 64}
P_EMPTY = 0.1
# Peak learning rate of the UNet from scratch, and when it fine-tunes an exported UNet
# (`train_base(unet_from=...)`: a smaller batch on a CPU continuing a GPU run).
UNET_LR = 6e-4
UNET_FINE_TUNE_LR = 1e-4
# Classifier-free guidance scale the micro base renders with by default, and the one its
# quality is measured at (benchmarks/micro_quality.py). At 3 rather than 5 its own captions
# gain colour and lose some pattern and category; a concept's renders come apart at 5
# (docs/micro-results.md, "Guidance").
GUIDANCE = 3.0
# SD's schedule leaves sqrt(0.0047) of the signal at t=T; on 16×16 latents the mean of the
# noisy input then still reveals the background colour, which pure-noise sampling lacks, so
# the model learns to ignore the caption's background. Per-channel offset noise makes it read
# the text.
OFFSET_NOISE = 0.2
FOREGROUND_WEIGHT = 4.0
# The prompts `phub train` uses on this base. Only words that hold for every training image:
# a template that names a background, position or second object the images lack ("a {} on a
# red background" under an image on brown) teaches the concept to override those words, and
# its renders then ignore them (docs/micro-results.md, "Training prompts and the bound on v*").
TRAIN_TEMPLATES: tuple[str, ...] = ("a {}",)
# The bound on ‖v*‖ (× the superclass word's norm) that `phub train` applies on this base
# unless told otherwise: this causal text encoder hands v* to every later token, and an
# unbounded v* opens the concept's gate on them (same section).
MAX_EMBEDDING_NORM = 1.0


class StageError(PhubError):
    """A stage that cannot run because an earlier stage has not produced its output."""


def hardware(device: torch.device, tiny: bool = False) -> str:
    """The key of `BATCH` and `POOL` for a run on `device`."""
    return "tiny" if tiny else "cpu" if device.type == "cpu" else "gpu"


def _scenes(rng: np.random.Generator, n: int, seed: int) -> tuple[list, np.ndarray]:
    specs = [random_scene(rng) for _ in range(n)]
    imgs, _ = render(specs, seed=seed)
    return specs, imgs


def _captioned_scenes(
    i: int, seed: int, stream: int, batch: int, tok: CLIPTokenizer, variants: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Batch `i` of `stream`: scenes (uint8) and token ids (batch, variants, context) of
    `variants` captions each, some words dropped (`CAPTION_DROP`)."""
    rng = np.random.default_rng([seed, stream, i])
    specs, imgs = _scenes(rng, batch, seed=int(rng.integers(1 << 31)))
    caps = [caption(s, rng, p_drop=CAPTION_DROP) for s in specs for _ in range(variants)]
    return imgs, np.asarray(tokenize(tok, caps)).reshape(batch, variants, -1)


def _object_scenes(i: int, seed: int, stream: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch `i` of `stream`: scenes (uint8) and where objects are (bool, batch × H × W)."""
    rng = np.random.default_rng([seed, stream, i])
    imgs, masks = render([random_scene(rng) for _ in range(batch)], int(rng.integers(1 << 31)))
    return imgs, masks.any(1)


def _done(work: Path, stage: str) -> bool:
    return (work / f"{stage}.done").exists()


def _mark(work: Path, stage: str, info: Mapping[str, object]) -> None:
    (work / f"{stage}.done").write_text(json.dumps(info, indent=2))


def stale_after(stage: str) -> list[str]:
    """The stages that read `stage`'s output, directly or through another stage."""
    stale: list[str] = []
    for later in STAGES[STAGES.index(stage) + 1 :]:
        if any(s in (stage, *stale) for s in READS.get(later, ())):
            stale.append(later)
    return stale


def require_stages(work: Path, *stages: str) -> None:
    """Refuse to start a stage before the stages whose outputs it reads have finished."""
    for stage in stages:
        if not _done(work, stage):
            raise StageError(f"stage '{stage}' has not finished in {work}; run it first")


# ----------------------------------------------------------------------------- CLIP


def train_clip(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
) -> dict:
    """Contrastive CLIP on scene/caption pairs; saves `work/clip` (model + tokenizer)."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    model = models.make_clip(tok, tiny).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    batch = BATCH[hardware(device, tiny)]["clip"]
    draw = partial(_captioned_scenes, seed=seed, stream=1, batch=batch, tok=tok)

    with Prefetch(draw, data_workers(device)) as batches:

        def step(i: int) -> float:
            imgs, ids = batches[i]
            ids = torch.from_numpy(ids[:, 0]).to(device)
            with autocast(device):
                pixels = as_pixels(imgs, device)
                loss = model(input_ids=ids, pixel_values=pixels, return_loss=True).loss
            return optimiser_step(opt, model, loss)

        steps = run_loop(
            "clip",
            {"model": model},
            opt,
            step,
            budget,
            warmup_cosine(1e-3, 30),
            work / "clip.ckpt",
            show=show,
        )
    acc = clip_retrieval(model, tok, n=64 if tiny else 512, seed=seed + 99, device=device)
    model.save_pretrained(work / "clip")
    tok.save_pretrained(work / "clip")
    info = {"steps": steps, "batch": batch, "retrieval_acc": acc}
    _mark(work, "clip", info)
    return info


@torch.no_grad()
def clip_retrieval(
    model: CLIPModel, tok: CLIPTokenizer, n: int, seed: int, device: torch.device
) -> float:
    """Top-1 text→image retrieval among `n` fresh scenes with full captions."""
    rng = np.random.default_rng(seed)
    specs, imgs = _scenes(rng, n, seed)
    ids = torch.tensor(tokenize(tok, [caption(s) for s in specs]), device=device)
    model.eval()
    t = F.normalize(models.pooled(model.get_text_features(input_ids=ids)), dim=-1)
    v = F.normalize(
        models.pooled(model.get_image_features(pixel_values=as_pixels(imgs, device))), dim=-1
    )
    model.train()
    return float(((t @ v.T).argmax(-1) == torch.arange(n, device=device)).float().mean())


# ----------------------------------------------------------------------------- VAE


def train_vae(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
) -> dict:
    """KL autoencoder on scenes; saves `work/vae` with its scaling factor.

    Loss: `_reconstruction_loss` + 1e-6·KL.
    """
    torch.manual_seed(seed)
    vae = models.make_vae(tiny).to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    batch = BATCH[hardware(device, tiny)]["vae"]
    draw = partial(_object_scenes, seed=seed, stream=2, batch=batch)

    with Prefetch(draw, data_workers(device)) as batches:

        def step(i: int) -> float:
            x, weight = _weighted_pixels(*batches[i], device)
            with autocast(device):
                dist = vae.encode(x).latent_dist
                gen = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
                noise = torch.randn(dist.mean.shape, generator=gen, device=device)
                rec = vae.decode(dist.mean + dist.std * noise).sample.float()
            kl = dist.kl().mean() / x[0].numel()
            return optimiser_step(opt, vae, _reconstruction_loss(rec, x, weight) + 1e-6 * kl)

        steps = run_loop(
            "vae",
            {"model": vae},
            opt,
            step,
            budget,
            warmup_cosine(1e-3, 50),
            work / "vae.ckpt",
            show=show,
        )
    scale, psnr = _vae_stats(vae, n=32 if tiny else 512, seed=seed + 99, device=device)
    vae.register_to_config(scaling_factor=scale)
    vae.save_pretrained(work / "vae")
    info = {"steps": steps, "batch": batch, "psnr_db": psnr, "scaling_factor": scale}
    _mark(work, "vae", info)
    return info


def _weighted_pixels(
    imgs: np.ndarray, foreground: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes as pixels in [-1, 1] and per-pixel loss weights (objects weigh
    1 + FOREGROUND_WEIGHT, normalised to mean 1)."""
    fg = 1 + FOREGROUND_WEIGHT * torch.from_numpy(foreground).to(device)[:, None].float()
    return as_pixels(imgs, device), fg / fg.mean()


def _reconstruction_loss(rec: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted MSE + L1/2: small objects carry the colours that matter."""
    err = rec - x
    return (weight * (err.pow(2) + 0.5 * err.abs())).mean()


def train_decoder(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
) -> dict:
    """Refine the VAE's decoder with its encoder frozen, so the latent space the UNet learned
    stays exactly the same; saves `work/decoder` (the whole VAE) and, once the UNet stage
    has exported `work/pipeline`, swaps it in there.

    The joint VAE run stops while colours still drift (brown decodes greenish, black as dark
    green); decoding is the cheaper half to keep training.
    """
    require_stages(work, *READS["decoder"])
    torch.manual_seed(seed)
    vae = AutoencoderKL.from_pretrained(work / "vae").to(device)
    vae.requires_grad_(False)
    decoder = torch.nn.ModuleList([vae.decoder, vae.post_quant_conv]).requires_grad_(True)
    opt = torch.optim.AdamW(decoder.parameters(), lr=3e-4, weight_decay=0.0)
    batch = BATCH[hardware(device, tiny)]["decoder"]
    draw = partial(_object_scenes, seed=seed, stream=5, batch=batch)

    with Prefetch(draw, data_workers(device)) as batches:

        def step(i: int) -> float:
            x, weight = _weighted_pixels(*batches[i], device)
            with torch.no_grad():
                z = vae.encode(x).latent_dist.mean
            rec = vae.decode(z).sample
            return optimiser_step(opt, decoder, _reconstruction_loss(rec, x, weight))

        steps = run_loop(
            "decoder",
            {"model": decoder},
            opt,
            step,
            budget,
            warmup_cosine(3e-4, 50),
            work / "decoder.ckpt",
            show=show,
        )
    _, psnr = _vae_stats(vae, n=32 if tiny else 512, seed=seed + 99, device=device)
    vae.save_pretrained(work / "decoder")
    if (work / "pipeline" / "model_index.json").exists():
        pipe = StableDiffusionPipeline.from_pretrained(work / "pipeline")
        export_pipeline(work / "pipeline", pipe.tokenizer, pipe.text_encoder, vae, pipe.unet)
    info = {"steps": steps, "batch": batch, "psnr_db": psnr}
    _mark(work, "decoder", info)
    return info


@torch.no_grad()
def _vae_stats(vae: AutoencoderKL, n: int, seed: int, device: torch.device) -> tuple[float, float]:
    """(1 / std of latents, reconstruction PSNR in dB) on `n` fresh scenes."""
    vae.eval()
    _, imgs = _scenes(np.random.default_rng(seed), n, seed)
    x = as_pixels(imgs, device)
    z = vae.encode(x).latent_dist.mean
    rec = vae.decode(z).sample.clamp(-1, 1)
    vae.train()
    mse = float(((rec - x) / 2).pow(2).mean())
    return 1.0 / float(z.std()), 10 * float(np.log10(1.0 / max(mse, 1e-12)))


# ----------------------------------------------------------------------------- UNet


def _load_clip_and_vae(
    work: Path, device: torch.device
) -> tuple[CLIPTokenizer, CLIPTextModel, AutoencoderKL]:
    """The frozen text encoder and VAE the UNet trains on; the VAE has the refined decoder
    when the decoder stage has run (its encoder, hence the latents, are the same)."""
    require_stages(work, *READS["unet"])
    tok = CLIPTokenizer.from_pretrained(work / "clip")
    te = models.text_encoder_from_clip(CLIPModel.from_pretrained(work / "clip")).to(device)
    vae_dir = work / ("decoder" if _done(work, "decoder") else "vae")
    vae = AutoencoderKL.from_pretrained(vae_dir).to(device).eval().requires_grad_(False)
    return tok, te, vae


@torch.no_grad()
def _latent_pool(
    vae: AutoencoderKL,
    tok: CLIPTokenizer,
    n: int,
    variants: int,
    seed: int,
    device: torch.device,
    show: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latents (n, 4, 16, 16) fp16 and caption ids (n, variants, 32) of `n` scenes
    (`n` rounded up to whole chunks of 256)."""
    chunk = min(256, n)
    draw = partial(_captioned_scenes, seed=seed, stream=3, batch=chunk, tok=tok,
                   variants=variants)
    lat, ids = [], []
    with Prefetch(draw, data_workers(device)) as chunks:
        for k in track(range(-(-n // chunk)), description="latents", disable=not show):
            imgs, chunk_ids = chunks[k]
            with autocast(device):
                z = vae.encode(as_pixels(imgs, device)).latent_dist.mean.float()
            lat.append((z * vae.config.scaling_factor).half().cpu())
            ids.append(torch.from_numpy(chunk_ids))
    return torch.cat(lat), torch.cat(ids)


def train_unet(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
    pool_size: int | None = None,
    unet_from: Path | None = None,
) -> dict:
    """ε-prediction UNet on precomputed latents: 10 % empty captions, min-SNR-5 weights,
    offset noise (`OFFSET_NOISE`), EMA 0.999; exports `work/pipeline` at each checkpoint.

    With `unet_from` (a pipeline folder) it fine-tunes that pipeline's UNet at
    `UNET_FINE_TUNE_LR` instead of training a new one."""
    torch.manual_seed(seed)
    tok, te, vae = _load_clip_and_vae(work, device)
    if unet_from is None:
        unet = models.make_unet(tiny, cross_attention_dim=te.config.hidden_size)
    else:
        unet = _exported_unet(Path(unet_from), te.config.hidden_size)
    unet = unet.to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = models.make_noise_scheduler()
    alphas = sched.alphas_cumprod.to(device)
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=5.0) / snr
    lat, ids = _latent_pool(vae, tok, pool_size or POOL[hardware(device, tiny)], variants=3,
                            seed=seed, device=device, show=show)
    lat, ids = lat.to(device), ids.to(device)
    n = len(lat)
    empty = torch.tensor(tokenize(tok, [""]), device=device)[0]
    peak = UNET_LR if unet_from is None else UNET_FINE_TUNE_LR
    opt = torch.optim.AdamW(unet.parameters(), lr=peak, weight_decay=0.01)
    batch = BATCH[hardware(device, tiny)]["unet"]
    ema_params, params = list(ema.parameters()), list(unet.parameters())

    def step(i: int) -> float:
        gen = torch.Generator(device).manual_seed(seed * 1_000_003 + i)
        pick = torch.randint(0, n, (batch,), generator=gen, device=device)
        var = torch.randint(0, ids.shape[1], (batch,), generator=gen, device=device)
        tokens = ids[pick, var]
        drop = torch.rand(batch, generator=gen, device=device) < P_EMPTY
        tokens = torch.where(drop[:, None], empty[None], tokens)
        with torch.no_grad():
            states = te(tokens).last_hidden_state
        z = lat[pick].float()
        noise = torch.randn(z.shape, generator=gen, device=device)
        offset = torch.randn(z.shape[:2] + (1, 1), generator=gen, device=device)
        noise = noise + OFFSET_NOISE * offset
        t = torch.randint(
            0, sched.config.num_train_timesteps, (batch,), generator=gen, device=device
        )
        with autocast(device):
            pred = unet(sched.add_noise(z, noise, t), t, states).sample.float()
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * weight[t]).mean()
        value = optimiser_step(opt, unet, loss)
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        return value

    def export() -> None:
        export_pipeline(work / "pipeline", tok, te, vae, ema)

    steps = run_loop(
        "unet",
        {"model": unet, "ema": ema},
        opt,
        step,
        budget,
        warmup_cosine(peak, 200, floor=0.1),
        work / "unet.ckpt",
        on_checkpoint=export,
        show=show,
    )
    info = {"steps": steps, "batch": batch, "pool": n}
    if unet_from is not None:
        info["fine_tuned_from"] = str(unet_from)
    _mark(work, "unet", info)
    return info


def _exported_unet(pipeline: Path, text_width: int) -> UNet2DConditionModel:
    """The UNet of an exported pipeline folder, in fp32, checked against the text width."""
    if not (pipeline / "unet" / "config.json").is_file():
        raise PhubError(f"{pipeline} has no unet/ folder; pass a pipeline folder that "
                        "`phub micro train-base` exported (e.g. <work>/pipeline)")
    unet = UNet2DConditionModel.from_pretrained(pipeline / "unet", torch_dtype=torch.float32)
    if unet.config.cross_attention_dim != text_width:
        raise PhubError(f"the UNet in {pipeline} reads text of width "
                        f"{unet.config.cross_attention_dim}, this run's text encoder gives "
                        f"{text_width}; fine-tune a UNet trained with this CLIP")
    return unet


def export_pipeline(
    dest: Path,
    tok: CLIPTokenizer,
    te: CLIPTextModel,
    vae: AutoencoderKL,
    unet: torch.nn.Module,
    fp16: bool = True,
) -> Path:
    """Save a standard StableDiffusionPipeline folder (Euler-ancestral, no safety checker)."""
    sched = EulerAncestralDiscreteScheduler.from_config(models.make_noise_scheduler().config)
    pipe = StableDiffusionPipeline(
        vae=copy.deepcopy(vae).cpu(),
        text_encoder=copy.deepcopy(te).cpu(),
        tokenizer=tok,
        unet=copy.deepcopy(unet).cpu(),
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    if fp16:
        pipe.to(dtype=torch.float16)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    meta = {"name": "micro", "resolution": models.RES, "train_templates": list(TRAIN_TEMPLATES),
            "max_embedding_norm": MAX_EMBEDDING_NORM, "guidance": GUIDANCE}
    (tmp / "phub_base.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    return dest


# ----------------------------------------------------------------------------- all stages


def _train_checker(
    work: Path,
    budget: Budget,
    device: torch.device,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
) -> dict:
    from perfusion_hub.micro.checker import train_checker

    return train_checker(work, budget, device, seed=seed, tiny=tiny, show=show)


def train_base(
    out_dir: str | Path,
    stages: Sequence[str] = STAGES,
    minutes: Mapping[str, float] | None = None,
    steps: Mapping[str, int] | None = None,
    device: str | torch.device | None = None,
    resume: bool = True,
    seed: int = 0,
    tiny: bool = False,
    show: bool = True,
    unet_from: str | Path | None = None,
) -> dict[str, dict]:
    """Train the micro base's stages into `out_dir`, skipping finished ones when `resume`.

    `steps`/`minutes` override the per-stage budget (default: DEFAULT_STEPS for the
    hardware; with both, a stage stops at whichever comes first). A stage that runs again
    makes the later stages that read its output (`READS`) run again too. Outputs:
    `out_dir/clip`, `out_dir/vae`, `out_dir/pipeline` (the StableDiffusionPipeline folder),
    `out_dir/decoder` and `out_dir/checker`; `install_assets(out_dir)` copies them into the
    package. `unet_from` (a pipeline folder) makes the UNet stage fine-tune that pipeline's
    UNet rather than start from scratch.
    """
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise PhubError(
            f"unknown micro stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}"
        )
    work = Path(out_dir)
    work.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    runners = {"clip": train_clip, "vae": train_vae,
               "unet": partial(train_unet, unet_from=Path(unet_from) if unet_from else None),
               "decoder": train_decoder, "checker": _train_checker}
    report: dict[str, dict] = {}
    for stage in (s for s in STAGES if s in stages):
        if resume and _done(work, stage):
            report[stage] = json.loads((work / f"{stage}.done").read_text())
            continue
        if not resume:
            (work / f"{stage}.ckpt").unlink(missing_ok=True)
        for later in stale_after(stage):
            (work / f"{later}.done").unlink(missing_ok=True)
            (work / f"{later}.ckpt").unlink(missing_ok=True)
        budget = Budget(
            minutes=(minutes or {}).get(stage),
            steps=(steps or {}).get(stage, DEFAULT_STEPS[hardware(dev, tiny)][stage]),
        )
        report[stage] = runners[stage](work, budget, dev, seed=seed, tiny=tiny, show=show)
        log.info("micro %s: %s", stage, report[stage])
    return report
