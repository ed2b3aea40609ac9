"""Attention processors and layer targeting."""

from stylekit.attention.conditioner import AttentionInjection, Row
from stylekit.attention.injection import (
    FeatureBank,
    InjectionController,
    InjectionSettings,
    StyleInjectionProcessor,
    installed_processors,
)
from stylekit.attention.targeting import (
    LAYER_PRESETS,
    LayerPreset,
    LayerSelectionError,
    preset_of,
    resolve_layers,
)

__all__ = [
    "LAYER_PRESETS",
    "AttentionInjection",
    "FeatureBank",
    "InjectionController",
    "InjectionSettings",
    "LayerPreset",
    "LayerSelectionError",
    "Row",
    "StyleInjectionProcessor",
    "installed_processors",
    "preset_of",
    "resolve_layers",
]
