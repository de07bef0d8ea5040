"""`Hub`: the Python face of perfusion-hub. The CLI calls exactly these methods.

    from perfusion_hub import Hub
    hub = Hub()                       # $PHUB_HOME or the user data dir
    hub.list()                        # registered concepts
    images = hub.compose("a <my-cat> on a <my-chair>", seed=0)

Heavy libraries (torch, diffusers) are imported only by the methods that need them, so
registry operations stay fast.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from perfusion_hub.settings import Settings


class Hub:
    """One home directory: its registry, concept store, bases and renders."""

    def __init__(self, home: str | Path | None = None) -> None:
        self.settings = Settings.resolve(home)

    @cached_property
    def registry(self):
        """The registry (database + concept store), upgraded to the current schema on first use."""
        from perfusion_hub.registry import Registry

        return Registry(self.settings)
