"""Decoupled cross-attention on style tokens, as a processor that wraps a layer's existing processor.

``out = base(attn, x, text) + scale * W_out · softmax(q kᵢₚᵀ / √d) vᵢₚ / rescale_output_factor``

with ``q = to_q(x)`` and ``kᵢₚ, vᵢₚ = to_k_ip(tokens), to_v_ip(tokens)``. This equals diffusers'
``IPAdapterAttnProcessor2_0`` (which adds the style attention before ``to_out``; ``to_out`` is affine, so
adding ``W_out ·`` after it is the same), but it keeps whatever processor the layer had (LoRA, another
adapter, an injection processor) instead of replacing it, and it can act on some batch rows only (the
text-only rows of three-pass guidance stay exactly the base model's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from stylekit.attention.injection import multihead_attention


@dataclass
class TokenState:
    """What the processors of one call share.

    Attributes:
        context: ``(N, T, C)`` style context tokens (N = 1: the same style for every styled row), or None.
        time_delta: ``(N, E)`` added (times ``time_scale``) to the timestep embedding of the styled rows.
        scales: processor name -> scale (layers absent or at 0 are skipped).
        row_weights: ``(B,)`` per-row weights for the current UNet batch (0 = row untouched), or None:
            every row when the batch has N rows, else the last ``n_rows`` rows (rows prepended by another
            conditioner, e.g. StyleID's reference rows, are left alone).
        n_rows: how many rows the pipeline's own batch has (None = every row).
        frames: attention rows per UNet row (video UNets flatten ``(B, F)`` into ``B * F`` rows, frame
            fastest; the timestep embedding keeps one row per video).
    """

    context: torch.Tensor | None = None
    time_delta: torch.Tensor | None = None
    time_scale: float = 0.0
    scales: dict[str, float] = field(default_factory=dict)
    row_weights: torch.Tensor | None = None
    n_rows: int | None = None
    frames: int = 1

    def rows(
        self, batch: int, device: torch.device, frames: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(row indices (R,), weights (R,))`` of the styled rows of a ``batch``-row call, or None
        (``frames``: rows per UNet row, as in ``self.frames``)."""
        if self.row_weights is not None:
            row_weights = self.row_weights.repeat_interleave(frames) if frames > 1 else self.row_weights
            if len(row_weights) != batch:
                raise RuntimeError(f"style-token row weights have {len(row_weights)} rows, batch has {batch}")
            index = row_weights.nonzero().flatten().to(device)
            return (index, row_weights.to(device)[index]) if len(index) else None
        n = self.n_rows * frames if self.n_rows else batch
        start = max(batch - n, 0)
        index = torch.arange(start, batch, device=device)
        return index, torch.ones(len(index), device=device)


class StyleTokenProcessor:
    """Processor for one cross-attention layer (not an ``nn.Module``: installing it adds no parameters
    to the UNet; the projections live in the adapter)."""

    def __init__(
        self, name: str, base: Any, to_k_ip: nn.Linear, to_v_ip: nn.Linear, state: TokenState
    ) -> None:
        self.name = name
        self.base = base
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.state = state

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        out = self.base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        state = self.state
        scale = float(state.scales.get(self.name, 0.0))
        if scale == 0.0 or state.context is None or encoder_hidden_states is None:
            return out
        selected = state.rows(hidden_states.shape[0], hidden_states.device, state.frames)
        if selected is None:
            return out
        index, weights = selected
        x = hidden_states
        if attn.spatial_norm is not None:
            x = attn.spatial_norm(x, temb)
        four_d = x.ndim == 4
        if four_d:
            b, c, h, w = x.shape
            x = x.view(b, c, h * w).transpose(1, 2)
        x = x.index_select(0, index)
        if attn.group_norm is not None:
            x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
        context = state.context.to(device=x.device, dtype=x.dtype)
        context = context[torch.arange(len(index), device=x.device) // state.frames % len(context)]
        style = multihead_attention(attn, attn.to_q(x), self.to_k_ip(context), self.to_v_ip(context))
        style = F.linear(style, attn.to_out[0].weight) / attn.rescale_output_factor
        if four_d:
            style = style.transpose(-1, -2).reshape(len(index), c, h, w)
        shape = (-1,) + (1,) * (style.ndim - 1)
        delta = (scale * weights.to(style.dtype)).view(shape) * style
        if len(index) == out.shape[0]:
            return out + delta
        return out.index_add(0, index, delta.to(out.dtype))


def add_time_delta(state: TokenState, output: torch.Tensor) -> torch.Tensor:
    """Forward hook body for ``unet.time_embedding``: add the style's timestep-embedding offset to the
    styled rows of ``output`` ``(B, E)``."""
    if state.time_delta is None or state.time_scale == 0.0:
        return output
    selected = state.rows(output.shape[0], output.device)
    if selected is None:
        return output
    index, weights = selected
    delta = state.time_delta.to(device=output.device, dtype=output.dtype)
    delta = delta[torch.arange(len(index), device=output.device) % len(delta)]
    delta = (state.time_scale * weights.to(output.dtype))[:, None] * delta
    if len(index) == output.shape[0]:
        return output + delta
    return output.index_add(0, index, delta)
