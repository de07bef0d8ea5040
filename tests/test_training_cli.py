"""`phub train` and `Hub.train` end to end on a tiny random base saved as a diffusers folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli.main import app
from perfusion_hub.errors import NotFoundError
from perfusion_hub.perfusion import apply
from perfusion_hub.training import loop


@pytest.fixture
def hub(tiny_hub):
    return tiny_hub


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(
            folder / f"{index}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def phub(hub, *args):
    return CliRunner().invoke(app, ["--home", str(hub.settings.home), *map(str, args)])


def train(hub, images, *extra, name="my-cat"):
    return phub(hub, "train", images, "--name", name, "--superclass", "cat", "--base", "tiny",
                "--steps", "2", "--batch-size", "1", "--grad-accum", "2", *extra)


def test_cli_trains_registers_and_the_file_composes(hub, images):
    result = train(hub, images, "--max-embedding-norm", "1.5")
    assert result.exit_code == 0, result.output
    record = hub.get("my-cat")
    assert "Skipping notes.txt" in result.output
    assert (f"Registered my-cat (token <my-cat>, base tiny): {record.size / 1024:.1f} KB"
            in flat(result.output))
    assert record.content_hash[:12] in result.output
    assert record.training["options"]["steps"] == 2 and record.training["steps"] == 2
    assert record.training["method"]["target_input_gradient"] is False
    assert record.training["method"]["covariance_positions"] == "content"
    assert record.training["method"]["max_embedding_norm"] == 1.5
    assert not (hub.settings.checkpoints_dir / "tiny" / "my-cat" / "checkpoint.safetensors"
                ).exists()
    concept = hub.load("my-cat")
    loaded = hub.open_base("tiny")
    with apply(loaded.pipe, [concept], loaded.inverse_covariance):
        image = loaded.pipe("a <my-cat> on the beach", num_inference_steps=2, height=16,
                            width=16, output_type="np").images
    assert image.shape == (1, 16, 16, 3) and np.isfinite(image).all()


def test_existing_name_is_refused_before_training_unless_forced(hub, images, monkeypatch):
    assert train(hub, images).exit_code == 0
    first = hub.get("my-cat").content_hash
    monkeypatch.setattr(loop, "train_loop", _fail)
    refused = train(hub, images)
    assert refused.exit_code == 1
    assert "already registered for base 'tiny'" in flat(refused.output)
    assert "--force" in refused.output
    monkeypatch.undo()
    forced = train(hub, images, "--force", "--seed", "5")
    assert forced.exit_code == 0, forced.output
    assert hub.get("my-cat").content_hash != first and len(hub.list()) == 1


def test_ctrl_c_checkpoints_exits_130_and_resume_finishes(hub, images, monkeypatch):
    def interrupt(step, loss):
        raise KeyboardInterrupt

    original = loop.train_loop
    monkeypatch.setattr(loop, "train_loop", lambda *a, **k: original(*a, **{**k,
                                                                          "on_step": interrupt}))
    stopped = train(hub, images)
    assert stopped.exit_code == 130
    assert "Interrupted after step 1; nothing was registered" in flat(stopped.output)
    assert "--resume" in stopped.output
    with pytest.raises(NotFoundError):
        hub.get("my-cat")
    monkeypatch.undo()
    resumed = train(hub, images, "--resume", "--json")
    assert resumed.exit_code == 0, resumed.output
    payload = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert payload["name"] == "my-cat" and hub.get("my-cat").training["resumed_from"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--base", "nope"), "No base named 'nope'"),
    (("--superclass", "kitten"), "'kitten' is"),
    (("--lock", "sideways"), "--lock must be one of"),
    (("--max-embedding-norm", "-1"), "--max-embedding-norm must be a non-negative number"),
])
def test_bad_options_fail_with_a_message(hub, images, args, message):
    result = train(hub, images, *args)
    assert result.exit_code == 1 and message in flat(result.output)


def test_empty_folder_and_corrupt_image(hub, tmp_path, images):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "is empty" in flat(train(hub, empty).output)
    (images / "2.jpg").write_bytes(b"garbage")
    result = train(hub, images)
    assert result.exit_code == 1 and "2.jpg: cannot be read as an image" in flat(result.output)


def test_hub_train_python_api(hub, images, tmp_path):
    (images / "notes.txt").unlink()
    result = hub.train(images, name="api-cat", superclass="dog", base="tiny", steps=1,
                       batch_size=1, grad_accum=1, flip=False, preview_every=1)
    assert result.record.name == "api-cat" and result.concept.superclass == "dog"
    assert result.concept.training["options"]["flip"] is False
    assert (result.checkpoint_dir / "preview-000001.png").is_file()


def flat(text):
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def _fail(*args, **kwargs):
    raise AssertionError("training started")
