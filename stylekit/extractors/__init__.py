"""Contrastive style extractors (CSD layout), their losses and training; see docs/extractors.md.

Quick start::

    from stylekit.extractors import load_default
    extractor = load_default()                      # the bundled world extractor (lazy, ~1 MB)
    emb = extractor.embed(images)                   # (N, 128), L2-normalised
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from .config import ExtractorConfig
from .embeddings import load_embeddings, save_embeddings, style_direction
from .model import ExtractorCheckpointError, ExtractorOutput, StyleExtractor
from .ops import (
    clip_text_embeddings,
    content_shuffle,
    dann_alpha,
    grad_reverse,
    select_tokens,
    subtract_content,
)

DEFAULT_PATH = Path(__file__).resolve().parent.parent / "assets" / "extractor"

__all__ = [
    "DEFAULT_PATH",
    "ExtractorCheckpointError",
    "ExtractorConfig",
    "ExtractorOutput",
    "StyleExtractor",
    "clip_text_embeddings",
    "content_shuffle",
    "dann_alpha",
    "grad_reverse",
    "load_default",
    "load_embeddings",
    "save_embeddings",
    "select_tokens",
    "style_direction",
    "subtract_content",
]


@lru_cache(maxsize=1)
def load_default() -> StyleExtractor:
    """The bundled extractor for the synthetic world (``stylekit/assets/extractor``), loaded once, eval mode."""
    if not (DEFAULT_PATH / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"the bundled style extractor is missing from {DEFAULT_PATH}; train it with "
            "`accelerate launch -m stylekit.extractors.train --config stylekit/extractors/configs/world.toml` "
            "(docs/extractors.md)"
        )
    return StyleExtractor.from_pretrained(DEFAULT_PATH)
