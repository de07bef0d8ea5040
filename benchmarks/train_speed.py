"""Training speed of `phub train`'s loop: optimiser steps per second and peak memory.

    python benchmarks/train_speed.py            # small random config on the CPU
    python benchmarks/train_speed.py --sd15     # SD-1.5 architecture, random weights, on a GPU:
                                                # bf16, batch 4 × accumulation 4, 64×64 latents
    python benchmarks/train_speed.py --base micro   # a registered base (e.g. the micro base)

With --sd15 or the small config, weights are random and C⁻¹ is the identity: speed depends
on neither. The loop is the
real one (`perfusion_hub.training.loop.train_loop`), edit installed, checkpoints off.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from perfusion_hub.bases import LoadedBase, cross_attention_layers
from perfusion_hub.concepts import BaseFingerprint
from perfusion_hub.micro.tokenizer import build_tokenizer
from perfusion_hub.training.images import read_image_folder
from perfusion_hub.training.loop import resolve_device, train_loop
from perfusion_hub.training.options import TrainOptions
from perfusion_hub.training.progress import SilentReporter

WORDS = ("a", "photo", "of", "the", "close-up", "good", "small", "cat", "dog", "chair", "on",
         "in", "with", "red", "blue")


def build_base(sd15: bool, device: torch.device, dtype: torch.dtype) -> LoadedBase:
    """A random StableDiffusionPipeline: SD-1.5's architecture, or a small one for CPUs."""
    from diffusers import (
        AutoencoderKL,
        DDPMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = build_tokenizer(WORDS)
    if sd15:
        tokenizer.model_max_length = 77
        text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072,
                              num_hidden_layers=12, num_attention_heads=12,
                              max_position_embeddings=77)
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                            sample_size=512)
        resolution = 512
    else:
        text = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=4,
                              max_position_embeddings=32)
        unet = UNet2DConditionModel(sample_size=16, block_out_channels=(32, 64),
                                    layers_per_block=1, cross_attention_dim=64,
                                    down_block_types=("CrossAttnDownBlock2D",) * 2,
                                    up_block_types=("CrossAttnUpBlock2D",) * 2,
                                    attention_head_dim=8, norm_num_groups=8)
        vae = AutoencoderKL(block_out_channels=(16, 32), latent_channels=4, norm_num_groups=8,
                            down_block_types=("DownEncoderBlock2D",) * 2,
                            up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32)
        resolution = 32
    text.bos_token_id, text.eos_token_id = len(tokenizer) - 2, len(tokenizer) - 1
    text.pad_token_id = len(tokenizer) - 1
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tokenizer, unet=unet,
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                beta_end=0.012, clip_sample=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).to(device)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    width = text.hidden_size
    fingerprint = BaseFingerprint("benchmark", width, cross_attention_layers(pipe.unet), "0" * 64)
    return LoadedBase("benchmark", pipe, fingerprint, torch.eye(width, device=device), "0" * 64,
                      resolution, ["a photo of a {}", "a close-up photo of the {} on a chair"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sd15", action="store_true", help="SD-1.5 UNet/VAE/text architecture")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps (timed after 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--base", default=None, help="a registered base (or source) instead")
    parser.add_argument("--home", default=None, help="perfusion-hub home for --base")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (30 if args.sd15 else 12)
    device, dtype = resolve_device(args.device)
    if args.base:
        from perfusion_hub import Hub

        base = Hub(args.home).open_base(args.base, device=str(device), dtype=dtype)
    else:
        base = build_base(args.sd15, device, dtype)
    console = Console(width=140)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "images"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for index in range(4):
            pixels = rng.integers(0, 255, (base.resolution, base.resolution, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.png")
        options = TrainOptions(steps=steps, batch_size=args.batch_size,
                               grad_accum=args.grad_accum, device=args.device,
                               checkpoint_every=0)
        stamps: list[float] = []
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

        def tick(step: int, loss: float) -> None:
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        started = time.perf_counter()
        train_loop(base, read_image_folder(folder), name="bench", superclass="cat",
                   options=options, folder=Path(scratch) / "run", resume=False,
                   reporter=SilentReporter(), on_step=tick)
    timed = stamps[2:] if len(stamps) > 3 else stamps
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (GPU, allocated)"
        machine = torch.cuda.get_device_name()
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (RSS)"
        machine = f"CPU, {torch.get_num_threads()} torch threads"
    table = Table("config", "machine", "precision", "batch × accum", "steps/s",
                  "400 steps", "peak memory", "setup + run")
    config = f"base {base.name}" if args.base else "SD-1.5 architecture" if args.sd15 else "small"
    table.add_row(config, machine,
                  str(base.pipe.unet.dtype).removeprefix("torch."),
                  f"{args.batch_size} × {args.grad_accum}", f"{rate:.2f}",
                  f"{400 / rate:.0f} s", peak, f"{time.perf_counter() - started:.1f} s")
    console.print(table)


if __name__ == "__main__":
    main(sys.argv[1:])
