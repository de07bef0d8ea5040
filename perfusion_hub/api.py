"""`Hub`: the Python face of perfusion-hub. The CLI calls exactly these methods.

    from perfusion_hub import Hub
    hub = Hub()                       # $PHUB_HOME or the user data dir
    hub.list()                        # registered concepts
    images = hub.compose("a <my-cat> on a <my-chair>", seed=0)

Heavy libraries (torch, diffusers) are imported only by the methods that need them, so
registry operations stay fast.
"""

from __future__ import annotations

import builtins
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perfusion_hub.settings import Settings

if TYPE_CHECKING:
    from perfusion_hub.bases import LoadedBase
    from perfusion_hub.compose import BatchSummary, RenderedImages
    from perfusion_hub.concepts import Concept
    from perfusion_hub.evaluate import DemoReport, EvalReport
    from perfusion_hub.registry import (
        BaseRecord,
        ConceptRecord,
        ConceptSummary,
        RenderRecord,
        VerifyReport,
    )


class Hub:
    """One home directory: its registry, concept store, bases and renders."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.settings = Settings.resolve(home)

    @cached_property
    def registry(self):
        """The registry (database + concept store), upgraded to the current schema on first use."""
        from perfusion_hub.registry import Registry

        return Registry(self.settings)

    # -- registry (fast: no torch) -------------------------------------------------------------

    def list(self, base: str | None = None,
             superclass: str | None = None) -> builtins.list[ConceptSummary]:
        """Registered concepts, optionally of one base or superclass."""
        return self.registry.list(base=base, superclass=superclass)

    def get(self, name: str, base: str | None = None) -> ConceptRecord:
        """The registry record of one concept."""
        return self.registry.get(name, base=base)

    def load(self, name: str, base: str | None = None) -> Concept:
        """A registered concept's tensors and metadata."""
        return self.registry.load(self.registry.get(name, base=base))

    def import_file(self, path: str | Path, name: str | None = None, *,
                    replace: bool = False) -> ConceptRecord:
        """Copy a concept file into the store and register it (same content: same record)."""
        return self.registry.import_file(path, name, replace=replace)

    def export(self, name: str, dest: str | Path, base: str | None = None, *,
               overwrite: bool = False) -> Path:
        """Write a registered concept to `dest` (a file or a folder)."""
        return self.registry.export(name, dest, base=base, overwrite=overwrite)

    def remove(self, name: str, base: str | None = None) -> ConceptRecord:
        """Unregister a concept (its stored file goes when nothing else uses it)."""
        return self.registry.remove(name, base=base)

    def rename(self, old: str, new: str, base: str | None = None) -> ConceptRecord:
        """Rename a concept; its identity (content hash) is unchanged."""
        return self.registry.rename(old, new, base=base)

    def verify(self) -> VerifyReport:
        """Re-hash every stored concept file."""
        return self.registry.verify()

    def history(self, limit: int | None = 50) -> builtins.list[RenderRecord]:
        """Logged renders, newest first."""
        return self.registry.list_renders(limit=limit)

    def database_revision(self) -> tuple[str | None, str]:
        """(schema revision of the database, revision this version writes), without upgrading."""
        from perfusion_hub.registry import Registry

        with Registry(self.settings, auto_upgrade=False) as registry:
            return registry.revision(), registry.head_revision()

    def upgrade_database(self) -> tuple[str | None, str | None, Path | None]:
        """Upgrade the schema to head: (revision before, after, backup file or None)."""
        from perfusion_hub.registry import Registry

        with Registry(self.settings, auto_upgrade=False) as registry:
            return registry.upgrade()

    # -- bases ----------------------------------------------------------------------------------

    def add_base(self, source: str | Path, name: str | None = None,
                 captions: builtins.list[str] | None = None, device: str = "cpu") -> BaseRecord:
        """Register a base (hub id, diffusers folder, single-file checkpoint or "micro") and
        compute its text statistics C⁻¹ over `captions` (default: the built-in corpus)."""
        from perfusion_hub.registry.bases import register_base

        return register_base(self.registry, self.settings, source, name, captions, device)

    def bases(self) -> builtins.list[BaseRecord]:
        """Registered bases."""
        return self.registry.list_bases()

    def open_base(self, base: str | None = None, device: str = "cpu",
                  dtype: Any = None) -> LoadedBase:
        """Load a base (registered name or source; default $PHUB_DEFAULT_BASE, else "micro")
        with its fingerprint and C⁻¹; registered and analysed on first use."""
        import torch

        from perfusion_hub.registry.bases import open_base

        return open_base(self.registry, self.settings, base, device=device,
                         dtype=dtype or torch.float32)

    # -- training -------------------------------------------------------------------------------

    def train(self, images: str | Path, *, name: str, superclass: str, **options: Any) -> Any:
        """Train concept `name` (token `<name>`) from the images in a folder and register it
        (method.md §5). Options: base, masks, force, resume, reporter (e.g.
        `RichReporter()`), on_step, and the `TrainOptions` fields (steps, batch_size,
        grad_accum, lr_embedding, lr_values, weight_decay, max_embedding_norm, lock, method,
        seed, resolution, flip, device, preview_every, checkpoint_every). Returns a
        `TrainResult`; Ctrl-C raises `TrainingInterrupted` after checkpointing (continue with
        resume=True)."""
        from perfusion_hub.training import train_concept

        return train_concept(self, images, name=name, superclass=superclass, **options)

    # -- composition ----------------------------------------------------------------------------

    def compose(self, prompt: str | None = None, **options: Any) -> RenderedImages:
        """Render `prompt` (`<name>` inserts a registered concept; `<name:beta=0.6>` overrides
        its gate) and save each image as a PNG with its parameters; log every render.

        Options: base, negative, seed, num_images, steps, guidance, scheduler, size ("WxH"),
        beta, tau, out (.png file or folder), device, dtype, sweep (["beta=0.5:0.8:4"]),
        from_png (render a phub PNG again). Returns the images as saved (`image.filename` is
        the path); `.sheet` is a sweep's contact sheet.
        """
        from perfusion_hub.compose import ComposeOptions, compose

        return compose(self, ComposeOptions(prompt=prompt, **options))

    def render(self, jobs: str | Path | Any, **options: Any) -> BatchSummary:
        """Render a job file (JSONL or YAML) or an iterable of entries on one loaded base,
        skipping jobs whose PNGs exist. Options: base, out, seed, negative, steps, guidance,
        scheduler, size, beta, tau, shard ("i/n"), skip_invalid, device, dtype, progress."""
        from perfusion_hub.compose import render_jobs

        return render_jobs(self, jobs, **options)

    # -- evaluation -----------------------------------------------------------------------------

    def evaluate(self, name: str, **options: Any) -> EvalReport:
        """Render concept `name` over prompt templates × seeds × β and measure fidelity (image
        similarity to its training images) and text alignment; write results.csv, the
        fidelity-vs-alignment plot and summary.json, and store the summary as its `eval`
        metrics. Options: base, other (a second concept), prompts (file or list of templates
        with `{}`), seeds, sweep ("beta=0.5:0.8:4"), images (training images, if not
        recorded), other_images, clip (local CLIP folder; required off the micro base), out,
        steps, guidance, device, progress (callback(done, total))."""
        from perfusion_hub.evaluate import evaluate_concept

        return evaluate_concept(self, name, **options)

    def demo(self, **options: Any) -> DemoReport:
        """Train <my-cat> and <my-chair> on the micro base from generated images, compose
        "a <my-cat> on a <my-chair>", write a contact sheet and evaluate. Options: out, steps,
        images, renders, eval_seeds, device, say (callback(line)), reporter, progress."""
        from perfusion_hub.evaluate import run_demo

        return run_demo(self, **options)
