"""Evaluation metrics, prompt templates, micro-grammar expectations and the plot, on synthetic
inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from perfusion_hub.errors import PromptError
from perfusion_hub.evaluate.metrics import (
    CSV_COLUMNS,
    EvalRow,
    cosine_matrix,
    fidelity_scores,
    paired_cosine,
    row_to_csv,
    summarize,
    word_accuracy,
)
from perfusion_hub.evaluate.plot import Point, Series, nice_ticks, save_plot
from perfusion_hub.evaluate.prompts import Template, default_templates, read_templates
from perfusion_hub.evaluate.words import expectation


def test_cosine_matrix_of_known_vectors() -> None:
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    b = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, -1.0]])
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(cosine_matrix(a, b), [[1.0, s, 0.0], [0.0, s, -1.0]])


def test_fidelity_is_mean_cosine_to_references() -> None:
    references = np.array([[1.0, 0.0], [0.0, 1.0]])
    renders = np.array([[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]])
    s = 1 / math.sqrt(2)
    np.testing.assert_allclose(fidelity_scores(renders, references), [0.5, s, -0.5])
    with pytest.raises(ValueError):
        fidelity_scores(renders, np.zeros((0, 2)))


def test_paired_cosine_is_rowwise_and_scale_free() -> None:
    images = np.array([[2.0, 0.0], [0.0, 5.0]])
    texts = np.array([[7.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(paired_cosine(images, texts), [1.0, 0.0])
    with pytest.raises(ValueError):
        paired_cosine(images, texts[:1])


def test_word_accuracy_counts_obeyed_checks() -> None:
    assert word_accuracy({"a": True, "b": False, "c": True, "d": True}) == 0.75
    assert word_accuracy({}) == 1.0


def _row(beta: float, kind: str, fid: float, ali: float, obeyed: float | None,
         match: float | None) -> EvalRow:
    return EvalRow(kind, "p", 0, beta, fid, ali, obeyed, match)


def test_summarize_groups_by_beta_and_kind() -> None:
    rows = [
        _row(0.7, "plain", 0.8, 1.0, 1.0, 1.0),
        _row(0.7, "background", 0.6, 0.5, 0.0, 0.0),
        _row(0.5, "plain", 0.9, 0.0, 0.0, None),
        _row(0.5, "plain", 0.7, 1.0, 1.0, 1.0),
    ]
    overall = summarize(rows)
    assert [(s.beta, s.kind, s.renders) for s in overall] == [(0.5, "all", 2), (0.7, "all", 2)]
    assert overall[0].fidelity == pytest.approx(0.8)
    assert overall[0].alignment == pytest.approx(0.5)
    assert overall[0].instance_match == pytest.approx(1.0)  # None rows are left out
    assert overall[1].obeyed == pytest.approx(0.5)
    by_kind = summarize(rows, by_kind=True)
    assert [(s.beta, s.kind) for s in by_kind] == [(0.5, "plain"), (0.7, "background"),
                                                    (0.7, "plain")]
    assert by_kind[1].fidelity == pytest.approx(0.6)
    assert summarize([_row(0.7, "plain", 0.5, 0.5, None, None)])[0].obeyed is None


def test_csv_row_has_every_column() -> None:
    cells = row_to_csv(EvalRow("plain", "a <c>", 3, 0.7, 0.123456, 0.5, None, 1.0))
    assert tuple(cells) == CSV_COLUMNS
    assert cells["fidelity"] == "0.1235" and cells["obeyed"] == "" and cells["seed"] == "3"


def test_templates_fill_and_file(tmp_path) -> None:
    assert Template("plain", "a {} next to a {other}").fill("my-cat", "my-chair") == (
        "a <my-cat> next to a <my-chair>")
    with pytest.raises(PromptError, match="--with"):
        Template("with-concept", "a {} on a {other}").fill("my-cat")
    kinds = {t.kind for t in default_templates(micro=True, with_concept=True)}
    assert kinds == {"plain", "background", "position", "property", "other-object",
                     "with-concept"}
    assert all("{other}" not in t.text for t in default_templates(micro=False, with_concept=False))
    path = tmp_path / "prompts.txt"
    path.write_text("# mine\n\na {} on a red background\na {} on a {other}\n")
    assert read_templates(path) == [Template("custom", "a {} on a red background"),
                                    Template("with-concept", "a {} on a {other}")]
    path.write_text("a cat\n")
    with pytest.raises(PromptError, match="prompts.txt:1"):
        read_templates(path)
    with pytest.raises(PromptError, match="Cannot read"):
        read_templates(tmp_path / "missing.txt")


def test_expectation_reads_what_the_words_ask() -> None:
    sup = {"my-cat": "cat", "my-chair": "chair"}
    plain = expectation("a <my-cat>", sup)
    assert plain is not None and plain.checks() == ["object0.category"]
    assert plain.concepts == ("my-cat",)
    red = expectation("a red <my-cat:beta=0.6> on a green background", sup)
    assert red is not None
    assert red.checks() == ["object0.category", "object0.colour", "background"]
    assert red.scene.objects[0].colour == "red" and red.scene.background == "green"
    pair = expectation("a <my-cat> next to a blue striped ball", sup)
    assert pair is not None and pair.concepts == ("my-cat", None)
    assert pair.checks() == ["object0.category", "object1.category", "object1.colour",
                             "object1.pattern", "relation"]
    two = expectation("a <my-cat> on a <my-chair>", sup)
    assert two is not None and two.concepts == ("my-cat", "my-chair")
    assert two.colour_given == (False, False) and two.scene.relation == "on"
    assert expectation("a <my-cat> in the snow", sup) is None
    assert expectation("a <my-dog>", sup) is None


def test_nice_ticks_cover_the_range() -> None:
    ticks = nice_ticks(0.43, 0.91)
    assert ticks[0] <= 0.43 and ticks[-1] >= 0.91 and 3 <= len(ticks) <= 7
    steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
    assert len(steps) == 1


def test_plot_png_is_written(tmp_path) -> None:
    series = [Series("my-cat", tuple(Point(0.5 + 0.1 * i, 0.8 - 0.05 * i, f"beta={i}")
                                     for i in range(4)))]
    path = save_plot(tmp_path / "plot.png", series, "title")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (640, 480)
        # the series colour is drawn somewhere
        assert (31, 119, 180) in {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    with pytest.raises(ValueError):
        save_plot(tmp_path / "empty.png", [Series("x", (Point(math.nan, 0.0),))], "t")
