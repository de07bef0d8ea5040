"""The default caption corpus for base text statistics: a deterministic generator over a built-in
vocabulary, so that no external dataset is needed. `read_captions` takes a user's own file."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from perfusion_hub.errors import BaseModelError

DEFAULT_COUNT = 20_000


def _words(text: str, separator: str = "|") -> tuple[str, ...]:
    return tuple(text.split(separator))


ANIMALS = _words(
    "cat kitten dog puppy horse cow sheep goat pig rabbit fox wolf bear deer owl eagle parrot "
    "sparrow duck swan chicken penguin lion tiger elephant giraffe zebra monkey squirrel "
    "hedgehog turtle frog lizard snake fish dolphin whale butterfly bee",
    " ",
)
PEOPLE = _words(
    "man|woman|child|boy|girl|old man|old woman|chef|farmer|doctor|soldier|dancer|musician|"
    "painter|astronaut|knight|wizard|robot|teenager|baby"
)
THINGS = _words(
    "chair|table|sofa|bed|lamp|clock|vase|teapot|cup|mug|bowl|plate|bottle|glass|jar|"
    "basket|backpack|suitcase|umbrella|hat|shoe|boot|guitar|piano|violin|book|laptop|"
    "camera|phone|bicycle|car|truck|bus|train|boat|airplane|house|castle|bridge|tower|"
    "tree|flower|rose|sunflower|cactus|mushroom|apple|banana|orange|cake|pizza|sandwich|"
    "candle|toy|teddy bear|ball|kite|sculpture|statue|fountain|bench|mailbox|lighthouse|"
    "windmill|tent"
)
ATTRIBUTES = _words(
    "red orange yellow green blue purple pink brown black white gray golden silver "
    "small large tiny huge old new ancient modern shiny dusty broken colorful striped spotted "
    "fluffy furry wet glowing cute happy sleepy angry curious elegant rustic vintage",
    " ",
)
MATERIALS = _words(
    "wooden metal glass plastic stone marble ceramic porcelain paper cardboard leather wool "
    "knitted velvet bronze copper iron steel clay crystal ice rubber bamboo wicker concrete",
    " ",
)
SCENES = _words(
    "on the beach|in a forest|in the city|on a street|in a kitchen|in a living room|in a bedroom|"
    "in a garden|in a park|on a mountain|in the desert|in the snow|on a table|on a shelf|"
    "on the grass|by a lake|by the river|in the rain|at night|at sunset|at sunrise|"
    "under a tree|in a field of flowers|on a wooden floor|in front of a house|in a museum|"
    "in a library|in a cafe|on a boat|in space|underwater|in a cave|on a rooftop|in a market|"
    "in a classroom|on a bridge|in a castle|at the zoo|in a studio|on a white background|"
    "on a black background|against a brick wall|in a meadow|near a window|in the jungle|"
    "on a train|in a spaceship|at a festival|on a stage|in a greenhouse"
)
STYLES = _words(
    "a photo|a close-up photo|a blurry photo|a black and white photo|a watercolor painting|"
    "an oil painting|a pencil sketch|a charcoal drawing|a digital illustration|a 3d render|"
    "a cartoon|an anime drawing|a pixel art image|a low poly model|a studio portrait|"
    "a vintage photograph|a polaroid|a cinematic shot|a drone shot|a macro shot|"
    "a children's book illustration|a comic book panel|a mosaic|a stained glass window|"
    "a tattoo design|an ink drawing|a pop art print|an impressionist painting|"
    "a renaissance painting|a claymation still"
)
ACTIONS = _words(
    "sitting|standing|running|jumping|sleeping|eating|playing|walking|swimming|flying|"
    "reading a book|looking at the camera|wearing a hat|wearing sunglasses|holding a cup|"
    "lying down|climbing|dancing|smiling|waiting"
)
RELATIONS = _words(
    "next to|on top of|under|behind|in front of|beside|near|inside|on the left of|"
    "on the right of|leaning against|surrounded by"
)
QUALIFIERS = _words(
    "highly detailed|soft lighting|dramatic lighting|golden hour|shallow depth of field|"
    "wide angle|4k|trending on artstation|minimalist|pastel colors|high contrast|bokeh"
)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _templates(rng: random.Random) -> list[Callable[[], str]]:
    def noun() -> str:
        return rng.choice(ANIMALS + PEOPLE + THINGS)

    def subject() -> str:
        words = [rng.choice(ATTRIBUTES)] if rng.random() < 0.6 else []
        if rng.random() < 0.3:
            words.append(rng.choice(MATERIALS))
        return _article(" ".join([*words, noun()]))

    def actor() -> str:
        words = [rng.choice(ATTRIBUTES)] if rng.random() < 0.5 else []
        return _article(" ".join([*words, rng.choice(ANIMALS + PEOPLE)]))

    return [
        lambda: subject(),
        lambda: f"{subject()} {rng.choice(SCENES)}",
        lambda: f"{rng.choice(STYLES)} of {subject()}",
        lambda: f"{rng.choice(STYLES)} of {subject()} {rng.choice(SCENES)}",
        lambda: f"{actor()} {rng.choice(ACTIONS)} {rng.choice(SCENES)}",
        lambda: f"{rng.choice(STYLES)} of {actor()} {rng.choice(ACTIONS)}",
        lambda: f"{subject()} {rng.choice(RELATIONS)} {subject()}",
        lambda: f"{subject()} {rng.choice(RELATIONS)} {subject()} {rng.choice(SCENES)}",
        lambda: f"{rng.choice(STYLES)} of {subject()}, {rng.choice(QUALIFIERS)}",
        lambda: f"{actor()} and {subject()} {rng.choice(SCENES)}, {rng.choice(STYLES)}",
    ]


def generate_captions(count: int = DEFAULT_COUNT, seed: int = 0) -> list[str]:
    """`count` distinct captions, the same list for the same (count, seed)."""
    rng = random.Random(seed)
    templates = _templates(rng)
    seen: dict[str, None] = {}
    attempts = 0
    while len(seen) < count:
        attempts += 1
        if attempts > 20 * count + 1000:
            raise ValueError(f"the vocabulary cannot produce {count} distinct captions")
        seen.setdefault(rng.choice(templates)(), None)
    return list(seen)


def read_captions(path: str | Path) -> list[str]:
    """One caption per line of a UTF-8 text file; blank lines skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise BaseModelError(f"Cannot read captions from {path}: {error}.") from error
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise BaseModelError(f"{path} holds no captions; write one caption per line.")
    return captions
