"""Style conditions -> conditioners for ``StyleVideoPipeline`` (text to video).

Each field of a ``StyleCondition`` goes to its mechanism, with the condition's ``weight`` and ``steps``:

- ``image`` -> StyleID key/value injection (one style image per call; ``mask`` restricts it to a region),
- ``text`` / ``embedding`` -> style tokens (``stylekit.tokens.StyleTokens``) through a ``StyleTokenAdapter``,
- ``lora`` -> ``stylekit.lora_style.LoRAStyle``.

A condition with several fields uses several mechanisms; a list of conditions composes them in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stylekit.conditioning import ImageLike, StyleCondition, as_condition

StyleArgument = StyleCondition | ImageLike | Sequence[StyleCondition | ImageLike] | None


@dataclass
class RoutedConditions:
    """What ``route_conditions`` found: the injection condition (or None) and the conditions for tokens and
    LoRAs (reduced to their ``text``/``embedding`` or ``lora`` field, weight and steps kept)."""

    injection: StyleCondition | None = None
    tokens: list[StyleCondition] = field(default_factory=list)
    loras: list[StyleCondition] = field(default_factory=list)


def as_conditions(style: StyleArgument) -> list[StyleCondition]:
    """``style=`` of the pipeline (None, an image, a condition or a list of them) -> a list of conditions."""
    if style is None:
        return []
    items = list(style) if isinstance(style, (list, tuple)) else [style]
    if not items:
        raise ValueError("style: expected a style image, a StyleCondition or a non-empty list of them")
    return [as_condition(item) for item in items]


def route_conditions(conditions: Sequence[StyleCondition]) -> RoutedConditions:
    """Split conditions by mechanism (module docstring).

    Raises:
        ValueError: more than one style image, or a ``mask`` on a condition without an image (masks restrict
            StyleID injection only).
    """
    routed = RoutedConditions()
    for index, condition in enumerate(conditions):
        if condition.mask is not None and condition.image is None:
            raise ValueError(
                f"style[{index}].mask: StyleVideoPipeline restricts only StyleID injection (an image) to a "
                "region; style tokens and LoRAs act on the whole video"
            )
        if condition.image is not None:
            if routed.injection is not None:
                raise ValueError(
                    f"style[{index}].image: StyleVideoPipeline injects one style image per call; give the "
                    "other styles as text, embeddings or LoRAs"
                )
            routed.injection = condition
        if condition.text is not None or condition.embedding is not None:
            routed.tokens.append(
                StyleCondition(
                    text=condition.text,
                    embedding=condition.embedding,
                    weight=condition.weight,
                    steps=condition.steps,
                )
            )
        if condition.lora is not None:
            routed.loras.append(
                StyleCondition(lora=condition.lora, weight=condition.weight, steps=condition.steps)
            )
    return routed
