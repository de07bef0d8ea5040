"""The micro judge with the shipped micro CLIP and checker, on generator images whose content is
known: right prompts are obeyed and the instance is recognised, wrong ones are not."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from perfusion_hub.evaluate.judge import MicroJudge
from perfusion_hub.evaluate.metrics import fidelity_scores
from perfusion_hub.micro.world import (
    MY_CAT,
    MY_CHAIR,
    ObjectSpec,
    SceneSpec,
    complete,
    instance_images,
    render,
)


@pytest.fixture(scope="module")
def judge() -> MicroJudge:
    judge = MicroJudge("cpu")
    judge.add_concept("my-cat", "cat", [im for im, _ in instance_images(MY_CAT, 6, seed=1)])
    judge.add_concept("my-chair", "chair", [im for im, _ in instance_images(MY_CHAIR, 6, seed=2)])
    return judge


def _scenes(spec: SceneSpec, count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    images, _ = render([complete(spec, rng) for _ in range(count)], seed=seed)
    return [Image.fromarray(image) for image in images]


def test_reference_instances_are_read_from_training_images(judge: MicroJudge) -> None:
    cat = judge.references["my-cat"]
    assert (cat.category, cat.colour, cat.pattern) == ("cat", "orange", "striped")
    chair = judge.references["my-chair"]
    assert (chair.category, chair.colour, chair.pattern) == ("chair", "green", "spotted")


def test_obeyed_prompts_and_instances_on_true_scenes(judge: MicroJudge) -> None:
    cat = MY_CAT.object()
    scene = SceneSpec((cat,), None, "green")
    images = _scenes(scene, 8, seed=3)
    verdicts = judge.judge(images, ["a <my-cat> on a green background"] * 8, "my-cat")
    assert np.mean([v.obeyed for v in verdicts]) >= 0.75
    # the shipped checker reads this orange cat as brown in about a third of the scenes
    assert np.mean([v.instance_match for v in verdicts]) >= 0.5
    wrong = judge.judge(images, ["a <my-cat> on a blue background"] * 8, "my-cat")
    assert np.mean([v.obeyed for v in wrong]) <= 0.25
    assert all("background" in v.missed for v in wrong if not v.obeyed)


def test_pairs_need_both_instances(judge: MicroJudge) -> None:
    pair = SceneSpec((MY_CAT.object(), MY_CHAIR.object()), "on", "white")
    images = _scenes(pair, 8, seed=4)
    verdicts = judge.judge(images, ["a <my-cat> on a <my-chair>"] * 8, "my-cat")
    assert np.mean([v.obeyed for v in verdicts]) >= 0.75
    assert np.mean([v.instance_match for v in verdicts]) >= 0.5  # orange/brown, as above
    others = SceneSpec((ObjectSpec("cat", "red"), ObjectSpec("chair", "blue", "checked")), "on",
                       "white")
    strangers = judge.judge(_scenes(others, 8, seed=5), ["a <my-cat> on a <my-chair>"] * 8,
                            "my-cat")
    assert np.mean([v.instance_match for v in strangers]) <= 0.25
    restyled = judge.judge(images[:1], ["a red <my-cat>"], "my-cat")[0]
    assert restyled.instance_match is None  # the prompt itself changes the look


def test_instances_found_whatever_the_prompt_says(judge: MicroJudge) -> None:
    pair = SceneSpec((MY_CAT.object(), MY_CHAIR.object()), "on", "white")
    images = _scenes(pair, 8, seed=4)
    assert judge.instances_found(images, ["my-cat", "my-chair"]) == [
        v.instance_match for v in judge.judge(images, ["a <my-cat> on a <my-chair>"] * 8,
                                              "my-cat")]
    cats = _scenes(SceneSpec((MY_CAT.object(),)), 8, seed=6)
    assert np.mean(judge.instances_found(cats, ["my-cat"])) >= 0.5
    assert judge.instances_found(cats, ["my-cat", "my-chair"]) == [0.0] * 8
    assert judge.instances_found(cats, ["my-cup"]) == [None] * 8  # look unknown


def test_fidelity_prefers_the_instance(judge: MicroJudge) -> None:
    references = judge.embed_images([im for im, _ in instance_images(MY_CAT, 6, seed=1)])
    same = judge.embed_images([im for im, _ in instance_images(MY_CAT, 6, seed=7)])
    other = judge.embed_images(_scenes(SceneSpec((ObjectSpec("house", "blue"),)), 6, seed=8))
    assert fidelity_scores(same, references).mean() > fidelity_scores(other, references).mean()
