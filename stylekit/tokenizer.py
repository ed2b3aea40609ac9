"""A CLIP tokenizer built locally, with no download.

The vocabulary is CLIP's byte-level alphabet (each byte character with and without the
end-of-word marker ``</w>``) plus optional whole words, so any text tokenizes offline.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def _merges_for_word(word: str) -> list[tuple[str, str]]:
    """BPE merges that assemble ``word + '</w>'`` left to right from its characters."""
    symbols = list(word[:-1]) + [word[-1] + "</w>"]
    merges = []
    current = symbols[0]
    for symbol in symbols[1:]:
        merges.append((current, symbol))
        current = current + symbol
    return merges


def build_clip_tokenizer(words: Iterable[str] = (), model_max_length: int = 77) -> CLIPTokenizer:
    """Build a ``CLIPTokenizer`` offline.

    Args:
        words: whole words (lower-case, ASCII) that get a single token each; every other
            text falls back to per-character tokens.
        model_max_length: the padded sequence length (77 as in Stable Diffusion).

    Returns:
        A ``CLIPTokenizer`` whose vocabulary holds the 512 byte symbols, the requested words,
        their merge intermediates and the two special tokens.
    """
    alphabet = list(bytes_to_unicode().values())
    vocab_list: list[str] = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    seen = set(vocab_list)
    for word in sorted({w.lower() for w in words if w and w.isascii() and w.isalpha()}):
        if len(word) < 2:
            continue
        for left, right in _merges_for_word(word):
            merged = left + right
            if (left, right) not in merges:
                merges.append((left, right))
            if merged not in seen:
                seen.add(merged)
                vocab_list.append(merged)
    vocab_list += [BOS, EOS]
    vocab = {token: index for index, token in enumerate(vocab_list)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=model_max_length,
    )
