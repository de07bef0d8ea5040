"""perfusion-hub: Perfusion text-to-image personalization as a tool."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from perfusion_hub.api import Hub

__all__ = ["Hub", "__version__"]


def __getattr__(name: str):
    if name == "Hub":
        from perfusion_hub.api import Hub

        return Hub
    raise AttributeError(f"module 'perfusion_hub' has no attribute {name!r}")
