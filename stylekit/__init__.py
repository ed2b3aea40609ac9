"""stylekit: diffusion-based style transfer and style customization on Hugging Face diffusers.

The top-level names are imported lazily, so ``import stylekit`` (and ``stylekit --help``) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "StyleCondition": "stylekit.conditioning",
    "Conditioner": "stylekit.conditioning",
    "load_pipeline": "stylekit.models",
    "AttentionInjection": "stylekit.attention.conditioner",
    "RegionalStyle": "stylekit.regions",
    "LoRAStyle": "stylekit.lora_style",
}

__all__ = [
    "AttentionInjection",
    "Conditioner",
    "LoRAStyle",
    "RegionalStyle",
    "StyleCondition",
    "__version__",
    "load_pipeline",
]

if TYPE_CHECKING:
    from stylekit.attention.conditioner import AttentionInjection
    from stylekit.conditioning import Conditioner, StyleCondition
    from stylekit.lora_style import LoRAStyle
    from stylekit.models import load_pipeline
    from stylekit.regions import RegionalStyle


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylekit' has no attribute {name!r}")
