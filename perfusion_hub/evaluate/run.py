"""`evaluate_concept`: render a concept over prompt templates × seeds × β and score each render.

The single code path behind `phub eval` and `Hub.evaluate`. Renders go through the compose
`Renderer` (the base is loaded once and the concept edit installed once; β reaches the gates
per render), then a judge scores them: fidelity against the concept's training images, text
alignment against the prompt. Writes `results.csv` (one row per prompt × seed × β), the
fidelity-vs-alignment plot, `summary.json` and the renders, and stores the summary in the
registry under the concept's `eval` metrics.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perfusion_hub.errors import PromptError, TrainingError
from perfusion_hub.evaluate.defaults import DEFAULT_SEEDS, RENDER_BATCH
from perfusion_hub.evaluate.metrics import (
    CSV_COLUMNS,
    EvalRow,
    Summary,
    fidelity_scores,
    row_to_csv,
    summarize,
)
from perfusion_hub.evaluate.plot import Point, Series, save_plot
from perfusion_hub.evaluate.prompts import (
    Template,
    default_templates,
    make_template,
    read_templates,
    select,
)
from perfusion_hub.files import atomic_write_bytes

MICRO_ARCHITECTURE = "phub-micro"
CSV_NAME = "results.csv"
PLOT_NAME = "fidelity-vs-alignment.png"
SUMMARY_NAME = "summary.json"

Progress = Callable[[int, int], None]


@dataclass
class EvalReport:
    """The outcome of one evaluation: every row, the summaries and where the files went."""

    concept: str
    base: str
    judge: str
    rows: list[EvalRow]
    overall: list[Summary]
    by_kind: list[Summary]
    headline: Summary
    out_dir: Path
    csv_path: Path
    plot_path: Path | None
    summary_path: Path
    reference_images: Path
    seconds: float
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """What the registry keeps (under `eval`): the headline at the concept's β, every β
        of the sweep, and the per-kind breakdown."""
        headline = {k: v for k, v in self.headline.to_json().items() if k != "kind"}
        return {
            **headline,
            "base": self.base,
            "judge": self.judge,
            "seeds": len({r.seed for r in self.rows}),
            "sweep": [s.to_json() for s in self.overall],
            "by_kind": [s.to_json() for s in self.by_kind],
            "evaluated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "out_dir": str(self.out_dir),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "metrics": self.metrics(),
            "csv": str(self.csv_path),
            "plot": str(self.plot_path) if self.plot_path else None,
            "summary": str(self.summary_path),
            "reference_images": str(self.reference_images),
            "renders": len(self.rows),
            "seconds": round(self.seconds, 2),
            "notes": self.notes,
        }


def parse_betas(sweep: str | Sequence[str] | None) -> tuple[float | None, ...]:
    """The β values of `--sweep beta=start:stop:count` (compose's sweep syntax); τ sweeps are
    refused (evaluation walks the β trade-off); None → (None,) = each concept's own β."""
    from perfusion_hub.compose.options import parse_sweep

    specs = [sweep] if isinstance(sweep, str) else list(sweep or ())
    parsed = parse_sweep(specs)
    if parsed.taus != (None,):
        raise PromptError("phub eval sweeps β only: use --sweep beta=start:stop:count.")
    return parsed.betas


def reference_folder(concept: Any, images: str | Path | None) -> Path:
    """The concept's training images: `images` if given, else the folder its training
    recorded; a clear error when neither is known."""
    if images is not None:
        return Path(images).expanduser()
    recorded = (concept.training or {}).get("images_dir")
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    where = f" (recorded: {recorded}, which no longer exists)" if recorded else ""
    raise TrainingError(
        f"The training images of {concept.name!r} are unknown{where}: pass --images DIR with "
        "the images it was trained on (fidelity is measured against them)."
    )


def _templates(prompts: str | Path | Sequence[str] | None, micro: bool,
               other: str | None) -> list[Template]:
    if prompts is None:
        return default_templates(micro, with_concept=other is not None)
    if isinstance(prompts, str | Path):
        chosen = read_templates(prompts)
    else:
        chosen = [make_template(text) for text in prompts]
    kept = select(chosen, with_concept=other is not None)
    if not kept:
        raise PromptError("Every prompt needs a second concept ({other}): pass --with NAME.")
    return kept


def _same_images(training: dict[str, Any], folder: Any) -> bool:
    """Whether `folder` (an `ImageFolder`) holds the images a training run recorded: the same
    content hash, or (when masks entered that hash) the same file names; True if unrecorded."""
    if training.get("masks"):
        recorded = training.get("images")
        return recorded is None or recorded == [p.name for p in folder.paths]
    digest = training.get("images_sha256")
    return digest is None or digest == folder.digest


def _make_judge(micro: bool, clip: str | Path | None, device: str) -> Any:
    from perfusion_hub.evaluate.judge import ClipJudge, MicroJudge

    if clip is not None:
        return ClipJudge(clip, device)
    if micro:
        return MicroJudge(device)
    raise PromptError(
        "Text alignment on this base needs a local CLIP model: pass --clip PATH (a folder "
        "saved with transformers' CLIPModel.save_pretrained, with its processor files)."
    )


def _headline(overall: list[Summary], beta: float) -> Summary:
    """The summary at the β closest to `beta` (the concept's default)."""
    return min(overall, key=lambda s: abs(s.beta - beta))


def evaluate_concept(
    hub: Any,
    name: str,
    *,
    base: str | None = None,
    other: str | None = None,
    prompts: str | Path | Sequence[str] | None = None,
    seeds: int = DEFAULT_SEEDS,
    sweep: str | Sequence[str] | None = None,
    images: str | Path | None = None,
    other_images: str | Path | None = None,
    clip: str | Path | None = None,
    out: str | Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    device: str | None = None,
    batch: int = RENDER_BATCH,
    progress: Progress | None = None,
) -> EvalReport:
    """Evaluate concept `name`; see the module docstring. All options are checked, and the
    reference images read, before the base is loaded."""
    from perfusion_hub.compose.options import check_positive_int, default_device
    from perfusion_hub.compose.outputs import ensure_writable_dir
    from perfusion_hub.training.images import read_image_folder

    started = time.monotonic()
    check_positive_int(seeds, "--seeds", 1000)
    check_positive_int(batch, "--batch", 1000)
    betas = parse_betas(sweep)
    record = hub.registry.get(name, base=base)
    concept = hub.registry.load(record)
    micro = concept.base.architecture == MICRO_ARCHITECTURE
    templates = _templates(prompts, micro, other)
    partner = hub.registry.load(hub.registry.get(other, base=record.base_name)) if other else None
    folder = reference_folder(concept, images)
    references = read_image_folder(folder)
    notes = []
    if not _same_images(concept.training or {}, references):
        notes.append(f"{folder} is not the exact image set {name!r} was trained on.")
    partner_images = None
    if partner is not None:
        try:
            partner_images = read_image_folder(reference_folder(partner, other_images)).images
        except TrainingError:
            notes.append(f"Training images of {other!r} unknown: no instance match for pairs.")
    out_dir = ensure_writable_dir(Path(out) if out else hub.settings.renders_dir / "eval" / name)
    device = device or default_device()
    judge = _make_judge(micro, clip, device)
    judge.add_concept(name, concept.superclass, references.images)
    if partner is not None:
        judge.add_concept(partner.name, partner.superclass, partner_images)

    loaded = hub.open_base(record.base_name, device=device)
    rendered, render_notes = _render(hub, loaded, name, other, templates, betas, seeds, batch,
                                     steps, guidance, out_dir, progress)
    notes += render_notes
    images_out = [r.image for r in rendered]
    fidelity = fidelity_scores(judge.embed_images(images_out),
                               judge.embed_images(references.images))
    verdicts = judge.judge(images_out, [r.prompt for r in rendered], name)
    rows = [
        EvalRow(r.kind, r.prompt, r.seed, r.beta, float(fid), v.alignment, v.obeyed,
                v.instance_match, v.missed, str(r.path.relative_to(out_dir)))
        for r, fid, v in zip(rendered, fidelity, verdicts, strict=True)
    ]
    overall = summarize(rows)
    by_kind = summarize(rows, by_kind=True)
    csv_path = out_dir / CSV_NAME
    atomic_write_bytes(csv_path, _csv_bytes(rows))
    plot_path = _plot(out_dir / PLOT_NAME, name, loaded.name, overall)
    if plot_path is None:
        notes.append("No plot: no render has a text-alignment score.")
    report = EvalReport(
        concept=name, base=loaded.name, judge=judge.name, rows=rows, overall=overall,
        by_kind=by_kind, headline=_headline(overall, concept.beta), out_dir=out_dir,
        csv_path=csv_path, plot_path=plot_path, summary_path=out_dir / SUMMARY_NAME,
        reference_images=folder, seconds=time.monotonic() - started, notes=notes,
    )
    atomic_write_bytes(report.summary_path, json.dumps(report.to_json(), indent=2).encode())
    hub.registry.set_metrics(name, {"eval": report.metrics()}, base=record.base_name)
    return report


@dataclass(frozen=True)
class _Rendered:
    kind: str
    prompt: str
    seed: int
    beta: float
    image: Any
    path: Path


def _render(hub: Any, loaded: Any, name: str, other: str | None, templates: list[Template],
            betas: tuple[float | None, ...], seeds: int, batch: int, steps: int | None,
            guidance: float | None, out_dir: Path,
            progress: Progress | None) -> tuple[list[_Rendered], list[str]]:
    """Every template × seed × β on one loaded base, `batch` seeds per pipeline call;
    β is set for the evaluated concept only (a second concept keeps its own). Each PNG
    carries its render parameters. Returns the renders and the renderer's notes."""
    from perfusion_hub.compose.metadata import save_png
    from perfusion_hub.compose.prompt import GateOverrides
    from perfusion_hub.compose.session import ImageRequest, Renderer

    jobs = [(beta, index, list(range(start, min(start + batch, seeds))))
            for beta in betas for index in range(len(templates))
            for start in range(0, seeds, batch)]
    total = len(betas) * len(templates) * seeds
    rendered = []
    with Renderer(hub.registry, loaded) as renderer:
        for beta, index, chunk in jobs:
            template = templates[index]
            prompt = template.fill(name, other)
            gates = {name: GateOverrides(beta=beta)} if beta is not None else None
            request = ImageRequest(prompt, chunk[0], steps=steps, guidance=guidance, gates=gates)
            for image, params in renderer.render_seeds(request, chunk):
                used = next(c.beta for c in params.concepts if c.name == name)
                path = out_dir / "images" / f"beta-{used:.2f}" / (
                    f"{index:02d}-{template.kind}-seed{params.seed}.png")
                save_png(image, path, params)
                rendered.append(_Rendered(template.kind, prompt, params.seed, used, image, path))
            if progress is not None:
                progress(len(rendered), total)
    return rendered, list(renderer.notes)


def _csv_bytes(rows: Sequence[EvalRow]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(row_to_csv(row) for row in rows)
    return buffer.getvalue().encode()


def _plot(path: Path, name: str, base: str, overall: list[Summary]) -> Path | None:
    points = tuple(Point(s.alignment, s.fidelity, f"beta={s.beta:.2f}") for s in overall
                   if s.alignment is not None and s.fidelity is not None)
    if not points:
        return None
    return save_plot(path, [Series(name, points)],
                     f"<{name}> on {base}: fidelity vs text alignment over beta")
