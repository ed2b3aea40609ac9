"""Captions in words, built from the factors.

Format: ``"<objects> on <texture adjective> <paper colour> paper, <stroke phrase>"`` where ``<objects>`` lists
every object in drawing order as ``"a|an <fill colour> <shape noun>"``, joined by ``", "`` and a final
``" and "``. Example: ``"a red star and an orange ring on striped cream paper, thick outline"``.

Captions are lower-case ASCII; splitting on whitespace after removing commas yields only words of
:func:`caption_vocabulary`.
"""

from __future__ import annotations

from .factors import PALETTES, SHAPES, STROKES, TEXTURES
from .specs import ContentSpec, StyleSpec

_FIXED_WORDS = ("a", "an", "and", "on", "paper")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrases(content: ContentSpec, style: StyleSpec) -> list[str]:
    """One phrase per object, e.g. ``["a red star", "an orange ring"]``."""
    palette = PALETTES[style.palette]
    phrases = []
    for k, o in enumerate(content.objects):
        colour = palette.fills[k % len(palette.fills)].words
        phrases.append(f"{_article(colour)} {colour} {SHAPES[o.shape].noun}")
    return phrases


def style_phrase(style: StyleSpec) -> str:
    """The style part of a caption, e.g. ``"striped cream paper, thick outline"``."""
    palette = PALETTES[style.palette]
    texture = TEXTURES[style.texture].adjective
    return f"{texture} {palette.paper.words} paper, {STROKES[style.stroke].phrase}"


def caption(content: ContentSpec, style: StyleSpec) -> str:
    """Caption of one rendered (content, style) pair.

    Returns:
        e.g. ``"a red star, a blue ring and a green cross on dotted white paper, dashed outline"``.
    """
    phrases = object_phrases(content, style)
    objects = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{objects} on {style_phrase(style)}"


def caption_words(text: str) -> list[str]:
    """Split a caption into words (commas dropped)."""
    return text.replace(",", " ").split()


def caption_vocabulary() -> list[str]:
    """Every word a caption can contain, sorted, without duplicates (lower-case ASCII letters only)."""
    words = set(_FIXED_WORDS)
    for palette in PALETTES:
        words.update(palette.paper.words.split())
        for fill in palette.fills:
            words.update(fill.words.split())
    words.update(s.noun for s in SHAPES)
    words.update(t.adjective for t in TEXTURES)
    for stroke in STROKES:
        words.update(stroke.phrase.split())
    return sorted(words)
