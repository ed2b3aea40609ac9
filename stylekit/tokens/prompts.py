"""World prompts without style words, for style-token training and benchmarks."""

from __future__ import annotations

from stylekit.data import object_phrases
from stylekit.data.specs import ContentSpec, StyleSpec


def content_prompt(content: ContentSpec, style: StyleSpec) -> str:
    """The object phrases of a world caption without the paper/texture/stroke words, e.g.
    ``"a red star and an orange ring"`` (the fill colours still come from ``style``'s palette)."""
    phrases = object_phrases(content, style)
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
