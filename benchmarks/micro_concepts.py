"""Personalization on the micro base: Perfusion against its two baselines, judged by the checker.

    python benchmarks/micro_concepts.py [--seeds 200] [--sweep-seeds 32] [--out DIR]

For each method (perfusion, no-key-lock, textual-inversion) it trains <my-cat> and <my-chair>
from the same instance images and masks (the default training recipe unless told otherwise),
then renders with `phub eval`'s code path and prints, per method:

- instance: "a <my-cat>" renders the checker reads as the instance (category + colour +
  pattern); target ≥ 85 %;
- recontext: "a <my-cat> on a green background" and "a <my-cat> next to a red ball" renders
  that obey every word; target ≥ 75 %;
- pair: "a <my-cat> on a <my-chair>" renders that show both instances; target ≥ 60 %;
- fidelity (micro-CLIP image similarity to the training images) and text alignment (the
  checker's accuracy on the prompt's words), the fidelity/alignment plane of the plot, with a
  β sweep for the two rank-1 methods.

A reference row, "described", renders the same prompts with each concept replaced by its
instance's words ("an orange striped cat on a green spotted chair"): what the base draws when
told everything its vocabulary can say about the instances. Its prompts name colour and
pattern, so its recontext column and its alignment (the plot's x) also score those words.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from perfusion_hub import Hub
from perfusion_hub.compose.session import ImageRequest, Renderer
from perfusion_hub.evaluate.defaults import RENDER_BATCH
from perfusion_hub.evaluate.demo import write_instance_data
from perfusion_hub.evaluate.judge import MicroJudge
from perfusion_hub.evaluate.metrics import EvalRow, fidelity_scores
from perfusion_hub.evaluate.plot import Point, Series, save_plot
from perfusion_hub.evaluate.run import evaluate_concept
from perfusion_hub.micro.world import MY_CAT, MY_CHAIR, Instance, object_phrase
from perfusion_hub.training.images import read_image_folder

METHODS = ("perfusion", "no-key-lock", "textual-inversion")
PLAIN = "a {}"
RECONTEXT = ("a {} on a green background", "a {} next to a red ball")
PAIR = "a {} on a {other}"
TARGETS = {"instance": 0.85, "recontext": 0.75, "pair": 0.60}
SWEEP = "beta=0.5:0.8:4"
# The `TrainOptions` fields the command line can set, with their types.
RECIPE: dict[str, type] = {"steps": int, "batch_size": int, "grad_accum": int,
                           "lr_embedding": float, "lr_values": float,
                           "max_embedding_norm": float}


def instance_data(data: Path, count: int) -> dict[str, tuple[Path, Path]]:
    """Training images and masks of <my-cat> and <my-chair>, by name: (images, masks)."""
    return {instance.name: write_instance_data(instance, data / instance.name, count,
                                               seed=100 + seed)
            for seed, instance in enumerate((MY_CAT, MY_CHAIR))}


def train_pair(hub: Hub, data: dict[str, tuple[Path, Path]], method: str,
               options: argparse.Namespace) -> float:
    """Train <my-cat> and <my-chair> with `method`; returns the seconds spent."""
    started = time.monotonic()
    for instance in (MY_CAT, MY_CHAIR):
        images, masks = data[instance.name]
        hub.train(images, name=instance.name, superclass=instance.category, masks=masks,
                  method=method, seed=0, force=True, device="cpu", **recipe(options))
    return time.monotonic() - started


def recipe(options: argparse.Namespace) -> dict[str, float]:
    """The training options the command line sets; the rest keep `TrainOptions` defaults."""
    return {name: value for name in RECIPE if (value := getattr(options, name)) is not None}


def described_rows(hub: Hub, data: dict[str, tuple[Path, Path]],
                   options: argparse.Namespace) -> list[EvalRow]:
    """The benchmark's prompts rendered with each concept replaced by its instance's words,
    judged like the concepts' renders; each row carries the concept prompt it stands for."""
    judge = MicroJudge()
    training = {i.name: read_image_folder(data[i.name][0]).images for i in (MY_CAT, MY_CHAIR)}
    for instance in (MY_CAT, MY_CHAIR):
        judge.add_concept(instance.name, instance.category, training[instance.name])
    references = judge.embed_images(training[MY_CAT.name])

    def words(instance: Instance) -> str:
        return object_phrase(instance.object(), with_size=False)

    rows = []
    loaded = hub.open_base()
    with Renderer(hub.registry, loaded) as renderer:
        for template in (PLAIN, *RECONTEXT, PAIR):
            stands_for = template.format("<my-cat>", other="<my-chair>")
            named = [MY_CAT.name] + ([MY_CHAIR.name] if "{other}" in template else [])
            prompt = template.replace("a {other}", words(MY_CHAIR)).replace("a {}", words(MY_CAT))
            images = [image for start in range(0, options.seeds, RENDER_BATCH)
                      for image, _ in renderer.render_seeds(
                          ImageRequest(prompt, start, steps=options.sample_steps),
                          list(range(start, min(start + RENDER_BATCH, options.seeds))))]
            fidelity = fidelity_scores(judge.embed_images(images), references)
            verdicts = judge.judge(images, [prompt] * len(images), MY_CAT.name)
            found = judge.instances_found(images, named)
            for seed, (fid, verdict, match) in enumerate(zip(fidelity, verdicts, found,
                                                             strict=True)):
                rows.append(EvalRow("described", stands_for, seed, 0.0, float(fid),
                                    verdict.alignment, verdict.obeyed, match))
    return rows


