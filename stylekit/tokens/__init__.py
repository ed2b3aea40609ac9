"""Style tokens: style-extractor tokens through decoupled cross-attention (IP-Adapter-like), with
per-block scales and StyleMaster's separate style guidance; see docs/style-tokens.md.

Quick start::

    from stylekit import StyleCondition, load_pipeline
    from stylekit.tokens import StyleTokens, load_default_adapter, text_to_image

    pipe = load_pipeline("mini", kind="text-to-image")
    tokens = StyleTokens(load_default_adapter(), StyleCondition(image="style.png"), style_guidance_scale=3.0)
    image = text_to_image(pipe, "a red star on plain white paper, thin outline", tokens).images[0]
"""

from __future__ import annotations

from pathlib import Path

from .adapter import (
    AdapterCompatibilityError,
    AdapterConfig,
    LayerShape,
    StyleTokenAdapter,
    cross_attention_layers,
)
from .conditioner import StyleTokens, text_to_image
from .latent_stats import LatentStatsHead
from .processor import StyleTokenProcessor, TokenState
from .scales import SCALE_PRESETS, layer_scales

DEFAULT_ADAPTER_PATH = Path(__file__).resolve().parent.parent / "assets" / "style_tokens_mini"

__all__ = [
    "DEFAULT_ADAPTER_PATH",
    "SCALE_PRESETS",
    "AdapterCompatibilityError",
    "AdapterConfig",
    "LatentStatsHead",
    "LayerShape",
    "StyleTokenAdapter",
    "StyleTokenProcessor",
    "StyleTokens",
    "TokenState",
    "cross_attention_layers",
    "layer_scales",
    "load_default_adapter",
    "text_to_image",
]


def load_default_adapter() -> StyleTokenAdapter:
    """The adapter trained for the bundled ``mini`` model (``stylekit/assets/style_tokens_mini``)."""
    if not (DEFAULT_ADAPTER_PATH / "adapter.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled style-token adapter is missing from {DEFAULT_ADAPTER_PATH}; train it with "
            "`accelerate launch -m stylekit.tokens.train --pretrained_model_name_or_path mini` (docs/style-tokens.md)"
        )
    return StyleTokenAdapter.from_pretrained(DEFAULT_ADAPTER_PATH)
