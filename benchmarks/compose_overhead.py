"""Cost of Perfusion concepts in the denoising loop, as ratios to the stock processors.

    python benchmarks/compose_overhead.py           # small random UNet on the CPU
    python benchmarks/compose_overhead.py --sd15    # SD-1.5 UNet architecture, random weights,
                                                    # fp16, 64×64 latents, 30 steps, CFG (GPU)

Each configuration (stock processors; Perfusion with 0, 1, 4, 16 concepts) runs the same loop:
a fixed [unconditional; conditional] text encoding, classifier-free guidance (batch 2), the
scheduler's steps. Configurations are interleaved round by round, in a shuffled order, so
that they share the machine's state, and each reports its median and fastest loop time. On
the CPU the clock is the main thread's CPU time with torch on one thread (`--clock wall` for
wall time), so that other processes on a shared machine do not enter the measurement.
Weights and concepts are random: the cost does not depend on their values.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

import torch
from rich.console import Console
from rich.table import Table

from perfusion_hub.bases import cross_attention_layers
from perfusion_hub.micro.tokenizer import build_tokenizer
from perfusion_hub.perfusion import ConceptState, apply

COUNTS = (0, 1, 4, 16)


def build(sd15: bool, device: torch.device, dtype: torch.dtype) -> SimpleNamespace:
    """The pieces `apply` touches: UNet, a (shallow) text encoder of the right width, tokenizer."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    if sd15:
        width, context, size = 768, 77, 64
        unet = UNet2DConditionModel(sample_size=size, cross_attention_dim=width)
    else:
        width, context, size = 64, 77, 16
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=1, sample_size=size,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=width, attention_head_dim=8, norm_num_groups=8)
    tokenizer = build_tokenizer(["a", "photo", "of", "cat"])
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
        num_hidden_layers=1, num_attention_heads=8, max_position_embeddings=context))
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return SimpleNamespace(unet=unet.to(device, dtype).eval(),
                           text_encoder=text_encoder.to(device, dtype).eval(),
                           tokenizer=tokenizer, scheduler=scheduler, width=width,
                           context=context, size=size)


def random_states(pipe: SimpleNamespace, count: int) -> list[ConceptState]:
    generator = torch.Generator().manual_seed(count)
    layers = cross_attention_layers(pipe.unet)
    states = []
    for n in range(count):
        def vector(length: int) -> torch.Tensor:
            return torch.randn(length, generator=generator)

        states.append(ConceptState(
            f"c{n}", "cat", 0, vector(pipe.width), vector(pipe.width), vector(pipe.width),
            {layer.name: vector(layer.out_features) for layer in layers}))
    return states


@torch.no_grad()
def denoise(pipe: SimpleNamespace, text: torch.Tensor, steps: int, guidance: float,
            clock=time.perf_counter) -> float:
    """Seconds for one denoising loop (CFG: batch 2)."""
    device, dtype = pipe.unet.device, pipe.unet.dtype
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, pipe.size, pipe.size, generator=generator).to(device, dtype)
    pipe.scheduler.set_timesteps(steps)
    synchronize(device)
    start = clock()
    for t in pipe.scheduler.timesteps:
        noise = pipe.unet(torch.cat([latents] * 2), t, encoder_hidden_states=text).sample
        uncond, cond = noise.chunk(2)
        latents = pipe.scheduler.step(uncond + guidance * (cond - uncond), t, latents).prev_sample
    synchronize(device)
    return clock() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sd15", action="store_true", help="SD-1.5 UNet, fp16, on the GPU")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per configuration")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--clock", default=None, choices=["cpu", "wall"],
                        help="default: cpu on the CPU (one torch thread), wall on a GPU")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if args.sd15 and torch.cuda.is_available()
                                          else "cpu"))
    clock_name = args.clock or ("cpu" if device.type == "cpu" else "wall")
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    if clock_name == "cpu":
        torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype or ("float16" if args.sd15 else "float32"))
    steps = args.steps or (30 if args.sd15 else 20)
    pipe = build(args.sd15, device, dtype)
    inverse_covariance = torch.eye(pipe.width) + 0.01 * torch.ones(pipe.width, pipe.width)
    text = torch.randn(2, pipe.context, pipe.width, generator=torch.Generator().manual_seed(1))
    text = text.to(device, dtype)
    states = random_states(pipe, max(COUNTS))

    configurations: list[tuple[str, list[ConceptState] | None]] = [("stock", None)]
    configurations += [(f"{n} concepts", states[:n]) for n in COUNTS]
    times: dict[str, list[float]] = {label: [] for label, _ in configurations}
    order = random.Random(0)
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for label, chosen in order.sample(configurations, len(configurations)):
            if chosen is None:
                elapsed = denoise(pipe, text, steps, 7.5, clock)
            else:
                with apply(pipe, chosen, inverse_covariance):
                    elapsed = denoise(pipe, text, steps, 7.5, clock)
            if round_index:
                times[label].append(elapsed)

    stock = statistics.median(times["stock"])
    console = Console()
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    table = Table(title=f"denoising loop: {'SD-1.5 UNet' if args.sd15 else 'small UNet'}, "
                        f"{str(dtype).removeprefix('torch.')}, {pipe.size}×{pipe.size} latents, "
                        f"{steps} steps, CFG, {len(cross_attention_layers(pipe.unet))} attn2 "
                        f"layers, {name} ({torch.get_num_threads()} threads), {clock_name} "
                        f"clock, {args.rounds} rounds")
    fastest = min(times["stock"])
    for column in ("configuration", "median s", "ratio (median)", "fastest s",
                   "ratio (fastest)"):
        table.add_column(column, justify="right")
    for label, values in times.items():
        median = statistics.median(values)
        table.add_row(label, f"{median:.4f}", f"{median / stock:.3f}×", f"{min(values):.4f}",
                      f"{min(values) / fastest:.3f}×")
    console.print(table)


if __name__ == "__main__":
    main()
