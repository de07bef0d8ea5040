"""A whole-word CLIPTokenizer over the micro world's vocabulary."""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer

from perfusion_hub.micro.world import vocabulary

CONTEXT_LENGTH = 32
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _apply_bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one word: merge the lowest-ranked adjacent pair until none applies."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [
            (ranks.get(pair, 1 << 30), i)
            for i, pair in enumerate(zip(parts, parts[1:], strict=False))
        ]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts


def build_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges, by rank, that turn every word into one token.

    A merge appended last never changes words that are already one token (BPE only reaches it
    when no earlier merge applies), so adding the first missing merge until each word is whole
    terminates with every word a single token.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        while len(parts := _apply_bpe(word, ranks)) > 1:
            pair = (parts[0], parts[1])
            ranks[pair] = len(merges)
            merges.append(pair)
    return merges


def build_tokenizer(words: Iterable[str] | None = None) -> CLIPTokenizer:
    """A CLIPTokenizer (model_max_length 32, pad = end-of-text, as in SD 1.x) over `words`.

    Default words: the world's vocabulary. Any other word still tokenizes, letter by letter.
    """
    words = list(dict.fromkeys(w.lower() for w in (words or vocabulary())))
    merges = build_merges(words)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CONTEXT_LENGTH)


def tokenize(tok: CLIPTokenizer, captions: list[str]) -> list[list[int]]:
    """Token ids padded to the context length."""
    return tok(captions, padding="max_length", max_length=CONTEXT_LENGTH, truncation=True).input_ids
