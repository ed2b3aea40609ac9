"""Saving and loading style embeddings, stamped with the extractor's identity; style directions."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .model import StyleExtractor, _atomic_write

KEY = "embeddings"


def save_embeddings(
    path: str | os.PathLike,
    embeddings: torch.Tensor,
    extractor: StyleExtractor,
    tokens: torch.Tensor | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write embeddings (and optional tokens) to a safetensors file, atomically.

    The metadata records ``identity`` (config and weights hash), ``config_hash``, ``embed_dim`` and
    ``format``, so a later load can tell which extractor produced them.

    Args:
        embeddings: ``(N, D)`` (or ``(D,)``) with ``D == extractor.embed_dim``.
        tokens: ``(N, T, D)`` local style tokens, optional.
        metadata: extra string metadata.
    """
    embeddings = torch.as_tensor(embeddings)  # numpy arrays too
    tokens = None if tokens is None else torch.as_tensor(tokens)
    if embeddings.shape[-1] != extractor.embed_dim or embeddings.ndim not in (1, 2):
        raise ValueError(
            f"embeddings have shape {tuple(embeddings.shape)}, expected (N, {extractor.embed_dim}) for this extractor"
        )
    tensors = {KEY: embeddings.detach().cpu().float().contiguous()}
    if tokens is not None:
        tensors["tokens"] = tokens.detach().cpu().float().contiguous()
    meta = {
        **(metadata or {}),
        "format": "stylekit-style-embeddings",
        "identity": extractor.identity(),
        "config_hash": extractor.config_hash(),
        "embed_dim": str(extractor.embed_dim),
    }
    path = Path(path)
    _atomic_write(path, lambda p: save_file(tensors, p, metadata=meta))
    return path


def load_embeddings(
    path: str | os.PathLike, extractor: StyleExtractor | None = None, strict: bool = True
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Load embeddings written by :func:`save_embeddings`.

    Args:
        extractor: if given, the embedding dimension must match it and (``strict``) so must its identity.

    Returns:
        ``(embeddings, metadata)``; ``metadata["tokens"]`` holds the tokens if they were saved.

    Raises:
        ValueError: wrong dimension (naming both shapes) or another extractor's embeddings (naming both
            identities) when ``strict``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta: dict[str, Any] = dict(handle.metadata() or {})
            if KEY not in handle.keys():
                raise ValueError(f"{path} holds no {KEY!r} tensor: not a stylekit embeddings file")
            emb = handle.get_tensor(KEY)
            if "tokens" in handle.keys():
                meta["tokens"] = handle.get_tensor("tokens")
    except SafetensorError as error:
        raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    if extractor is not None:
        if emb.shape[-1] != extractor.embed_dim:
            raise ValueError(
                f"{path}: embeddings have shape {tuple(emb.shape)} but this extractor produces "
                f"(N, {extractor.embed_dim})"
            )
        if strict and meta.get("identity") != extractor.identity():
            raise ValueError(
                f"{path}: embeddings were made by extractor {meta.get('identity')}, not by this one "
                f"({extractor.identity()}); embed the images again with this extractor (from Python, strict=False uses "
                f"them anyway)"
            )
    return emb, meta


def style_direction(
    extractor: StyleExtractor, target: Any, reference: Any, normalize: bool = False
) -> torch.Tensor:
    """A style direction: mean style embedding of ``target`` images minus that of ``reference`` images.

    As RAVE does with CLIP embeddings; usable as ``StyleCondition(embedding=direction)``.

    Args:
        target, reference: image sets (see :meth:`StyleExtractor.embed`) or ``(N, D)`` embeddings.
        normalize: return a unit vector.

    Returns:
        ``(D,)`` float tensor.
    """

    def mean_of(x: Any, name: str) -> torch.Tensor:
        if (
            isinstance(x, torch.Tensor)
            and x.ndim == 2
            and x.is_floating_point()
            and x.shape[-1] == extractor.embed_dim
        ):
            emb = x
        else:
            emb = extractor.embed(x)
        if emb.shape[0] == 0:
            raise ValueError(f"style_direction: {name} is empty")
        return emb.float().mean(0)

    direction = mean_of(target, "target") - mean_of(reference, "reference")
    return torch.nn.functional.normalize(direction, dim=0) if normalize else direction
