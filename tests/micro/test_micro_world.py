"""The scene generator: determinism, masks, captions, instances, speed."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytest

from perfusion_hub.micro import world as w


def test_render_is_deterministic_in_specs_and_seed() -> None:
    a, ma = w.render(w.sample_scenes(32, seed=3), seed=5)
    b, mb = w.render(w.sample_scenes(32, seed=3), seed=5)
    c, _ = w.render(w.sample_scenes(32, seed=3), seed=6)
    assert a.shape == (32, 64, 64, 3) and a.dtype == np.uint8 and ma.shape == (32, 2, 64, 64)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_masks_cover_exactly_the_objects() -> None:
    specs = w.sample_scenes(200, seed=1)
    imgs, masks = w.render(specs, seed=2)
    for spec, img, m in zip(specs, imgs, masks, strict=True):
        bg = np.array(w.COLOURS[spec.background])
        assert (img[~m.any(0)] == bg).all(), "pixels outside the masks are background"
        assert not (m[0] & m[1]).any()
        for k in range(len(spec.objects)):
            assert m[k].sum() > 20
            assert (img[m[k]] != bg).any(-1).mean() > 0.75
        if len(spec.objects) == 1:
            assert not m[1].any()


def test_positions_and_sizes_move_the_mask() -> None:
    obj = w.ObjectSpec("ball", "red")
    specs = [
        w.SceneSpec((replace(obj, size=s, position=p),), None, "blue")
        for s in ("small", "big")
        for p in ("left", "centre", "right")
    ]
    _, masks = w.render(specs, seed=0)
    xs = [np.nonzero(m[0])[1].mean() for m in masks]
    areas = [m[0].sum() for m in masks]
    assert xs[0] < xs[1] < xs[2] and xs[3] < xs[4] < xs[5]
    assert min(areas[3:]) > max(areas[:3])


def test_relations_place_objects() -> None:
    a, b = w.ObjectSpec("cat", "red"), w.ObjectSpec("chair", "blue")
    on = w.complete(w.SceneSpec((a, b), "on", "white"), np.random.default_rng(0))
    left = w.complete(w.SceneSpec((a, b), "left of", "white"), np.random.default_rng(0))
    _, m = w.render([on, left], seed=0)
    ys0, ys1 = np.nonzero(m[0, 0])[0].mean(), np.nonzero(m[0, 1])[0].mean()
    xs0, xs1 = np.nonzero(m[1, 0])[1].mean(), np.nonzero(m[1, 1])[1].mean()
    assert ys0 < ys1 and xs0 < xs1


def test_captions_round_trip_through_the_parser() -> None:
    rng = np.random.default_rng(0)
    for spec in w.sample_scenes(300, seed=4):
        text = w.caption(spec, rng, p_drop=0.5)
        parsed = w.parse_caption(text)
        assert [(o.category, o.colour, o.pattern) for o in parsed.objects] == [
            (o.category, o.colour, o.pattern) for o in spec.objects
        ]
        assert parsed.relation == spec.relation
        assert parsed.background in (None, spec.background)
        if len(spec.objects) == 1:
            assert parsed.objects[0].position in (None, spec.objects[0].position)
            assert parsed.objects[0].size in (None, spec.objects[0].size)


def test_caption_grammar_examples() -> None:
    spec = w.parse_caption("a red cat on a blue chair on a yellow background")
    assert spec.relation == "on" and spec.background == "yellow"
    assert [o.phrase for o in spec.objects] == ["red cat", "blue chair"]
    assert w.parse_caption("an orange striped cup on the left").objects[0].position == "left"
    assert (
        w.caption(spec, subject="<my-cat>") == "a <my-cat> on a blue chair on a yellow background"
    )
    with pytest.raises(w.CaptionError):
        w.parse_caption("a cat")


def test_every_caption_word_is_in_the_vocabulary() -> None:
    vocab = set(w.vocabulary())
    words = {x for s in w.sample_scenes(300, seed=7) for x in w.caption(s).split()}
    assert words <= vocab


def test_instance_images_show_the_same_object_in_varied_scenes() -> None:
    pairs = w.instance_images(w.MY_CAT, 12, seed=0)
    assert len(pairs) == 12
    backgrounds = set()
    for img, mask in pairs:
        arr = np.asarray(img)
        assert img.size == (64, 64) and mask.shape == (64, 64) and mask.sum() > 40
        backgrounds.add(tuple(arr[0, 0]))
        orange = np.array(w.COLOURS["orange"])
        assert (arr[mask] == orange).all(-1).mean() > 0.2
    assert len(backgrounds) > 3
    assert w.MY_CAT.phrase == "orange striped cat"


def test_generator_speed_on_one_core() -> None:
    specs = w.sample_scenes(2000, seed=0)
    best = 0.0
    for _ in range(3):
        t0 = time.process_time()
        w.render(specs, seed=0)
        best = max(best, len(specs) / max(time.process_time() - t0, 1e-9))
    assert best >= 1000
