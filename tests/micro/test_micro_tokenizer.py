"""The whole-word micro tokenizer."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

from perfusion_hub.micro.tokenizer import CONTEXT_LENGTH, build_merges, build_tokenizer
from perfusion_hub.micro.world import caption, sample_scenes, vocabulary


def test_every_vocabulary_word_is_one_token() -> None:
    tok = build_tokenizer()
    for word in vocabulary():
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    assert tok.model_max_length == CONTEXT_LENGTH == 32


def test_captions_have_one_token_per_word() -> None:
    tok = build_tokenizer()
    for spec in sample_scenes(50, seed=0):
        text = caption(spec)
        ids = tok(text).input_ids
        assert len(ids) == len(text.split()) + 2
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id


def test_photo_templates_and_unknown_words_tokenize() -> None:
    tok = build_tokenizer()
    tokens = tok.tokenize("a close-up photo of the red cat, a picture")
    assert len(tokens) == 12
    assert len(tok.tokenize("zebra")) > 1


def test_merges_make_overlapping_words_whole() -> None:
    words = ["at", "cat", "catalogue", "a", "t"]
    tok = build_tokenizer(words)
    assert all(len(tok.tokenize(x)) == 1 for x in words)
    assert len(build_merges(words)) >= len("catalogue") - 1


def test_added_concept_tokens_are_single_and_survive_save(tmp_path: Path) -> None:
    tok = build_tokenizer()
    assert tok.add_tokens(["<my-cat>", "<my-chair>"]) == 2
    ids = tok("a <my-cat> on a <my-chair>").input_ids
    assert len(ids) == 7
    assert tok.convert_ids_to_tokens(ids[2]) == "<my-cat>"
    tok.save_pretrained(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    assert again("a <my-cat> on a <my-chair>").input_ids == ids
    assert again.model_max_length == 32
