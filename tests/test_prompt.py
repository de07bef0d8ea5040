"""Prompt syntax: concept references, inline gate overrides, and every malformed prompt."""

from __future__ import annotations

import pytest

from perfusion_hub.compose.options import parse_shard, parse_size, parse_sweep
from perfusion_hub.compose.prompt import GateOverrides, parse_prompt
from perfusion_hub.errors import PromptError


def test_plain_text_has_no_references() -> None:
    parsed = parse_prompt("a red cat on a blue chair")
    assert parsed.text == "a red cat on a blue chair"
    assert parsed.refs == ()


def test_references_become_tokens_and_keep_overrides() -> None:
    parsed = parse_prompt("a <my-cat:beta=0.6,tau=0.2> on a <my-chair:lock=global> by <my-cat>")
    assert parsed.text == "a <my-cat> on a <my-chair> by <my-cat>"
    assert parsed.names == ["my-cat", "my-chair"]
    assert parsed.overrides() == {
        "my-cat": GateOverrides(beta=0.6, tau=0.2),
        "my-chair": GateOverrides(lock="global"),
    }


def test_overrides_fall_back_in_order() -> None:
    inline = GateOverrides(beta=0.6)
    assert inline.over(GateOverrides(beta=0.9, tau=0.3)) == GateOverrides(beta=0.6, tau=0.3)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a <my-cat on a chair", "without a matching '>'"),
        ("a my-cat> on a chair", "without a matching '<'"),
        ("a <my-<cat>>", "inside another"),
        ("a <my-cat:gamma=1>", "unknown override 'gamma'"),
        ("a <my-cat:beta>", "not key=value"),
        ("a <my-cat:beta=high>", "not a number"),
        ("a <my-cat:beta=1.5>", "out of range"),
        ("a <my-cat:beta=-0.1>", "out of range"),
        ("a <my-cat:tau=0>", "out of range"),
        ("a <my-cat:tau=2>", "out of range"),
        ("a <my-cat:lock=tight>", "not a lock mode"),
        ("a <my-cat:beta=0.5,beta=0.6>", "given twice"),
        ("a <My Cat>", "Invalid concept name"),
        ("a <>", "name"),
        ("<my-cat:beta=0.5> and <my-cat:beta=0.6>", "different beta"),
    ],
)
def test_bad_prompts_raise_prompt_error(prompt: str, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        parse_prompt(prompt)


def test_size_sweep_and_shard_parsers() -> None:
    assert parse_size("64x96") == (64, 96)
    sweep = parse_sweep(["beta=0.5:0.8:4", "tau=0.1:0.2:2"])
    assert sweep.betas == (0.5, 0.6, 0.7, 0.8)
    assert sweep.taus == (0.1, 0.2)
    assert len(sweep.points()) == 8
    assert not parse_sweep(None).active
    assert parse_shard("1/3").takes(4) and not parse_shard("1/3").takes(3)
    for bad in ("64", "65x64", "0x64"):
        with pytest.raises(PromptError):
            parse_size(bad)
    for bad in (["beta=0.5:1.5:3"], ["gamma=0:1:2"], ["beta=0.5"], ["beta=0.1:0.2:2"] * 2):
        with pytest.raises(PromptError):
            parse_sweep(bad)
    for bad in ("3/3", "a/b", "1/0"):
        with pytest.raises(PromptError):
            parse_shard(bad)
