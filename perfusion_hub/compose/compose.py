"""`compose`: render one prompt (several seeds, a β/τ sweep, or a PNG's own parameters again).

The single code path behind `phub compose` and `Hub.compose`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from PIL import Image

from perfusion_hub.compose.metadata import RenderParameters, read_png_parameters
from perfusion_hub.compose.options import (
    check_guidance,
    check_positive_int,
    check_seed,
    default_device,
    parse_size,
    parse_sweep,
    torch_dtype,
)
from perfusion_hub.compose.outputs import OutputPlan, prompt_slug
from perfusion_hub.compose.prompt import GateOverrides, check_beta, check_tau, parse_prompt
from perfusion_hub.compose.schedulers import check_scheduler_name
from perfusion_hub.compose.session import ImageRequest, Renderer
from perfusion_hub.compose.sheet import contact_sheet
from perfusion_hub.errors import IncompatibleBaseError, PromptError
from perfusion_hub.files import atomic_path

MAX_IMAGES = 256


class RenderedImages(list):
    """The images of one `compose` call, each opened from the PNG written for it
    (`image.filename` is its path, `image.info` holds its metadata); `sheet` is the contact
    sheet's path for a sweep; `notes` what the concepts' combination should tell the user
    (e.g. gates that open on each other's tokens)."""

    sheet: Path | None = None
    notes: tuple[str, ...] = ()

    @property
    def paths(self) -> list[Path]:
        return [Path(image.filename) for image in self]


@dataclass
class ComposeOptions:
    """Options of one `compose` call; None means the default (or the PNG's value)."""

    prompt: str | None = None
    base: str | None = None
    negative: str | None = None
    seed: int | None = None
    num_images: int | None = None
    steps: int | None = None
    guidance: float | None = None
    scheduler: str | None = None
    size: str | tuple[int, int] | None = None
    beta: float | None = None
    tau: float | None = None
    out: str | Path | None = None
    device: str | None = None
    dtype: str | None = None
    sweep: list[str] = field(default_factory=list)
    from_png: str | Path | None = None


def compose(hub: Any, options: ComposeOptions) -> RenderedImages:
    """Render `options.prompt` (or the prompt of `options.from_png`); save, log and return the
    images. All inputs and the output location are checked before the base is loaded."""
    if options.from_png is not None and options.prompt:
        raise PromptError("Give either a PROMPT or --from-png, not both.")
    source = read_png_parameters(options.from_png) if options.from_png is not None else None
    plan = _plan(options, source)
    outputs = OutputPlan(options.out, hub.settings.renders_dir,
                         len({request.seed for request, _ in plan.requests}))
    slug = prompt_slug(parse_prompt(plan.requests[0][0].prompt).text)

    loaded = hub.open_base(plan.base, device=plan.device or default_device(), dtype=plan.dtype)
    if source is not None:
        _check_same_base(source, loaded)
    images = RenderedImages()
    with Renderer(hub.registry, loaded) as renderer:
        if source is not None:
            _check_same_concepts(source, renderer)
        rendered: list[tuple[Image.Image, RenderParameters]] = []
        for request, suffix in plan.requests:
            image, params = renderer.render(request)
            path = renderer.save(image, params, outputs.path(slug, request.seed, suffix))
            rendered.append((image, params))
            images.append(_reopen(path))
        images.notes = tuple(renderer.notes)
    if plan.labels is not None:
        images.sheet = _save_sheet(outputs, slug, rendered, plan.labels,
                                   plan.requests[0][0].seed)
    return images


@dataclass
class _Plan:
    """Checked inputs of one call: the images (with file-name suffixes), sweep labels, base,
    device and dtype."""

    requests: list[tuple[ImageRequest, str]]
    labels: list[list[str]] | None
    base: str | None
    device: str | None
    dtype: Any


def _plan(options: ComposeOptions, source: RenderParameters | None) -> _Plan:
    """Options over the PNG's parameters (when re-rendering) over defaults, all validated."""
    def pick(given: Any, check: Any, recorded: Any, default: Any = None) -> Any:
        if given is not None:
            return check(given)
        return recorded if source is not None else default

    prompt = source.prompt if source is not None else options.prompt
    if prompt is None:
        raise PromptError("A prompt is required (or --from-png FILE).")
    parsed = parse_prompt(prompt)
    seed = pick(options.seed, check_seed, source and source.seed, secrets.randbelow(2**32))
    count = check_positive_int(options.num_images or 1, "--num-images", MAX_IMAGES)
    size = pick(options.size, lambda s: parse_size(s) if isinstance(s, str) else s,
                source and (source.width, source.height))
    steps = pick(options.steps, lambda n: check_positive_int(n, "--steps", 1000),
                 source and source.steps)
    guidance = pick(options.guidance, check_guidance, source and source.guidance)
    scheduler = pick(options.scheduler, check_scheduler_name, source and source.scheduler)
    negative = pick(options.negative, str, source and source.negative_prompt, "")
    beta = None if options.beta is None else check_beta(options.beta, "--beta")
    tau = None if options.tau is None else check_tau(options.tau, "--tau")
    gates = None if source is None else {
        c.name: GateOverrides(beta=c.beta if beta is None else beta,
                              tau=c.tau if tau is None else tau, lock=c.lock)
        for c in source.concepts}
    sweep = parse_sweep(options.sweep)
    if sweep.active and not parsed.names:
        raise PromptError("--sweep varies the gates of concepts; the prompt names none.")

    first = ImageRequest(prompt=prompt, seed=seed, negative=negative, steps=steps,
                         guidance=guidance, size=size, scheduler=scheduler, beta=beta, tau=tau,
                         gates=gates)
    requests: list[tuple[ImageRequest, str]] = []
    labels: list[list[str]] | None = [] if sweep.active else None
    for sweep_beta, sweep_tau in sweep.points():
        swept = {"beta": sweep_beta, "tau": sweep_tau}
        swept = {key: value for key, value in swept.items() if value is not None}
        point = GateOverrides(**swept)
        point_gates = gates if not sweep.active else {
            name: point.over((gates or {}).get(name, GateOverrides())) for name in parsed.names}
        suffix = "-".join(f"{key}{value:g}" for key, value in swept.items())
        for index in range(count):
            requests.append((replace(first, seed=seed + index, gates=point_gates), suffix))
            if labels is not None:
                labels.append([f"{key}={value:.3g}" for key, value in swept.items()]
                              + [f"seed={seed + index}"])
    return _Plan(
        requests=requests, labels=labels,
        base=pick(options.base, str, source and source.base_name),
        device=options.device or (_recorded_device(source) if source is not None else None),
        dtype=torch_dtype(pick(options.dtype, str, source and source.dtype)),
    )


def _recorded_device(source: RenderParameters) -> str | None:
    """The device a PNG was rendered on, if this machine has it (same device, same pixels)."""
    import torch

    if source.device == "cpu":
        return "cpu"
    return "cuda" if source.device.startswith("cuda") and torch.cuda.is_available() else None


def _check_same_base(source: RenderParameters, loaded: Any) -> None:
    wanted = str(source.base_fingerprint.get("weights_hash", ""))
    if wanted != loaded.fingerprint.weights_hash:
        raise IncompatibleBaseError(
            f"The PNG was rendered on base {source.base_name!r} [{wanted[:12]}], but base "
            f"{loaded.name!r} is {loaded.fingerprint.label}: pass --base with the original base."
        )


def _check_same_concepts(source: RenderParameters, renderer: Renderer) -> None:
    for use in source.concepts:
        _, content_hash = renderer.concept(use.name)
        if content_hash != use.hash:
            raise IncompatibleBaseError(
                f"Concept {use.name!r} has changed since the PNG was rendered (content hash "
                f"{content_hash[:12]}, the PNG used {use.hash[:12]}); import the original "
                "concept file under that name to render it again."
            )


def _reopen(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


def _save_sheet(plan: OutputPlan, slug: str, rendered: list[tuple[Image.Image, RenderParameters]],
                labels: list[list[str]], seed: int) -> Path:
    per_point = len(rendered) // max(1, len({tuple(lbl[:-1]) for lbl in labels}))
    columns = per_point if per_point > 1 else len(rendered)
    title = rendered[0][1].prompt
    sheet = contact_sheet([image for image, _ in rendered], labels, columns=columns, title=title)
    path = plan.sheet_path(slug, seed)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return path
