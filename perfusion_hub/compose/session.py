"""`Renderer`: one loaded base, the concept edit currently installed on it, and image rendering.

Every image — from `phub compose`, a sweep, `--from-png` or a `phub render` batch — goes
through `Renderer.render`: parse the prompt, resolve its concepts in the registry, install them
as one gated multi-concept edit (method.md §4; reused while the next image needs the same
concepts), render with a CPU `torch.Generator` seeded for that image alone, and describe the
result as `RenderParameters`. `Renderer.save` writes the PNG atomically and logs the render.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from perfusion_hub.compose.metadata import (
    ConceptUse,
    RenderParameters,
    package_versions,
    save_png,
)
from perfusion_hub.compose.prompt import GateOverrides, ParsedPrompt, parse_prompt
from perfusion_hub.compose.schedulers import (
    make_scheduler,
    scheduler_class,
    scheduler_from_spec,
    scheduler_spec,
)
from perfusion_hub.concepts import Concept
from perfusion_hub.errors import IncompatibleBaseError, NotFoundError

if TYPE_CHECKING:
    from perfusion_hub.bases import LoadedBase
    from perfusion_hub.registry import Registry

DEFAULT_STEPS = 30
DEFAULT_GUIDANCE = 7.5


@dataclass(frozen=True)
class ImageRequest:
    """One image to render. `beta`/`tau` apply to every concept without an inline override;
    `gates` (by concept name) wins over both and is how sweeps and `--from-png` set them."""

    prompt: str
    seed: int
    negative: str = ""
    steps: int | None = None
    guidance: float | None = None
    size: tuple[int, int] | None = None
    scheduler: str | dict[str, Any] | None = None
    beta: float | None = None
    tau: float | None = None
    gates: dict[str, GateOverrides] | None = None


@dataclass(frozen=True)
class ResolvedConcept:
    """A registered concept as one render uses it."""

    concept: Concept
    content_hash: str
    gate: GateOverrides

    @property
    def name(self) -> str:
        return self.concept.name


class Renderer:
    """Renders images on one loaded base (`Hub.open_base`) with concepts from `registry`."""

    def __init__(self, registry: Registry, base: LoadedBase, *,
                 record_gates: bool = False) -> None:
        self.registry = registry
        self.base = base
        self.pipe = base.pipe
        self.record_gates = record_gates
        self.edit: Any = None
        self._edit_key: tuple = ()
        self.notes: list[str] = []  # what the concepts of the renders so far tell the user
        self._noted: set[tuple] = set()  # (concept set, prompt, gates) whose notes are taken
        self._concepts: dict[str, tuple[Concept, str]] = {}
        self._loaded_scheduler = self.pipe.scheduler
        options = getattr(base, "options", None) or {}
        own = options.get("scheduler")
        self._base_scheduler = (
            scheduler_class(own).from_config(self.pipe.scheduler.config)
            if own and own != type(self.pipe.scheduler).__name__ else self.pipe.scheduler)
        self._versions = package_versions()
        self.default_steps = int(options.get("steps", DEFAULT_STEPS))
        self.default_guidance = float(options.get("guidance", DEFAULT_GUIDANCE))
        self.default_size = (int(base.resolution), int(base.resolution))

    # concepts ---------------------------------------------------------------------------------

    def concept(self, name: str) -> tuple[Concept, str]:
        """The registered concept `name` of this base and its content hash (cached)."""
        if name not in self._concepts:
            try:
                record = self.registry.get(name, base=self.base.name)
            except NotFoundError as error:
                raise self._other_base_error(name) or error from None
            self._concepts[name] = (self.registry.load(record), record.content_hash)
        return self._concepts[name]

    def _other_base_error(self, name: str) -> IncompatibleBaseError | None:
        """The error for a concept that exists, but only for other bases."""
        elsewhere = sorted({r.base_name for r in self.registry.list() if r.name == name})
        if not elsewhere:
            return None
        return IncompatibleBaseError(
            f"Concept {name!r} belongs to base {', '.join(repr(b) for b in elsewhere)}, not to the "
            f"selected base {self.base.name!r}: choose it with --base {elsewhere[0]}, or use a "
            "concept trained on this base."
        )

    def resolve(self, parsed: ParsedPrompt, request: ImageRequest) -> list[ResolvedConcept]:
        """The prompt's concepts with effective gates: `gates` > inline > `beta`/`tau` > the
        concept's own defaults."""
        command = GateOverrides(beta=request.beta, tau=request.tau)
        inline = parsed.overrides()
        exact = request.gates or {}
        resolved = []
        for name in parsed.names:
            concept, content_hash = self.concept(name)
            own = GateOverrides(beta=concept.beta, tau=concept.tau, lock=concept.lock)
            gate = exact.get(name, GateOverrides()).over(
                inline[name].over(command.over(own)))
            resolved.append(ResolvedConcept(concept, content_hash, gate))
        return resolved

    def _install(self, resolved: list[ResolvedConcept]) -> None:
        """Install the concepts as one edit, unless the same set (and locks) is installed."""
        from perfusion_hub.perfusion import apply

        key = tuple((r.content_hash, r.name, r.gate.lock) for r in resolved)
        if key == self._edit_key and (self.edit is not None or not key):
            return
        self.uninstall()
        if resolved:
            concepts = [dataclasses.replace(r.concept, beta=r.gate.beta, tau=r.gate.tau,
                                            lock=r.gate.lock) for r in resolved]
            self.edit = apply(self.pipe, concepts, self.base.inverse_covariance,
                              record_gates=self.record_gates)
        self._edit_key = key

    def uninstall(self) -> None:
        """Remove the installed edit (the pipeline is exactly as loaded)."""
        if self.edit is not None:
            self.edit.remove()
            self.edit = None
        self._edit_key = ()

    def close(self) -> None:
        self.uninstall()
        self.pipe.scheduler = self._loaded_scheduler

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # rendering --------------------------------------------------------------------------------

    def _scheduler(self, choice: str | dict[str, Any] | None) -> Any:
        if choice is None:
            return self._base_scheduler
        if isinstance(choice, dict):
            return scheduler_from_spec(choice)
        return make_scheduler(choice, self._base_scheduler.config)

    def render(self, request: ImageRequest) -> tuple[Image.Image, RenderParameters]:
        """Render one image; the same request on the same machine gives the same pixels."""
        return self.render_seeds(request, [request.seed])[0]

    def render_seeds(self, request: ImageRequest,
                     seeds: list[int]) -> list[tuple[Image.Image, RenderParameters]]:
        """Render `request` once per seed in one batched pipeline call (each image has its own
        seeded generator, so it matches the single render up to float rounding). Global
        locking renders one seed at a time: its key encodings are laid out for one image."""
        import torch

        if not seeds:
            return []
        parsed = parse_prompt(request.prompt)
        resolved = self.resolve(parsed, request)
        if len(seeds) > 1 and any(r.gate.lock == "global" for r in resolved):
            return [self.render(dataclasses.replace(request, seed=seed)) for seed in seeds]
        self._install(resolved)
        pipe = self.pipe
        pipe.scheduler = self._scheduler(request.scheduler)
        steps = request.steps or self.default_steps
        guidance = self.default_guidance if request.guidance is None else request.guidance
        width, height = request.size or self.default_size
        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        kwargs: dict[str, Any] = {}
        if self.edit is not None:
            kwargs = {"concept_betas": {r.name: r.gate.beta for r in resolved},
                      "concept_taus": {r.name: r.gate.tau for r in resolved}}
            self._take_notes(parsed.text, kwargs["concept_betas"], kwargs["concept_taus"])
            if any(r.gate.lock == "global" for r in resolved):
                kwargs["key_encoder_hidden_states"] = self._key_states(
                    parsed.text, request.negative, guidance)
        output = pipe(
            prompt=parsed.text, negative_prompt=request.negative or None,
            num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
            num_images_per_prompt=len(seeds), generator=generators, output_type="pil",
            cross_attention_kwargs=kwargs or None,
        )
        params = RenderParameters(
            prompt=request.prompt, negative_prompt=request.negative, seed=seeds[0],
            steps=steps, guidance=guidance, width=width, height=height,
            scheduler=scheduler_spec(pipe.scheduler), base_name=self.base.name,
            base_fingerprint=self.base.fingerprint.to_json(),
            concepts=tuple(ConceptUse(r.name, r.content_hash, float(r.gate.beta),
                                      float(r.gate.tau), str(r.gate.lock)) for r in resolved),
            dtype=str(pipe.unet.dtype).removeprefix("torch."), device=str(pipe.unet.device),
            versions=self._versions,
        )
        return [(image, dataclasses.replace(params, seed=seed))
                for image, seed in zip(output.images, seeds, strict=True)]

    def _take_notes(self, text: str, betas: dict[str, float], taus: dict[str, float]) -> None:
        """Add what the installed concepts' gates note on `text`, once per concept set, prompt
        and gate parameters (batch renders repeat them)."""
        key = (self._edit_key, text, tuple(betas.items()), tuple(taus.items()))
        if key in self._noted:
            return
        self._noted.add(key)
        self.notes += [n for n in self.edit.gate_notes(text, betas, taus) if n not in self.notes]

    def _key_states(self, text: str, negative: str, guidance: float) -> Any:
        """Key-path encoding for global locking (method.md §3), laid out like the pipeline's."""
        import torch

        with torch.no_grad():
            uses_guidance = guidance > 1.0 and pipe_has_cfg(self.pipe)
            negative_embeds = self.edit.encode([negative]) if uses_guidance else None
            return self.edit.key_encoder_hidden_states(
                text, guidance=uses_guidance, negative_prompt_embeds=negative_embeds)

    def save(self, image: Image.Image, params: RenderParameters, path: Path) -> Path:
        """Write the PNG atomically, then log the render in the registry."""
        save_png(image, path, params)
        self.registry.log_render(
            params.prompt, [dataclasses.asdict(c) for c in params.concepts], params.seed,
            params.to_json(), path,
        )
        return path


def pipe_has_cfg(pipe: Any) -> bool:
    """Whether the pipeline runs classifier-free guidance at scale > 1 (no guidance-embedding
    UNet)."""
    return getattr(pipe.unet.config, "time_cond_proj_dim", None) is None
