"""Cross-frame attention: each frame's self-attention also attends to anchor frames' keys and values.

For frame ``f`` of a window on a targeted self-attention layer (Rerender-A-Video / Pix2Video style)::

    K_f' = [K_f ; K_first ; K_{f-1}],  V_f' = [V_f ; V_first ; V_{f-1}]
    out_f = softmax(Q_f K_f'^T / sqrt(d)) V_f'

``first`` is the video's frame 0. In the window that holds it, its K/V come from the same batch and are
stored per (layer, step); later windows read them from that store, so memory is bounded by one frame,
not by the video. ``f - 1`` is the previous frame in the window (the window's first frame uses itself).
For frame 0 itself every key is its own, repeated, which leaves softmax attention unchanged: frame 0 is
exactly plain self-attention.

Rows are ``(videos * frames)`` in video-major order (the layout of diffusers' ``UNetMotionModel`` and of a
2-D UNet fed one window of frames).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from stylekit.attention.injection import (
    multihead_attention,
    self_attention_output,
    self_attention_tokens,
    swapped_processors,
    token_mask,
)

ANCHORS = ("first", "previous")


class CrossFrameState:
    """Shared state of the cross-frame processors for one pipeline call.

    Attributes:
        frames: frames per video in the current batch (rows = videos * frames).
        holds_first: whether row 0 of the current window is the video's frame 0.
        step: the current denoising step index (the key of the first-frame store).
        enabled: False runs every targeted layer with its previous processor.
        include_injected: whether StyleID-injected layers also attend to the anchors (``anchored_injection``).
        keep_first: whether frame 0's K/V are stored for later windows (False when the video is one window:
            nothing would read them).
    """

    def __init__(self, anchors: Sequence[str] = ANCHORS, backend: str = "sdpa") -> None:
        unknown = set(anchors) - set(ANCHORS)
        if unknown or not anchors:
            raise ValueError(f"anchors: expected a non-empty subset of {ANCHORS}, got {tuple(anchors)!r}")
        self.anchors = tuple(anchors)
        self.backend = backend
        self.frames = 1
        self.holds_first = True
        self.step = 0
        self.enabled = True
        self.include_injected = False
        self.include_self = True
        self.keep_first = True
        self._first: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def first_kv(self, layer: str, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame 0's (K, V) at ``layer`` and the current step, (videos, 1, tokens, C); stored when present."""
        key = (layer, self.step)
        if self.holds_first:
            pair = (k[:, :1], v[:, :1])
            if self.keep_first:
                self._first[key] = (pair[0].detach().clone(), pair[1].detach().clone())
            return pair
        if key not in self._first:
            raise RuntimeError(
                f"cross-frame attention: no stored first-frame K/V for {layer} at step {self.step}"
            )
        return self._first[key]

    def anchor_kv(
        self, layer: str, k5: torch.Tensor, v5: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The anchors' keys and values for every frame, each ``(videos, frames, tokens, C)`` like ``k5`` /
        ``v5``: the first frame's (from the store) and the previous frame's (frame 0 uses itself)."""
        keys, values = [], []
        if "first" in self.anchors:
            k_first, v_first = self.first_kv(layer, k5, v5)
            keys.append(k_first.expand_as(k5))
            values.append(v_first.expand_as(v5))
        if "previous" in self.anchors:
            keys.append(torch.cat([k5[:, :1], k5[:, :-1]], dim=1))
            values.append(torch.cat([v5[:, :1], v5[:, :-1]], dim=1))
        return keys, values

    def stored_bytes(self) -> int:
        return sum(
            k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self._first.values()
        )


class CrossFrameProcessor:
    """Self-attention over the frame's own and its anchors' keys/values; see the module docstring.

    ``fallback`` (the layer's previous processor) handles cross-attention calls and disabled states.
    """

    def __init__(self, layer: str, state: CrossFrameState, fallback: Any) -> None:
        self.layer = layer
        self.state = state
        self.fallback = fallback

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
        state = self.state
        if encoder_hidden_states is not None or attention_mask is not None or not state.enabled:
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        hidden_states, shape = self_attention_tokens(attn, hidden_states, temb)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        rows, tokens, channels = key.shape
        frames = state.frames
        if rows % frames:
            raise RuntimeError(f"cross-frame attention: {rows} rows are not a multiple of {frames} frames")
        k5 = key.view(rows // frames, frames, tokens, channels)
        v5 = value.view(rows // frames, frames, tokens, channels)
        keys, values = ([k5], [v5]) if state.include_self else ([], [])
        anchor_keys, anchor_values = state.anchor_kv(self.layer, k5, v5)
        key = torch.cat(keys + anchor_keys, dim=2).reshape(rows, -1, channels)
        value = torch.cat(values + anchor_values, dim=2).reshape(rows, -1, channels)
        hidden_states = multihead_attention(attn, query, key, value, state.backend)  # type: ignore[arg-type]
        return self_attention_output(attn, hidden_states, residual, shape)


@contextmanager
def cross_frame_processors(unet: Any, layers: Sequence[str], state: CrossFrameState) -> Iterator[None]:
    """Install ``CrossFrameProcessor`` on ``layers``; restore their previous processors on exit."""
    with swapped_processors(unet, lambda name, previous: CrossFrameProcessor(name, state, previous), layers):
        yield


class AnchoredInjectionProcessor:
    """StyleID injection whose keys/values also include the anchor frames' own (generated) K/V.

    On an injected layer frame ``f`` attends to ``[K_style ; K_first ; K_{f-1}]`` (the anchors' keys and
    values as computed from their current hidden states), so the texture a frame takes from the style
    follows what its anchors already drew. Wraps a ``StyleInjectionProcessor`` (its controller decides
    the injected query and style K/V, and its fallback runs outside the injection range). With region token
    masks (``controller.token_masks``, set by ``stylekit.regions.RegionalStyle``) a row keeps this output on
    its mask's tokens and gets the layer's unstyled cross-frame attention (``CrossFrameProcessor``'s) elsewhere.
    """

    def __init__(self, inner: Any, state: CrossFrameState) -> None:
        self.inner = inner
        self.layer = inner.layer
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
        ctrl = self.inner.controller
        if (
            encoder_hidden_states is not None
            or attention_mask is not None
            or ctrl.mode != "inject"
            or not ctrl.injecting
        ):
            return self.inner(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        hidden_states, shape = self_attention_tokens(attn, hidden_states, temb)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        q, k_style, v_style = ctrl.injected(self.layer, query, key, value)
        rows, tokens, channels = key.shape
        frames = self.state.frames
        k5 = key.view(rows // frames, frames, tokens, channels)
        v5 = value.view(rows // frames, frames, tokens, channels)
        anchor_keys, anchor_values = self.state.anchor_kv(self.layer, k5, v5)
        keys = [k_style.view(rows // frames, frames, -1, channels), *anchor_keys]
        values = [v_style.view(rows // frames, frames, -1, channels), *anchor_values]
        styled = self.inner._attend(
            attn,
            q,
            torch.cat(keys, dim=2).reshape(rows, -1, channels),
            torch.cat(values, dim=2).reshape(rows, -1, channels),
        )
        if ctrl.token_masks is None:
            return self_attention_output(attn, styled, residual, shape)
        # Regions: outside a row's token mask, the layer's unstyled cross-frame attention (own + anchors' K/V).
        own_k, own_v = ([k5], [v5]) if self.state.include_self else ([], [])
        plain = self.inner._attend(
            attn,
            query,
            torch.cat(own_k + anchor_keys, dim=2).reshape(rows, -1, channels),
            torch.cat(own_v + anchor_values, dim=2).reshape(rows, -1, channels),
        )
        keep = token_mask(ctrl.token_masks, tokens).to(styled.dtype)
        return self_attention_output(attn, keep * styled + (1 - keep) * plain, residual, shape)


@contextmanager
def anchored_injection(unet: Any, state: CrossFrameState) -> Iterator[None]:
    """Wrap every installed ``StyleInjectionProcessor`` in an ``AnchoredInjectionProcessor``; restore on exit."""
    from stylekit.attention.injection import StyleInjectionProcessor

    layers = [name for name, p in unet.attn_processors.items() if isinstance(p, StyleInjectionProcessor)]
    with swapped_processors(unet, lambda _, previous: AnchoredInjectionProcessor(previous, state), layers):
        yield
