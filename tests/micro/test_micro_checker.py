"""The checker: targets, matching rules, and the shipped checker's accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from perfusion_hub.micro import world as w
from perfusion_hub.micro.checker import (
    ObjectReading,
    PaletteMaps,
    SceneReading,
    canonical_objects,
    matches_caption,
    matches_instance,
    targets,
)


def _obj(category: str, colour: str, position: str = "centre", **kw: object) -> ObjectReading:
    fields = {"pattern": None, "accent": None, "eyes": None, "size": None} | kw
    return ObjectReading(category=category, colour=colour, position=position, **fields)


def test_canonical_order_is_left_to_right_or_top_first() -> None:
    a, b = (
        w.ObjectSpec("cat", "red", position="right"),
        w.ObjectSpec("cup", "blue", position="left"),
    )
    assert canonical_objects(w.SceneSpec((a, b), "next to", "white")) == (b, a)
    assert canonical_objects(w.SceneSpec((a, b), "on", "white")) == (a, b)
    t = targets([w.SceneSpec((a, b), "next to", "white")])
    assert t["category"][0].tolist() == [w.CATEGORIES.index("cup"), w.CATEGORIES.index("cat")]
    assert t["size"][0].tolist() == [-100, -100]


def test_matches_caption_follows_the_relation() -> None:
    cat, chair = _obj("cat", "red", "left"), _obj("chair", "blue", "right")
    side = SceneReading("side", "yellow", (cat, chair))
    assert matches_caption(side, "a red cat next to a blue chair on a yellow background")
    assert matches_caption(side, "a blue chair next to a red cat")
    assert matches_caption(side, "a red cat left of a blue chair")
    assert not matches_caption(side, "a blue chair left of a red cat")
    assert not matches_caption(side, "a red cat on a blue chair")
    assert not matches_caption(side, "a red cat next to a blue chair on a green background")
    stacked = SceneReading("stacked", "yellow", (cat, chair))
    assert matches_caption(stacked, "a red cat on a blue chair")
    single = SceneReading("single", "green", (_obj("cup", "pink", "left", size="big"),))
    assert matches_caption(single, "a big pink cup on the left")
    assert not matches_caption(single, "a small pink cup")
    assert not matches_caption(single, "a pink striped cup")


def test_matches_instance_checks_details() -> None:
    me = w.MY_CAT
    seen = _obj("cat", me.colour, pattern=me.pattern, accent=me.accent, eyes=me.eyes)
    assert matches_instance(SceneReading("single", "red", (seen,)), me)
    other_eyes = _obj("cat", me.colour, pattern=me.pattern, accent=me.accent, eyes="black")
    assert not matches_instance(other_eyes, me)
    assert matches_instance(other_eyes, me, details=False)


def test_palette_maps_name_each_world_colour() -> None:
    colours = np.array(list(w.COLOURS.values()), dtype=np.uint8)
    pixels = torch.from_numpy(colours).float().T[None, :, :, None] / 127.5 - 1  # (1, 3, 10, 1)
    maps = PaletteMaps()(pixels)[0, :, :, 0]  # (colour channel, pixel)
    assert maps.shape == (len(w.COLOURS), len(w.COLOURS))
    assert torch.allclose(maps.sum(0), torch.ones(len(w.COLOURS)))
    assert (maps.argmax(0) == torch.arange(len(w.COLOURS))).all() and (maps.diagonal() > 0.99).all()


@pytest.fixture(scope="module")
def checker():
    from perfusion_hub.micro import load_checker

    return load_checker()


def test_shipped_checker_reads_fresh_scenes(checker) -> None:
    specs = w.sample_scenes(300, seed=2024)
    imgs, _ = w.render(specs, seed=2025)
    readings = checker.read(imgs)
    right = [matches_caption(r, w.caption(s)) for r, s in zip(readings, specs, strict=True)]
    assert np.mean(right) >= 0.9
    cats = [
        r.objects[0].category == canonical_objects(s)[0].category
        for r, s in zip(readings, specs, strict=True)
    ]
    assert np.mean(cats) >= 0.97


def test_shipped_checker_recognises_instances(checker) -> None:
    pairs = w.instance_images(w.MY_CAT, 16, seed=3) + w.instance_images(w.MY_CHAIR, 16, seed=3)
    readings = checker.read([img for img, _ in pairs])
    assert np.mean([matches_instance(r, w.MY_CAT, details=False) for r in readings[:16]]) >= 0.6
    assert np.mean([matches_instance(r, w.MY_CHAIR, details=False) for r in readings[16:]]) >= 0.8
    assert np.mean([r.objects[0].eyes == w.MY_CAT.eyes for r in readings[:16]]) >= 0.6
    assert not any(matches_instance(r, w.MY_CAT, details=False) for r in readings[16:])
