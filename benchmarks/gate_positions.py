"""Where a concept's gate opens: s(e) and σ((s − β) / τ) at every token of a prompt.

    python benchmarks/gate_positions.py --home HOME my-cat "a <my-cat> next to a red ball"
    python benchmarks/gate_positions.py --home HOME --with my-cat my-chair \
        "a <my-cat> on a <my-chair>"

The gate of method.md §3 should open on the concept's own token and stay near σ(−β/τ) on the
others. With a causal text encoder every token after the concept also reads the concept, so
its encoding can resemble i* in the C⁻¹ metric; this prints how much, next to the same prompt
with the superclass word (its similarity to ī_super), to tell an encoder's habit from what
training did to v*.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from perfusion_hub import Hub
from perfusion_hub.perfusion import apply
from perfusion_hub.perfusion.math import gate, similarity


def gates(encoding: torch.Tensor, target: torch.Tensor, inv_cov: torch.Tensor, beta: float,
          tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """s(e) to `target` and σ((s − β) / τ) at every row of a padded encoding."""
    s = similarity(encoding.float(), target[None].float(), inv_cov.float())[:, 0]
    return s, gate(s, beta, tau)


def token_rows(pipe, prompt: str, s: torch.Tensor,
               g: torch.Tensor) -> list[tuple[str, float, float]]:
    """(token, s, gate) for the prompt's tokens and its first end-of-text."""
    ids = pipe.tokenizer(prompt, truncation=True,
                         max_length=pipe.tokenizer.model_max_length).input_ids
    tokens = pipe.tokenizer.convert_ids_to_tokens(ids)
    return [(t.removesuffix("</w>"), float(a), float(b))
            for t, a, b in zip(tokens, s[: len(ids)], g[: len(ids)], strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("concept", help="registered concept name, e.g. my-cat")
    parser.add_argument("prompts", nargs="+", help='prompts with <name>, e.g. "a <my-cat>"')
    parser.add_argument("--home", type=Path, default=None, help="phub home (default: phub's)")
    parser.add_argument("--base", default=None)
    parser.add_argument("--with", dest="others", action="append", default=[],
                        help="another registered concept the prompts name, installed alongside "
                             "(repeatable)")
    args = parser.parse_args()

    hub = Hub(args.home)
    records = [hub.registry.get(name, args.base) for name in (args.concept, *args.others)]
    loaded = hub.open_base(records[0].base_name)
    pipe, inv_cov = loaded.pipe, torch.as_tensor(loaded.inverse_covariance)
    console = Console()
    with apply(pipe, [hub.registry.load(r) for r in records], inv_cov) as edit, torch.no_grad():
        state = edit.states[0]
        beta, tau = float(state.beta), float(state.tau)
        for prompt in args.prompts:
            plain = prompt
            for installed in edit.states:
                plain = plain.replace(installed.token, installed.superclass)
            concept = gates(edit.encode(prompt)[0], state.target_input, inv_cov, beta, tau)
            word = gates(edit.encode(plain)[0], state.superclass_input, inv_cov, beta, tau)
            rows, words = token_rows(pipe, prompt, *concept), token_rows(pipe, plain, *word)
            table = Table(title=f"{prompt!r}: s and gate (β {beta}, τ {tau})")
            for column in ("token", "s to i*", "gate", "word", "s to ī_super", "gate "):
                table.add_column(column, justify="right")
            for (t, s, g), (w, s0, g0) in zip(rows, words, strict=True):
                table.add_row(t, f"{s:.2f}", f"{g:.2f}", w, f"{s0:.2f}", f"{g0:.2f}")
            console.print(table)
            console.print(
                f"gates summed over all {len(concept[1])} positions the UNet reads (padding "
                f"included): {float(concept[1].sum()):.1f} with the concept, "
                f"{float(word[1].sum()):.1f} with the word")


if __name__ == "__main__":
    main()