def rates(rows: list[EvalRow], other: str) -> dict[str, float | int | None]:
    """The three target rates and the plane's coordinates over rows of one β."""
    by_prompt: dict[str, list[EvalRow]] = defaultdict(list)
    for row in rows:
        by_prompt[row.prompt].append(row)

    def mean(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return sum(kept) / len(kept) if kept else None

    def pick(template: str) -> list[EvalRow]:
        return by_prompt[template.format("<my-cat>", other=f"<{other}>")]

    recontext = [r for t in RECONTEXT for r in pick(t)]
    return {
        "instance": mean([r.instance_match for r in pick(PLAIN)]),
        "recontext": mean([r.obeyed for r in recontext]),
        "pair": mean([r.instance_match for r in pick(PAIR)]),
        "fidelity": mean([r.fidelity for r in rows]),
        "alignment": mean([r.alignment for r in rows]),
        "renders": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200, help="renders per prompt")
    parser.add_argument("--sweep-seeds", type=int, default=32,
                        help=f"renders per prompt and β of the {SWEEP} sweep (0: none)")
    parser.add_argument("--images", type=int, default=6, help="training images per instance")
    for name, kind in RECIPE.items():
        flag = "--train-steps" if name == "steps" else f"--{name.replace('_', '-')}"
        parser.add_argument(flag, dest=name, type=kind, default=None,
                            help="default: the training default")
    parser.add_argument("--sample-steps", type=int, default=None,
                        help="denoising steps (default: the base's)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                        help="methods to train (none: the described row only)")
    parser.add_argument("--out", type=Path, default=None, help="keep renders, CSVs and plot")
    options = parser.parse_args()
    console = Console()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="phub-concepts-") as tmp:
        out = options.out or Path(tmp) / "out"
        data = instance_data(Path(tmp) / "data", options.images)
        hub = Hub(Path(tmp) / "described")
        results: dict[str, dict] = {
            "described": {**rates(described_rows(hub, data, options), "my-chair"), "train_s": 0}}
        console.log(f"described: {results['described']}")
        series = [Series("described", (Point(results["described"]["alignment"],
                                             results["described"]["fidelity"], "words"),))]
        for method in options.methods:
            hub = Hub(Path(tmp) / method)
            seconds = train_pair(hub, data, method, options)
            report = evaluate_concept(hub, "my-cat", other="my-chair", seeds=options.seeds,
                                      prompts=[PLAIN, *RECONTEXT, PAIR],
                                      steps=options.sample_steps, out=out / method / "main")
            results[method] = {**rates(report.rows, "my-chair"), "train_s": round(seconds, 1)}
            points = [Point(results[method]["alignment"], results[method]["fidelity"],
                            "default")]
            if options.sweep_seeds and method != "textual-inversion":
                swept = evaluate_concept(hub, "my-cat", other="my-chair",
                                         seeds=options.sweep_seeds, sweep=SWEEP,
                                         prompts=[PLAIN, *RECONTEXT, PAIR],
                                         steps=options.sample_steps,
                                         out=out / method / "sweep")
                results[method]["sweep"] = [s.to_json() for s in swept.overall]
                points = [Point(s.alignment, s.fidelity, f"beta={s.beta:.2f}")
                          for s in swept.overall
                          if s.alignment is not None and s.fidelity is not None]
            series.append(Series(method, tuple(points)))
            console.log(f"{method}: {results[method]}")
        plot = save_plot(out / "methods.png", series,
                         "<my-cat> on the micro base: fidelity vs text alignment")
        (out / "methods.json").write_text(json.dumps(results, indent=2))

        table = Table(title=f"<my-cat> / <my-chair>, {options.seeds} renders per prompt, "
                            f"{options.images} training images, "
                            f"recipe {recipe(options) or 'default'}")
        for column in ("method", "instance", "recontext", "pair", "fidelity", "alignment",
                       "train s"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for method, r in results.items():
            table.add_row(method, *(f"{100 * r[k]:.1f} %" if r[k] is not None else "—"
                                    for k in ("instance", "recontext", "pair")),
                          f"{r['fidelity']:.3f}", f"{r['alignment']:.3f}", f"{r['train_s']:.0f}")
        console.print(table)
        console.print("targets: " + ", ".join(f"{k} ≥ {100 * v:.0f} %"
                                               for k, v in TARGETS.items()))
        console.print(f"plot: {plot}; total {time.monotonic() - started:.0f} s"
                      + ("" if options.out else " (temporary: pass --out to keep)"))


if __name__ == "__main__":
    main()
