"""Temporal metrics for videos with known motion (the synthetic world's ground-truth flow and masks).

- ``warp_error``: mean absolute difference between frame ``t`` and frame ``t + 1`` warped back along the
  ground-truth forward flow, over pixels whose scene point stays visible (same owner -- paper or the same
  object -- at both ends, target inside the image). 0 = perfectly consistent with the motion.
- ``style_consistency``: mean cosine similarity of consecutive frames' style embeddings (the bundled
  style extractor); 1 = the style does not flicker.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stylekit.metrics import as_batch


def owners(masks: np.ndarray) -> np.ndarray:
    """Per-pixel owner of ``(T, K, S, S)`` masks: index of the topmost object holding it, -1 for paper."""
    masks = np.asarray(masks, dtype=bool)
    owner = np.full((masks.shape[0], *masks.shape[2:]), -1, dtype=np.int64)
    for k in range(masks.shape[1]):
        owner = np.where(masks[:, k], k, owner)
    return owner


def warp_error(frames: Any, flow: np.ndarray, masks: np.ndarray, border: int = 1) -> float:
    """Mean |frame_t - warp(frame_{t+1})| (RGB in [0, 1]) over visible pixels and all t.

    Args:
        frames: ``T`` frames (``(T, S, S, 3)`` uint8/float array or anything ``stylekit.metrics.as_batch``
            takes), the size of the flow.
        flow: float ``(T - 1, S, S, 2)`` forward flow in pixels ``(dx, dy)`` (``stylekit.data.video``).
        masks: bool ``(T, K, S, S)`` per-object masks.
        border: also drop pixels within this many pixels of an owner change (antialiased edges).

    Returns:
        The mean error (float).
    """
    x = as_batch(list(frames) if isinstance(frames, np.ndarray) else frames).float()
    count, _, height, width = x.shape
    flow_t = torch.as_tensor(np.asarray(flow), dtype=torch.float32)
    if flow_t.shape != (count - 1, height, width, 2):
        raise ValueError(f"flow: expected shape {(count - 1, height, width, 2)}, got {tuple(flow_t.shape)}")
    owner = torch.as_tensor(owners(masks))
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    tx = xs + flow_t[..., 0]
    ty = ys + flow_t[..., 1]
    grid = torch.stack([tx / width * 2 - 1, ty / height * 2 - 1], dim=-1)
    warped = F.grid_sample(x[1:], grid, mode="bilinear", padding_mode="border", align_corners=False)
    inside = (tx >= 0.5) & (tx <= width - 0.5) & (ty >= 0.5) & (ty <= height - 0.5)
    col = tx.floor().long().clamp(0, width - 1)
    row = ty.floor().long().clamp(0, height - 1)
    target_owner = torch.stack([owner[t + 1][row[t], col[t]] for t in range(count - 1)])
    visible = inside & (target_owner == owner[:-1])
    if border > 0:
        edges = _owner_edges(owner, border)
        visible &= ~edges[:-1]
    diff = (x[:-1] - warped).abs().mean(dim=1)
    if not visible.any():
        raise ValueError("warp_error: no pixel stays visible between frames")
    return float(diff[visible].mean())


def _owner_edges(owner: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within ``radius`` of an owner change, (T, S, S) bool."""
    o = owner.float()[:, None]
    size = 2 * radius + 1
    high = F.max_pool2d(o, size, stride=1, padding=radius)
    low = -F.max_pool2d(-o, size, stride=1, padding=radius)
    return (high != low)[:, 0]


def style_consistency(frames: Any, extractor: Any | None = None) -> float:
    """Mean cosine similarity of consecutive frames' style embeddings (bundled extractor by default)."""
    from stylekit.metrics_style import style_similarity

    images = list(frames)
    if len(images) < 2:
        raise ValueError("style_consistency: needs at least 2 frames")
    return float(style_similarity(images[:-1], images[1:], extractor).mean())
