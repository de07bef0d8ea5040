"""Content-addressed store of concept files: `<root>/<hash[:2]>/<hash>.safetensors`."""

from __future__ import annotations

import re
from pathlib import Path

from perfusion_hub.files import atomic_write_bytes

_HEX64 = re.compile(r"[0-9a-f]{64}")


class ConceptStore:
    """Files named by the content hash of their tensors; written atomically, never edited."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def relative(content_hash: str) -> str:
        """Location of a hash inside the store (what the database records)."""
        if not _HEX64.fullmatch(content_hash):
            raise ValueError(f"not a SHA-256 hex digest: {content_hash!r}")
        return f"{content_hash[:2]}/{content_hash}.safetensors"

    def path(self, relative: str) -> Path:
        """Absolute path of a stored file from its recorded location."""
        return self.root / relative

    def path_of(self, content_hash: str) -> Path:
        return self.path(self.relative(content_hash))

    def has(self, content_hash: str) -> bool:
        return self.path_of(content_hash).is_file()

    def put(self, content_hash: str, data: bytes) -> Path:
        """Write `data` under `content_hash` atomically (temporary file, fsync, rename)."""
        target = self.path_of(content_hash)
        atomic_write_bytes(target, data)
        return target

    def discard(self, content_hash: str) -> None:
        """Delete the file of `content_hash` if present."""
        self.path_of(content_hash).unlink(missing_ok=True)
