"""Training inputs without a model: image folders, masks, prompts, options, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import tiny_tokenizer

from perfusion_hub.bases.source import DEFAULT_TRAIN_TEMPLATES
from perfusion_hub.errors import TrainingError
from perfusion_hub.micro.recipe import TRAIN_TEMPLATES
from perfusion_hub.micro.tokenizer import build_tokenizer
from perfusion_hub.micro.world import CATEGORIES
from perfusion_hub.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from perfusion_hub.training.images import read_image_folder, to_tensors
from perfusion_hub.training.options import TrainOptions
from perfusion_hub.training.prompts import (
    fill,
    superclass_token_id,
    token_positions,
    tokenize,
    training_templates,
)


def _save(path, size=(24, 16), colour=(200, 30, 30), mode="RGB", **kwargs):
    Image.new(mode, size, colour).save(path, **kwargs)
    return path


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="is empty"):
        read_image_folder(tmp_path)


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(TrainingError, match="no such folder"):
        read_image_folder(tmp_path / "nope")


def test_non_images_are_skipped_and_an_error_when_none_remain(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TrainingError, match="holds no images.*notes.txt"):
        read_image_folder(tmp_path)
    _save(tmp_path / "a.png")
    _save(tmp_path / "b.JPG", format="JPEG")
    _save(tmp_path / "c.webp", format="WEBP")
    (tmp_path / "sub").mkdir()
    folder = read_image_folder(tmp_path)
    assert [p.name for p in folder.paths] == ["a.png", "b.JPG", "c.webp"]
    assert [p.name for p in folder.skipped] == ["notes.txt"]


def test_corrupt_image_names_the_file(tmp_path):
    _save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(TrainingError, match="broken.jpg: cannot be read as an image"):
        read_image_folder(tmp_path)


def test_exif_orientation_alpha_and_centre_crop(tmp_path):
    image = Image.new("RGB", (30, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red left third
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    image.save(tmp_path / "rotated.jpg", exif=exif, quality=95)
    _save(tmp_path / "clear.png", size=(8, 8), colour=(0, 0, 0, 0), mode="RGBA")
    folder = read_image_folder(tmp_path)
    assert folder.images[1].size == (20, 30)  # orientation applied: portrait now
    tensors = to_tensors(folder, 16)
    assert tensors.pixels.shape == (2, 3, 16, 16) and tensors.masks is None
    clear, rotated = tensors.pixels[0], tensors.pixels[1]
    assert torch.allclose(clear, torch.ones_like(clear))  # transparent → white
    top_red = rotated[0, :3].mean() > 0.5 and rotated[2, :3].mean() < 0
    assert top_red  # after rotating, the red band is at the top


def test_masks_by_stem_and_errors(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    _save(images / "one.jpg", format="JPEG")
    with pytest.raises(TrainingError, match="no mask for one.jpg"):
        read_image_folder(images, masks)
    mask = Image.new("L", (24, 16), 0)
    mask.paste(255, (0, 0, 12, 16))
    mask.save(masks / "one.png")
    folder = read_image_folder(images, masks)
    tensors = to_tensors(folder, 16)
    assert tensors.masks.shape == (1, 1, 16, 16)
    assert tensors.masks[0, 0, :, :2].min() == 1 and tensors.masks[0, 0, :, -2:].max() == 0
    Image.new("L", (24, 16), 0).save(masks / "one.png")
    with pytest.raises(TrainingError, match="entirely black"):
        read_image_folder(images, masks)
    Image.new("L", (10, 10), 255).save(masks / "one.png")
    with pytest.raises(TrainingError, match="differs from its image"):
        read_image_folder(images, masks)


def test_digest_follows_content(tmp_path):
    _save(tmp_path / "a.png")
    first = read_image_folder(tmp_path).digest
    assert read_image_folder(tmp_path).digest == first
    _save(tmp_path / "a.png", colour=(0, 0, 0))
    assert read_image_folder(tmp_path).digest != first


def test_superclass_must_be_one_token():
    tokenizer = tiny_tokenizer()
    assert superclass_token_id(tokenizer, "cat") == tokenizer("cat", add_special_tokens=False
                                                               ).input_ids[0]
    with pytest.raises(TrainingError) as error:
        superclass_token_id(tokenizer, "kitten")
    message = str(error.value)
    assert "'kitten' is" in message and "tokens" in message and "'cat'" in message


def test_concept_position_comes_from_token_ids():
    tokenizer = tiny_tokenizer()
    tokenizer.add_tokens(["<my-cat>"])
    token = tokenizer.convert_tokens_to_ids("<my-cat>")
    prompts = ["a photo of a <my-cat>", "<my-cat> on the beach", "a close-up photo of a <my-cat>"]
    ids = tokenize(tokenizer, prompts)
    positions = token_positions(ids, token, prompts)
    assert ids[0, 0] == tokenizer.bos_token_id
    assert positions.tolist()[:2] == [5, 1]  # word k sits at index k + 1 (start token)
    assert positions[2] > 6  # "close-up" is several tokens: word counts would be wrong
    assert (ids[torch.arange(3), positions] == token).all()
    with pytest.raises(TrainingError, match="cut off"):
        long = ["a " * 40 + "<my-cat>"]
        token_positions(tokenize(tokenizer, long), token, long)


def test_templates_default_to_photo_and_need_one_slot():
    tokenizer = build_tokenizer()
    cat = superclass_token_id(tokenizer, "cat")
    assert training_templates([], tokenizer, cat) == DEFAULT_TRAIN_TEMPLATES
    assert training_templates(["a {} on a red background"], tokenizer, cat) == (
        "a {} on a red background",)
    with pytest.raises(TrainingError, match="exactly once"):
        training_templates(["a photo"], tokenizer, cat)


def test_templates_naming_the_superclass_are_left_out():
    tokenizer = build_tokenizer()
    chair = superclass_token_id(tokenizer, "chair")
    templates = ["a {}", "a {} on a brown chair.", "a Chair next to a {}", "a {} next to chairs"]
    assert training_templates(templates, tokenizer, chair) == ("a {}", "a {} next to chairs")
    cat = superclass_token_id(tokenizer, "cat")
    assert training_templates(templates, tokenizer, cat) == tuple(templates)
    with pytest.raises(TrainingError, match="already names 'chair'"):
        training_templates(["a {} on a chair"], tokenizer, chair)


@pytest.mark.parametrize("category", CATEGORIES)
def test_micro_templates_hold_each_category_once(category):
    tokenizer = build_tokenizer()
    word = superclass_token_id(tokenizer, category)
    prompts = [fill(t, category) for t in training_templates(TRAIN_TEMPLATES, tokenizer, word)]
    positions = token_positions(tokenize(tokenizer, prompts), word, prompts)
    assert len(positions) == len(prompts) >= len(TRAIN_TEMPLATES) - 2


@pytest.mark.parametrize("bad", [{"steps": 0}, {"batch_size": 0}, {"lock": "sideways"},
                                 {"device": "tpu"}, {"resolution": 30}, {"lr_values": -1.0},
                                 {"preview_every": -1}])
def test_options_are_validated(bad):
    with pytest.raises(TrainingError):
        TrainOptions(**bad)


def test_option_differences():
    recorded = TrainOptions(lr_values=0.03).to_json()
    assert TrainOptions(lr_values=0.01).differences(recorded) == ["lr_values: 0.03 → 0.01"]
    assert TrainOptions(steps=9).differences(recorded, ignore=("steps",)) == []


def test_checkpoint_round_trip(tmp_path):
    generator = torch.Generator().manual_seed(3)
    checkpoint = Checkpoint(
        step=7, state={"word_embedding": torch.randn(4), "value_targets.l-1": torch.randn(3)},
        optimizer={0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(4)}},
        generator=generator.get_state(), record={"losses": [0.5, 0.25], "name": "x"},
    )
    save_checkpoint(tmp_path, checkpoint)
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 7 and loaded.record == {"losses": [0.5, 0.25], "name": "x"}
    assert torch.equal(loaded.state["value_targets.l-1"], checkpoint.state["value_targets.l-1"])
    assert torch.equal(loaded.optimizer[0]["exp_avg"], checkpoint.optimizer[0]["exp_avg"])
    assert loaded.optimizer[0]["step"].shape == ()
    restored = torch.Generator()
    restored.set_state(loaded.generator)
    assert torch.equal(torch.rand(5, generator=restored), torch.rand(5, generator=generator))
    assert load_checkpoint(tmp_path / "none") is None
    (tmp_path / "checkpoint.safetensors").write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    with pytest.raises(TrainingError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)
