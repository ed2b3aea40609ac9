"""Per-layer style-token scales from the diffusers block vocabulary (``set_ip_adapter_scale`` / InstantStyle).

``1.0`` scales every cross-attention layer; ``{"up": {"block_1": [0.0, 1.0]}}`` scales only the second
attention of ``up_blocks.1`` (layers not named are 0, as in diffusers); a block value is a number (all its
attentions) or a list with one number per attention. Presets name InstantStyle's choices.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from stylekit.attention.targeting import LayerSelectionError, resolve_layers

ScaleSpec = float | int | str | Mapping[str, Any]

_NAME = re.compile(
    r"^(?:(?P<part>down_blocks|up_blocks)\.(?P<block>\d+)|mid_block)\.attentions\.(?P<attn>\d+)\."
)

SCALE_PRESETS: dict[str, dict[str, Any]] = {
    # InstantStyle for SD 1.5: style in up_blocks.1 only (its "style" block).
    "style-only": {"up": {"block_1": 1.0}},
    # InstantStyle "style + layout" for SD 1.5: add down_blocks.2.
    "style-and-layout": {"down": {"block_2": 1.0}, "up": {"block_1": 1.0}},
}


def _value_at(value: Any, attention_index: int) -> float:
    if isinstance(value, (list, tuple)):
        return float(value[attention_index]) if attention_index < len(value) else 0.0
    return float(value)


def layer_scales(spec: ScaleSpec, layer_names: Iterable[str]) -> dict[str, float]:
    """Scale of every cross-attention processor in ``layer_names`` (``...attn2.processor``).

    Raises:
        LayerSelectionError / ValueError: unknown parts or blocks, or values that are not finite numbers.
    """
    names = [n for n in layer_names if n.endswith(".attn2.processor")]
    if isinstance(spec, str):
        if spec not in SCALE_PRESETS:
            raise ValueError(f"scale: unknown preset {spec!r}; presets: {sorted(SCALE_PRESETS)}")
        spec = SCALE_PRESETS[spec]
    if isinstance(spec, bool) or not isinstance(spec, (int, float, Mapping)):
        raise TypeError(f"scale: expected a number, a preset name or a block dict, got {type(spec).__name__}")
    if not isinstance(spec, Mapping):
        return {name: float(spec) for name in names}
    # Validates parts and blocks with the same messages as attention targeting.
    as_switches = {
        part: ({k: True for k in value} if isinstance(value, Mapping) else True)
        for part, value in spec.items()
    }
    try:
        resolve_layers(as_switches, names, kind="attn2")
    except LayerSelectionError as error:
        if "selects no" not in str(error):
            raise
    scales: dict[str, float] = {}
    for name in names:
        match = _NAME.match(name)
        value: Any = 0.0
        if match is not None:
            attention_index = int(match["attn"])
            if match["part"] is None:
                value = _value_at(spec.get("mid", 0.0), attention_index)
            else:
                part = spec.get("down" if match["part"] == "down_blocks" else "up", 0.0)
                if isinstance(part, Mapping):
                    value = _value_at(part.get(f"block_{match['block']}", 0.0), attention_index)
                else:
                    value = _value_at(part, attention_index)
        scales[name] = float(value)
    return scales
