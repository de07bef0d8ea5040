"""Quality of the micro base, judged by the micro checker on held-out captions.

    python benchmarks/micro_quality.py [--n 200] [--steps 30] [--guidance 3] [--out DIR]

Renders one-object and two-object captions the base never trained on (fresh seeds) and prints
how often the checker finds the requested categories and colours. Targets (issue 6): category
≥ 90 % and colour ≥ 80 % on one object; both categories ≥ 60 % on two objects.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image
from rich.console import Console
from rich.table import Table

from perfusion_hub.micro import load_checker, micro_pipeline_path
from perfusion_hub.micro.checker import SceneReading, matches_caption, round_trip
from perfusion_hub.micro.recipe import GUIDANCE
from perfusion_hub.micro.training import as_pixels
from perfusion_hub.micro.world import SceneSpec, caption, complete, parse_caption, random_scene
from perfusion_hub.micro.world import render as world_render

HELD_OUT_SEED = 777_001


def held_out_captions(n: int, two: bool, seed: int = HELD_OUT_SEED) -> list[str]:
    """`n` captions with one (or two) objects, dropping optional parts as in training."""
    rng = np.random.default_rng([seed, int(two)])
    out = []
    while len(out) < n:
        spec = random_scene(rng, p_two=1.0 if two else 0.0)
        out.append(caption(spec, rng, p_drop=0.3))
    return out


def render(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    steps: int,
    guidance: float,
    seed: int,
    batch: int,
) -> list[Image.Image]:
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch):
        gen = torch.Generator().manual_seed(seed + start)
        out = pipe(
            prompts[start : start + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gen,
        )
        images += out.images
    return images


def vae_round_trip(
    pipe: StableDiffusionPipeline, prompts: list[str], seed: int
) -> list[Image.Image]:
    """The scenes the captions describe, drawn by the generator, encoded and decoded by the
    base's VAE: the best the base's renders can look to the checker."""
    rng = np.random.default_rng(seed)
    pixels, _ = world_render([complete(parse_caption(p), rng) for p in prompts], seed=seed)
    decoded = round_trip(pipe.vae, as_pixels(pixels).to(pipe.vae.dtype))
    return pipe.image_processor.postprocess(decoded, output_type="pil")


def _has(reading: SceneReading, category: str, colour: str | None = None) -> bool:
    return any(
        o.category == category and (colour is None or o.colour == colour) for o in reading.objects
    )


def score(specs: list[SceneSpec], readings: list[SceneReading]) -> dict[str, float]:
    """Fractions of renders where the checker finds what the caption asks for."""
    hits: Counter[str] = Counter()
    for spec, r in zip(specs, readings, strict=True):
        objs = spec.objects
        hits["category"] += all(_has(r, o.category) for o in objs)
        hits["category+colour"] += all(_has(r, o.category, o.colour) for o in objs)
        hits["pattern"] += all(
            any(x.category == o.category and x.pattern == o.pattern for x in r.objects)
            for o in objs
        )
        hits["background"] += spec.background is None or r.background == spec.background
        hits["object count"] += len(r.objects) == len(objs)
        hits["whole caption"] += matches_caption(r, spec)
    return {k: v / len(specs) for k, v in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="renders per group")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument(
        "--pipeline", type=Path, default=None, help="default: the shipped micro base"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="save renders, a contact sheet and JSON here"
    )
    args = parser.parse_args()

    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(
        args.pipeline or micro_pipeline_path(), torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    checker = load_checker()
    console = Console()
    results: dict[str, dict[str, float]] = {}
    sheets = []
    t0 = time.time()
    for group, two in (("one object", False), ("two objects", True)):
        prompts = held_out_captions(args.n, two)
        images = render(pipe, prompts, args.steps, args.guidance, seed=1000 * two, batch=args.batch)
        readings = checker.read(images)
        results[group] = score([parse_caption(p) for p in prompts], readings)
        sheets.append((group, prompts, images))
    elapsed = time.time() - t0
    prompts = held_out_captions(args.n, two=False)
    results["true scenes through the VAE"] = score(
        [parse_caption(p) for p in prompts], checker.read(vae_round_trip(pipe, prompts, seed=7)))

    table = Table(
        title=f"micro base, {args.n} held-out captions per group, "
        f"{args.steps} Euler-a steps, cfg {args.guidance}"
    )
    table.add_column("checker finds")
    for group in results:
        table.add_column(group, justify="right")
    for key in results["one object"]:
        table.add_row(key, *(f"{100 * results[g][key]:.1f} %" for g in results))
    console.print(table)
    console.print("(the last column is a ceiling: the caption's own scene, drawn by the "
                  "generator, after a round trip through the base's VAE)")
    console.print(f"{2 * args.n} renders in {elapsed:.0f} s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for group, prompts, images in sheets:
            tag = group.replace(" ", "_")
            grid = Image.new("RGB", (64 * 10, 64 * ((min(len(images), 100) + 9) // 10)))
            for i, im in enumerate(images[:100]):
                grid.paste(im, (64 * (i % 10), 64 * (i // 10)))
            grid.save(args.out / f"{tag}.png")
            (args.out / f"{tag}_prompts.txt").write_text("\n".join(prompts))
        (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
