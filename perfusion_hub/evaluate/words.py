"""What a micro-grammar prompt asks for, word by word, so the micro checker can judge it.

A concept token stands for an object of its superclass whose look is the concept's, so its
colour is only asked for when the prompt writes one ("a red <my-cat>"); everything else the
prompt writes (category, colour of other objects, position, relation, background) is checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from perfusion_hub.compose.prompt import parse_prompt
from perfusion_hub.micro.world import (
    COLOURS,
    PATTERNS,
    SIZES,
    CaptionError,
    SceneSpec,
    parse_caption,
)

_FILLER_COLOUR = "white"


@dataclass(frozen=True)
class Expectation:
    """The scene a prompt describes; `concepts[i]` names the concept drawn as object i (or is
    None), and `colour_given[i]` says whether the prompt wrote object i's colour."""

    scene: SceneSpec
    concepts: tuple[str | None, ...]
    colour_given: tuple[bool, ...]

    def checks(self) -> list[str]:
        """Names of the checks this prompt allows, in a stable order."""
        names = []
        for index, obj in enumerate(self.scene.objects):
            names.append(f"object{index}.category")
            if self.colour_given[index]:
                names.append(f"object{index}.colour")
            if obj.pattern is not None:
                names.append(f"object{index}.pattern")
            if obj.position is not None:
                names.append(f"object{index}.position")
        if self.scene.relation is not None:
            names.append("relation")
        if self.scene.background is not None:
            names.append("background")
        return names


def expectation(prompt: str, superclasses: Mapping[str, str]) -> Expectation | None:
    """Parse a compose prompt in the micro grammar; None when it is outside the grammar (or
    names a concept whose superclass is not a micro category)."""
    parsed = parse_prompt(prompt)
    words: list[str] = []
    concept_at: dict[int, str] = {}  # noun-phrase index → concept name
    given: dict[int, bool] = {}
    phrases = -1
    ref_by_token = {f"<{ref.name}>": ref.name for ref in parsed.refs}
    for word in parsed.text.lower().split():
        if word in ("a", "an"):
            phrases += 1
        name = ref_by_token.get(word)
        if name is None:
            words.append(word)
            continue
        if name not in superclasses:
            return None
        colour_written = _colour_before(words)
        given[phrases] = colour_written
        concept_at[phrases] = name
        filler = [] if colour_written else [_FILLER_COLOUR]
        words.extend([*filler, superclasses[name]])
    try:
        scene = parse_caption(" ".join(words))
    except CaptionError:
        return None
    n = len(scene.objects)
    return Expectation(
        scene=scene,
        concepts=tuple(concept_at.get(i) for i in range(n)),
        colour_given=tuple(given.get(i, True) for i in range(n)),
    )


def _colour_before(words: list[str]) -> bool:
    """Whether the words just before a concept token name its colour: "a [big] red [striped]"."""
    for word in reversed(words):
        if word in COLOURS:
            return True
        if word not in PATTERNS and word not in SIZES:
            return False
    return False
