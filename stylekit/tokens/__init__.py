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
from typing import Any

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
    "resolve_adapter",
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


def resolve_adapter(
    adapter: StyleTokenAdapter | str | Path | None = None, unet: Any = None
) -> StyleTokenAdapter:
    """``adapter`` (a ``StyleTokenAdapter`` or its folder) or, when None, the bundled one (made for ``mini``);
    checked against ``unet`` when given.

    Raises:
        TypeError: ``adapter`` is neither an adapter nor a folder.
        AdapterCompatibilityError: the adapter does not fit ``unet`` (for the bundled one, the message says
            to pass an adapter trained for the model).
    """
    if adapter is None:
        bundled = load_default_adapter()
        if unet is not None:
            try:
                bundled.check_unet(unet)
            except AdapterCompatibilityError as error:
                raise AdapterCompatibilityError(
                    "style: a text or embedding style needs a style-token adapter; the bundled one (made for "
                    f"mini) does not fit this UNet ({error}); pass a StyleTokenAdapter (or its folder) "
                    "trained for this model"
                ) from None
        return bundled
    if isinstance(adapter, (str, Path)):
        adapter = StyleTokenAdapter.from_pretrained(adapter)
    if not isinstance(adapter, StyleTokenAdapter):
        raise TypeError(f"expected a StyleTokenAdapter or its folder, got {type(adapter).__name__}")
    if unet is not None:
        adapter.check_unet(unet)
    return adapter
