"""Which attention layers a technique acts on.

One vocabulary, the one diffusers uses for IP-Adapter and LoRA block scales::

    {"down": {"block_1": True}, "mid": True, "up": {"block_2": True, "block_3": [0, 1, 1]}}

A block value is a bool/number (all of the block's attentions) or a list with one entry per
attention (``attentions.{i}``); non-zero entries are on. Every transformer block inside a chosen
attention is targeted. Layers can also be named explicitly (a processor name such as
``up_blocks.2.attentions.0.transformer_blocks.0.attn1`` or any prefix of one such as ``up_blocks.2``),
or by a named preset below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LayerSpec = str | Mapping[str, Any] | Sequence[str] | None

_ATTN_NAME = re.compile(
    r"^(?:(?P<part>down_blocks|up_blocks)\.(?P<block>\d+)|mid_block)\.attentions\.(?P<attn>\d+)"
    r"\.transformer_blocks\.\d+\.(?P<kind>attn1|attn2)\.processor$"
)


@dataclass(frozen=True)
class LayerPreset:
    """A named layer choice, plus whether it reproduces the official code's timing quirk."""

    name: str
    architecture: str  # "sd" or "sdxl"
    blocks: Mapping[str, Any]
    description: str
    official_timing: bool = False
    defaults: Mapping[str, float] = field(default_factory=dict)


LAYER_PRESETS: dict[str, LayerPreset] = {
    preset.name: preset
    for preset in [
        LayerPreset(
            "styleid",
            "sd",
            {"up": {"block_2": True, "block_3": True}},
            "decoder self-attention of up_blocks.2-3 (ldm output blocks 6-11, the official ldm code)",
        ),
        LayerPreset(
            "styleid-diffusers",
            "sd",
            {"up": {"block_2": [0, 1, 1], "block_3": True}},
            "ldm output blocks 7-11: the official diffusers port (layer 6 off)",
        ),
        LayerPreset(
            "styleid-official",
            "sd",
            {"up": {"block_2": True, "block_3": True}},
            "official run_styleid.py: layers 6-11 and its start-latent/timestep quirk",
            official_timing=True,
        ),
        LayerPreset(
            "styleid-xl",
            "sdxl",
            {"up": {"block_1": True}},
            "SDXL decoder self-attention of up_blocks.1 (same 640 ch / 1/16 level as StyleID's layers 6-8)",
        ),
        LayerPreset(
            "styleid-xl-plus",
            "sdxl",
            {"up": {"block_0": [0, 1, 0], "block_1": True}},
            "styleid-xl plus up_blocks.0.attentions.1 (InstantStyle's style block)",
        ),
        LayerPreset(
            "styleid-mini",
            "sd",
            {"up": {"block_2": True, "block_3": True}},
            "the bundled mini model's two finest decoder levels (8x8 and 16x16 latents), the analogue of "
            "StyleID's up_blocks.2-3 on SD; chosen with benchmarks/transfer_quality.py --layers-sweep "
            "(best harmonic mean of style and content IoU of the 7 candidates; docs/benchmarks.md)",
        ),
    ]
}

DEFAULT_PRESET = {"sd": "styleid", "sdxl": "styleid-xl"}


class LayerSelectionError(ValueError):
    """Raised when a layer specification names layers the model does not have."""


def _block_on(value: Any, attention_index: int) -> bool:
    if isinstance(value, (list, tuple)):
        return attention_index < len(value) and bool(value[attention_index])
    return bool(value)


def _from_blocks(blocks: Mapping[str, Any], names: Sequence[str], kind: str) -> list[str]:
    unknown = set(blocks) - {"down", "mid", "up"}
    if unknown:
        raise LayerSelectionError(f"layers: unknown part(s) {sorted(unknown)}; expected 'down', 'mid', 'up'")
    chosen: list[str] = []
    available_blocks: set[str] = set()
    for name in names:
        match = _ATTN_NAME.match(name)
        if not match or match["kind"] != kind:
            continue
        attention_index = int(match["attn"])
        if match["part"] is None:
            if "mid" in blocks and _block_on(blocks["mid"], attention_index):
                chosen.append(name)
            continue
        part = "down" if match["part"] == "down_blocks" else "up"
        block_key = f"block_{match['block']}"
        available_blocks.add(f"{part}.{block_key}")
        part_spec = blocks.get(part)
        if part_spec is None:
            continue
        if not isinstance(part_spec, Mapping):
            if _block_on(part_spec, attention_index):
                chosen.append(name)
            continue
        if block_key in part_spec and _block_on(part_spec[block_key], attention_index):
            chosen.append(name)
    for part in ("down", "up"):
        spec = blocks.get(part)
        if isinstance(spec, Mapping):
            for block_key, value in spec.items():
                if f"{part}.{block_key}" not in available_blocks and value:
                    raise LayerSelectionError(
                        f"layers: the model has no attention in {part}.{block_key}; "
                        f"blocks with attention: {sorted(available_blocks)}"
                    )
    return chosen


def resolve_layers(
    spec: LayerSpec, processor_names: Iterable[str], architecture: str = "sd", kind: str = "attn1"
) -> tuple[str, ...]:
    """Turn a layer specification into the attention-processor names it targets.

    Args:
        spec: a preset name (``LAYER_PRESETS``), a block-vocabulary mapping, a list of processor names
            or prefixes, or None for the architecture's default preset.
        processor_names: the keys of ``unet.attn_processors``.
        architecture: "sd" or "sdxl"; chooses the default preset.
        kind: "attn1" (self-attention) or "attn2" (cross-attention).

    Returns:
        Sorted processor names (``...attn1.processor``).

    Raises:
        LayerSelectionError: unknown preset or name, or layers the model does not have.
    """
    names = list(processor_names)
    if spec is None:
        spec = DEFAULT_PRESET.get(architecture, "styleid")
    if isinstance(spec, str):
        if spec in LAYER_PRESETS:
            chosen = _from_blocks(LAYER_PRESETS[spec].blocks, names, kind)
        else:
            chosen = _from_names([part.strip() for part in spec.split(",") if part.strip()], names, kind)
    elif isinstance(spec, Mapping):
        chosen = _from_blocks(spec, names, kind)
    else:
        chosen = _from_names(list(spec), names, kind)
    if not chosen:
        raise LayerSelectionError(f"layers={spec!r} selects no {kind} layer of this model")
    return tuple(sorted(chosen))


def _from_names(requested: Sequence[str], names: Sequence[str], kind: str) -> list[str]:
    candidates = [n for n in names if n.endswith(f".{kind}.processor")]
    chosen: list[str] = []
    for item in requested:
        if not isinstance(item, str):
            raise LayerSelectionError(f"layers: expected layer names as strings, got {item!r}")
        prefix = item.removesuffix(".processor")
        hits = [n for n in candidates if n == f"{prefix}.processor" or n.startswith(prefix + ".")]
        if not hits:
            raise LayerSelectionError(
                f"layers: {item!r} is neither a preset ({', '.join(sorted(LAYER_PRESETS))}) nor a "
                f"{kind} layer of this model (e.g. {candidates[0].removesuffix('.processor') if candidates else 'none'})"
            )
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def preset_of(spec: LayerSpec) -> LayerPreset | None:
    """The ``LayerPreset`` a specification names, or None for custom specifications."""
    return LAYER_PRESETS.get(spec) if isinstance(spec, str) else None
