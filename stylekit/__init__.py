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
}

__all__ = ["Conditioner", "StyleCondition", "__version__", "load_pipeline"]

if TYPE_CHECKING:
    from stylekit.conditioning import Conditioner, StyleCondition
    from stylekit.models import load_pipeline


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stylekit' has no attribute {name!r}")
