"""Evaluation prompts: templates with `{}` for the concept, grouped by what they test.

Kinds: `plain` ("a {}"), `background` and `position` (recontextualised), `property` (a changed
attribute), `other-object` (next to something else), `with-concept` (together with a second
concept), `custom` (from a prompts file). The micro base gets templates in its own grammar,
other bases photo-style ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from perfusion_hub.errors import PromptError
from perfusion_hub.names import token_for

PLACEHOLDER = "{}"
OTHER_PLACEHOLDER = "{other}"


@dataclass(frozen=True)
class Template:
    """A prompt with `{}` for the evaluated concept and optionally `{other}` for a second one."""

    kind: str
    text: str

    def fill(self, concept: str, other: str | None = None) -> str:
        """The compose prompt: `{}` → `<concept>`, `{other}` → `<other>`."""
        if OTHER_PLACEHOLDER in self.text:
            if other is None:
                raise PromptError(
                    f"Template {self.text!r} needs a second concept: pass --with NAME."
                )
            text = self.text.replace(OTHER_PLACEHOLDER, token_for(other))
        else:
            text = self.text
        return text.replace(PLACEHOLDER, token_for(concept))


MICRO_TEMPLATES: tuple[Template, ...] = (
    Template("plain", "a {}"),
    Template("background", "a {} on a green background"),
    Template("background", "a {} on a white background"),
    Template("position", "a {} on the left"),
    Template("position", "a {} on the right on a yellow background"),
    Template("property", "a red {}"),
    Template("other-object", "a {} next to a red ball"),
    Template("other-object", "a {} left of a blue cup"),
)
MICRO_WITH_CONCEPT: tuple[Template, ...] = (
    Template("with-concept", "a {} on a {other}"),
    Template("with-concept", "a {} next to a {other}"),
)

PHOTO_TEMPLATES: tuple[Template, ...] = (
    Template("plain", "a photo of a {}"),
    Template("background", "a photo of a {} on the beach"),
    Template("background", "a photo of a {} in the snow"),
    Template("position", "a photo of a {} on top of a wooden table"),
    Template("property", "a photo of a red {}"),
    Template("other-object", "a photo of a {} next to a red ball"),
)
PHOTO_WITH_CONCEPT: tuple[Template, ...] = (
    Template("with-concept", "a photo of a {} next to a {other}"),
)


def default_templates(micro: bool, with_concept: bool) -> list[Template]:
    """The built-in templates for a base; with `with_concept`, also the two-concept ones."""
    single, pair = (MICRO_TEMPLATES, MICRO_WITH_CONCEPT) if micro else (
        PHOTO_TEMPLATES, PHOTO_WITH_CONCEPT)
    return [*single, *(pair if with_concept else ())]


def make_template(text: str, where: str = "") -> Template:
    """A user's template (kind `custom`, or `with-concept` when it holds `{other}`); `where`
    prefixes the error for a template without `{}`."""
    if PLACEHOLDER not in text:
        raise PromptError(
            f"{where}{text!r} has no '{{}}' where the concept goes "
            "(e.g. 'a {} on a green background')."
        )
    return Template("with-concept" if OTHER_PLACEHOLDER in text else "custom", text)


def read_templates(path: str | Path) -> list[Template]:
    """Templates from a text file: one per line, `{}` for the concept, `{other}` for the second
    one; blank lines and lines starting with `#` are skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise PromptError(f"Cannot read the prompts file {path}: {error.strerror}.") from None
    templates = [
        make_template(line.strip(), f"{path}:{number}: ")
        for number, line in enumerate(lines, start=1)
        if line.strip() and not line.strip().startswith("#")
    ]
    if not templates:
        raise PromptError(
            f"The prompts file {path} holds no prompts: write one per line with '{{}}'."
        )
    return templates


def select(templates: Sequence[Template], with_concept: bool) -> list[Template]:
    """Drop two-concept templates when no second concept is given."""
    return [t for t in templates if with_concept or OTHER_PLACEHOLDER not in t.text]
