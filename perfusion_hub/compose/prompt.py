"""Prompt syntax: plain text with concept references `<name>` and inline gate overrides.

    a <my-cat:beta=0.6> on a <my-chair:tau=0.2,lock=global>

`<name>` names a registered concept; after the colon come comma-separated `key=value`
overrides of the concept's gate (β, τ of method.md §3) and its key-locking mode. The text sent
to the tokenizer keeps each reference as the concept's own token `<name>`.

Ranges: β ∈ [0, 1] (the similarity s(e) is 1 at i* and about 0 for unrelated tokens, so the gate's
centre lies between them) and τ ∈ (0, 1] (a temperature of 0 would divide by zero; above 1 the
gate no longer separates the concept from other tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from perfusion_hub.concepts import LOCK_MODES
from perfusion_hub.errors import InvalidNameError, PromptError
from perfusion_hub.names import validate_name

OVERRIDE_KEYS = ("beta", "tau", "lock")
BETA_RANGE = "[0, 1]"
TAU_RANGE = "(0, 1]"


def check_beta(value: float, where: str = "beta") -> float:
    """Return β if it lies in [0, 1], else raise `PromptError`."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 <= value <= 1.0):
        raise PromptError(f"{where}={value} is out of range: β must lie in {BETA_RANGE}.")
    return float(value)


def check_tau(value: float, where: str = "tau") -> float:
    """Return τ if it lies in (0, 1], else raise `PromptError`."""
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise PromptError(f"{where}={value} is out of range: τ must lie in {TAU_RANGE}.")
    return float(value)


def check_lock(value: str, where: str = "lock") -> str:
    """Return the lock mode if it is `local` or `global`, else raise `PromptError`."""
    if value not in LOCK_MODES:
        raise PromptError(
            f"{where}={value!r} is not a lock mode: use one of {', '.join(LOCK_MODES)}.")
    return value


@dataclass(frozen=True)
class GateOverrides:
    """Per-concept overrides; None keeps the concept's (or the command's) value."""

    beta: float | None = None
    tau: float | None = None
    lock: str | None = None

    def over(self, fallback: GateOverrides) -> GateOverrides:
        """These overrides, with unset fields taken from `fallback`."""
        return GateOverrides(
            beta=self.beta if self.beta is not None else fallback.beta,
            tau=self.tau if self.tau is not None else fallback.tau,
            lock=self.lock if self.lock is not None else fallback.lock,
        )


@dataclass(frozen=True)
class ConceptRef:
    """One `<name...>` in a prompt: the concept name, its overrides and its span."""

    name: str
    overrides: GateOverrides
    start: int
    end: int


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt split into its concept references; `text` is what the tokenizer receives."""

    source: str
    text: str
    refs: tuple[ConceptRef, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        """Distinct concept names in order of first appearance."""
        return list(dict.fromkeys(ref.name for ref in self.refs))

    def overrides(self) -> dict[str, GateOverrides]:
        """One set of inline overrides per distinct concept (merged over repeated mentions)."""
        merged: dict[str, GateOverrides] = {}
        for ref in self.refs:
            merged[ref.name] = ref.overrides.over(merged.get(ref.name, GateOverrides()))
        return merged


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse `prompt`; raise `PromptError` naming the position of the first problem."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError("The prompt is empty: write what to draw, e.g. 'a <my-cat> on a chair'.")
    refs: list[ConceptRef] = []
    pieces: list[str] = []
    position = 0
    while position < len(prompt):
        opening = prompt.find("<", position)
        closing = prompt.find(">", position)
        if closing != -1 and (opening == -1 or closing < opening):
            raise _unbalanced(prompt, closing, "'>' without a matching '<'")
        if opening == -1:
            pieces.append(prompt[position:])
            break
        pieces.append(prompt[position:opening])
        end = prompt.find(">", opening + 1)
        nested = prompt.find("<", opening + 1)
        if end == -1:
            raise _unbalanced(prompt, opening, "'<' without a matching '>'")
        if nested != -1 and nested < end:
            raise _unbalanced(prompt, nested, "'<' inside another '<...>'")
        ref = _parse_reference(prompt[opening + 1 : end], opening, end + 1)
        refs.append(ref)
        pieces.append(f"<{ref.name}>")
        position = end + 1
    parsed = ParsedPrompt(source=prompt, text="".join(pieces), refs=tuple(refs))
    _check_consistent(parsed)
    return parsed


def _parse_reference(body: str, start: int, end: int) -> ConceptRef:
    name, _, options = body.partition(":")
    name = name.strip()
    try:
        validate_name(name)
    except InvalidNameError as error:
        raise PromptError(f"In '<{body}>' at character {start + 1}: {error}") from None
    values: dict[str, str] = {}
    if options.strip():
        for item in options.split(","):
            key, equals, value = (part.strip() for part in item.partition("="))
            if not equals or not value:
                raise PromptError(
                    f"In '<{body}>': override {item.strip()!r} is not key=value "
                    "(e.g. <my-cat:beta=0.6,tau=0.2>)."
                )
            if key not in OVERRIDE_KEYS:
                raise PromptError(
                    f"In '<{body}>': unknown override {key!r}; use {', '.join(OVERRIDE_KEYS)}."
                )
            if key in values:
                raise PromptError(f"In '<{body}>': override {key!r} is given twice.")
            values[key] = value
    elif body.endswith(":"):
        raise PromptError(f"In '<{body}>': nothing after ':'; write e.g. <{name}:beta=0.6>.")
    return ConceptRef(name, _overrides(body, values), start, end)


def _overrides(body: str, values: dict[str, str]) -> GateOverrides:
    def number(key: str) -> float | None:
        if key not in values:
            return None
        try:
            return float(values[key])
        except ValueError:
            raise PromptError(f"In '<{body}>': {key}={values[key]!r} is not a number.") from None

    beta, tau = number("beta"), number("tau")
    where = f"'<{body}>'"
    return GateOverrides(
        beta=None if beta is None else check_beta(beta, f"{where}: beta"),
        tau=None if tau is None else check_tau(tau, f"{where}: tau"),
        lock=None if "lock" not in values else check_lock(values["lock"], f"{where}: lock"),
    )


def _check_consistent(parsed: ParsedPrompt) -> None:
    seen: dict[str, GateOverrides] = {}
    for ref in parsed.refs:
        before = seen.setdefault(ref.name, ref.overrides)
        for key in OVERRIDE_KEYS:
            mine, theirs = getattr(ref.overrides, key), getattr(before, key)
            if mine is not None and theirs is not None and mine != theirs:
                raise PromptError(
                    f"<{ref.name}> appears twice with different {key} ({theirs} and {mine}); "
                    "one concept has one gate per render."
                )
        seen[ref.name] = ref.overrides.over(before)


def _unbalanced(prompt: str, index: int, problem: str) -> PromptError:
    shown = prompt if len(prompt) <= 80 else prompt[:77] + "..."
    return PromptError(
        f"Unbalanced prompt: {problem} at character {index + 1} of {shown!r}. "
        "Concepts are written <name> or <name:beta=0.6>."
    )
