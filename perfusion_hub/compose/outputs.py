"""Where renders go: `--out` as a file or a folder, checked before any work is done."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from perfusion_hub.errors import OutputError

_WORD = re.compile(r"[a-z0-9]+")
MAX_SLUG = 48


def prompt_slug(text: str) -> str:
    """A file-name-safe summary of a prompt: `a <my-cat> on a chair` → `a-my-cat-on-a-chair`."""
    slug = "-".join(_WORD.findall(text.lower()))[:MAX_SLUG].strip("-")
    return slug or "render"


def ensure_writable_dir(folder: Path) -> Path:
    """Create `folder` if needed and prove that a file can be written in it."""
    folder = Path(folder).expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"Output folder {folder} is a file; choose a folder or a .png path.")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputError(
            f"Cannot write to {folder} ({error.strerror or error}); choose another --out."
        ) from None
    return folder


class OutputPlan:
    """Names for the PNGs of one `compose` call.

    `--out` ending in `.png` names the file: `NAME.png` for a single image, else
    `NAME[-<sweep point>][-<seed>].png` (the seed only when the call renders several seeds).
    Any other `--out`, or the renders folder by default, is a folder in which images are named
    `<prompt-slug>-<seed>[-<sweep point>].png`, never overwriting an existing file.
    """

    def __init__(self, out: str | Path | None, default_dir: Path, seeds: int) -> None:
        target = Path(out).expanduser() if out is not None else Path(default_dir)
        self.file = target if target.suffix.lower() == ".png" and not target.is_dir() else None
        self.folder = ensure_writable_dir(self.file.parent if self.file else target)
        self.seeds = seeds
        self._taken: set[Path] = set()

    def path(self, slug: str, seed: int, suffix: str = "") -> Path:
        """The path of the image of `seed` (at sweep point `suffix`)."""
        if self.file is not None:
            parts = [self.file.stem, suffix, str(seed) if self.seeds > 1 else ""]
            return self.file.with_name("-".join(part for part in parts if part) + ".png")
        stem = "-".join(part for part in (slug, str(seed), suffix) if part)
        candidate = self.folder / f"{stem}.png"
        number = 2
        while candidate.exists() or candidate in self._taken:
            candidate = self.folder / f"{stem}-{number}.png"
            number += 1
        self._taken.add(candidate)
        return candidate

    def sheet_path(self, slug: str, seed: int) -> Path:
        """The path of a sweep's contact sheet."""
        if self.file is not None:
            return self.file.with_name(f"{self.file.stem}-sweep.png")
        return self.path(slug, seed, "sweep")
