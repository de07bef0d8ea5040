"""Names people give to concepts and bases: short slugs, safe in paths, shells and SQL."""

from __future__ import annotations

import re

from perfusion_hub.errors import InvalidNameError

MAX_NAME_LENGTH = 64
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
ALLOWED = (
    "lowercase letters, digits, '-' and '_', starting with a letter or digit, "
    f"at most {MAX_NAME_LENGTH} characters (e.g. 'my-cat')"
)


def validate_name(name: str, kind: str = "concept") -> str:
    """Return `name` if it is a slug, else raise `InvalidNameError` saying what is allowed."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"A {kind} name is required: use {ALLOWED}.")
    if len(name) > MAX_NAME_LENGTH or not _SLUG.fullmatch(name):
        shown = name if len(name) <= 40 else name[:37] + "..."
        raise InvalidNameError(f"Invalid {kind} name {shown!r}: use {ALLOWED}.")
    return name


def token_for(name: str) -> str:
    """The placeholder token of a concept: `my-cat` → `<my-cat>`."""
    return f"<{validate_name(name)}>"
