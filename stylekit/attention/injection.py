"""StyleID attention injection: capture Q/K/V during inversion, inject them during sampling.

On a targeted self-attention layer, for a stylized row with content image c and style image s::

    Q~ = gamma * Q_c + (1 - gamma) * Q          (query preservation)
    K, V = K_s, V_s                             (key/value injection)
    out = softmax(T * Q~ K^T / sqrt(d)) V       (attention temperature T on injected layers only)

``Q_c``, ``K_s``, ``V_s`` are the projections the same layer produced at the same timestep while the
content / style image was being inverted (or, in "live" mode, the projections of reference rows in
the same batch). Untargeted layers keep whatever processor they had (IP-Adapter, LoRA, ...).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

Mode = Literal["off", "capture", "inject", "live"]
Backend = Literal["sdpa", "math"]
KINDS = ("q", "k", "v")


@dataclass(frozen=True)
class InjectionSettings:
    """The StyleID knobs. ``gamma`` in [0, 1]; ``temperature`` > 0; switches for ablations."""

    gamma: float = 0.75
    temperature: float = 1.5
    attention_injection: bool = True
    query_preservation: bool = True
    backend: Backend = "sdpa"

    def __post_init__(self) -> None:
        for name in ("gamma", "temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 <= float(self.gamma) <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not float(self.temperature) > 0.0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.backend not in ("sdpa", "math"):
            raise ValueError(f"backend must be 'sdpa' or 'math', got {self.backend!r}")

    @property
    def changes_attention(self) -> bool:
        """False when both injection and query preservation are off (the layer then runs unchanged)."""
        return self.attention_injection or self.query_preservation


class FeatureBank:
    """Projections per image, layer, kind (q/k/v) and timestep; tensors of shape (tokens, channels)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, dict[int, torch.Tensor]]] = {}

    def add(self, image_id: str, layer: str, kind: str, timestep: int, value: torch.Tensor) -> None:
        self._data.setdefault(image_id, {}).setdefault(f"{layer}|{kind}", {})[timestep] = value

    def get(self, image_id: str, layer: str, kind: str, timestep: int) -> torch.Tensor:
        try:
            return self._data[image_id][f"{layer}|{kind}"][timestep]
        except KeyError as error:
            raise KeyError(
                f"no captured {kind} for image {image_id[:12]} at layer {layer}, timestep {timestep}"
            ) from error

    def has(self, image_id: str) -> bool:
        return image_id in self._data

    def to_tensors(self, image_id: str) -> dict[str, torch.Tensor]:
        """Flatten one image's features: ``'{layer}|{kind}'`` -> (timesteps, tokens, channels), plus
        ``'timesteps'`` (long, ascending)."""
        entries = self._data[image_id]
        timesteps = sorted(next(iter(entries.values())))
        out = {key: torch.stack([per_t[t] for t in timesteps]) for key, per_t in entries.items()}
        out["timesteps"] = torch.tensor(timesteps, dtype=torch.long)
        return out

    def load(self, image_id: str, tensors: dict[str, torch.Tensor], device: torch.device | str) -> None:
        """Inverse of ``to_tensors``."""
        timesteps = [int(t) for t in tensors["timesteps"].tolist()]
        for key, stacked in tensors.items():
            if key == "timesteps" or "|" not in key:
                continue
            stacked = stacked.to(device)
            self._data.setdefault(image_id, {})[key] = {t: stacked[i] for i, t in enumerate(timesteps)}

    def discard(self, image_id: str) -> None:
        self._data.pop(image_id, None)


class InjectionController:
    """Shared state of all injection processors for one pipeline call.

    Modes:
        off: every targeted layer runs its original processor.
        capture: rows are images being inverted; their q/k/v are recorded in ``bank``.
        inject: rows are stylized images; ``pairs[row] = (content_id, style_id)`` names the bank entries.
        live: the first ``len(live_refs)`` rows are reference images (run plainly, nothing stored), the
            rest are stylized rows whose ``live_pairs[row] = (content_ref_row, style_ref_row)``.
    """

    def __init__(self, settings: InjectionSettings, store_dtype: torch.dtype | None = None) -> None:
        self.settings = settings
        self.store_dtype = store_dtype
        self.mode: Mode = "off"
        self.timestep: int | None = None
        self.bank = FeatureBank()
        self.capture_rows: list[tuple[str, tuple[str, ...]]] = []
        self.pairs: list[tuple[str, str]] = []
        self.live_refs = 0
        self.live_pairs: list[tuple[int, int]] = []
        self.row_active: list[bool] | None = None
        # Optional (rows, h, w) masks in [0, 1] at latent resolution (stylized rows only): a row's injected
        # attention output is kept on its mask's tokens and replaced by the layer's plain self-attention
        # elsewhere (region-restricted injection; set by ``stylekit.regions.RegionalStyle``).
        self.token_masks: torch.Tensor | None = None

    @property
    def injecting(self) -> bool:
        """True when stylized rows are to be changed at the current step."""
        return (
            self.mode in ("inject", "live")
            and self.settings.changes_attention
            and (self.row_active is None or any(self.row_active))
        )

    def record(self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store each captured row's requested projections (``capture_rows[row] = (image_id, kinds)``)."""
        assert self.timestep is not None, "set controller.timestep before each UNet call"
        tensors = {"q": q, "k": k, "v": v}
        for row, (image_id, kinds) in enumerate(self.capture_rows):
            for kind in kinds:
                value = tensors[kind][row].detach()
                if self.store_dtype is not None:
                    value = value.to(self.store_dtype)
                self.bank.add(image_id, layer, kind, self.timestep, value)

    def injected(
        self, layer: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (q, k, v) for stylized rows: (B, tokens, channels) each, q already × temperature."""
        s = self.settings
        own = (
            (q, k, v)
            if self.mode == "inject"
            else (q[self.live_refs :], k[self.live_refs :], v[self.live_refs :])
        )
        stylized = own[0].shape[0]
        if self.mode == "inject":
            assert self.timestep is not None
            t = self.timestep
            pairs = appended_rows(self.pairs, stylized)
            q_content = (
                torch.stack([self.bank.get(c, layer, "q", t) for c, _ in pairs])
                if (s.query_preservation)
                else None
            )
            if s.attention_injection:
                k = torch.stack([self.bank.get(st, layer, "k", t) for _, st in pairs]).to(k.dtype)
                v = torch.stack([self.bank.get(st, layer, "v", t) for _, st in pairs]).to(v.dtype)
        else:  # live: rows [refs..., stylized...]
            refs = self.live_refs
            live_pairs = appended_rows(self.live_pairs, stylized)
            content_rows = [c for c, _ in live_pairs]
            style_rows = [st for _, st in live_pairs]
            q_content = q[content_rows] if s.query_preservation else None
            q, k_ref, v_ref = q[refs:], k[style_rows], v[style_rows]
            k, v = (k_ref, v_ref) if s.attention_injection else (k[refs:], v[refs:])
        if q_content is not None:
            q = s.gamma * q_content.to(q.dtype) + (1.0 - s.gamma) * q
        q = q * s.temperature
        if self.row_active is not None and not all(self.row_active):
            active = torch.tensor(appended_rows(self.row_active, stylized), device=q.device).view(-1, 1, 1)
            q, k, v = (torch.where(active, new, old) for new, old in zip((q, k, v), own, strict=True))
        return q, k, v


def appended_rows(per_row: Sequence[Any], rows: int) -> list[Any]:
    """``per_row`` (one entry per stylized row) for a batch of ``rows``: rows appended after ours repeat our
    last ones (StyleTokens' style guidance appends a copy of the text-conditioned rows, which in a StyleID
    batch, without classifier-free guidance, are all of them)."""
    extra = rows - len(per_row)
    if extra == 0:
        return list(per_row)
    if not 0 < extra <= len(per_row):
        raise ValueError(f"StyleID injection: {rows} stylized rows in the batch for {len(per_row)} outputs")
    return [*per_row, *per_row[len(per_row) - extra :]]


def token_mask(masks: torch.Tensor, tokens: int) -> torch.Tensor:
    """(rows, h, w) latent-resolution masks -> (rows, tokens, 1) for a layer with ``tokens`` positions.

    The layer's grid is the latent grid halved (rounding up, like the UNet's stride-2 convolutions) until
    it has ``tokens`` cells; masks are area-averaged onto it, so values stay in [0, 1].
    """
    height, width = int(masks.shape[-2]), int(masks.shape[-1])
    while height * width > tokens:
        height, width = (height + 1) // 2, (width + 1) // 2
    if height * width != tokens:
        raise ValueError(
            f"cannot map a {tuple(masks.shape[-2:])} latent mask onto a layer of {tokens} tokens"
        )
    level = masks[:, None].float()
    if (height, width) != tuple(masks.shape[-2:]):
        level = F.adaptive_avg_pool2d(level, (height, width))
    return level.flatten(1)[..., None]


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend: Backend = "sdpa"
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v on (batch, heads, tokens, head_dim) tensors."""
    if backend == "sdpa":
        return F.scaled_dot_product_attention(query, key, value)
    scores = query.float() @ key.float().transpose(-1, -2) / math.sqrt(query.shape[-1])
    return (scores.softmax(dim=-1) @ value.float()).to(query.dtype)


def self_attention_tokens(
    attn: Any, hidden_states: torch.Tensor, temb: torch.Tensor | None
) -> tuple[torch.Tensor, tuple[int, ...] | None]:
    """diffusers' self-attention prologue: spatial norm, ``(B, C, H, W)`` -> ``(B, H*W, C)``, group norm.

    Returns the tokens and the 4-D input shape (None for 3-D input), for :func:`self_attention_output`.
    """
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    shape = tuple(hidden_states.shape) if hidden_states.ndim == 4 else None
    if shape is not None:
        batch, channel, height, width = shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
    return hidden_states, shape


def self_attention_output(
    attn: Any, hidden_states: torch.Tensor, residual: torch.Tensor, shape: tuple[int, ...] | None
) -> torch.Tensor:
    """diffusers' self-attention epilogue: output projection, back to ``shape``, residual, rescale."""
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
    if shape is not None:
        hidden_states = hidden_states.transpose(-1, -2).reshape(*shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


def multihead_attention(
    attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend: Backend = "sdpa"
) -> torch.Tensor:
    """``(B, Nq, C)``, ``(B, Nk, C)`` x2 -> ``(B, Nq, C)``: split into ``attn.heads`` heads, the layer's q/k
    norms, :func:`attention`, heads merged."""
    batch = query.shape[0]
    head_dim = key.shape[-1] // attn.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    query, key, value = heads(query), heads(key), heads(value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = attention(query, key, value, backend)
    return out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)


class StyleInjectionProcessor:
    """Attention processor for a targeted self-attention layer; see the module docstring.

    ``fallback`` is the processor the layer had before, used whenever the controller is off or the
    current step is outside the injection range, so the layer then behaves exactly as before.
    """

    def __init__(self, layer: str, controller: InjectionController, fallback: Any) -> None:
        self.layer = layer
        self.controller = controller
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
        ctrl = self.controller
        if encoder_hidden_states is not None or not (ctrl.injecting or ctrl.mode == "capture"):
            return self.fallback(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        if attention_mask is not None:
            raise ValueError("StyleInjectionProcessor does not support self-attention masks")

        residual = hidden_states
        hidden_states, shape = self_attention_tokens(attn, hidden_states, temb)
        query = attn.to_q(hidden_states)
        key = attn.to_k(hidden_states)
        value = attn.to_v(hidden_states)
        if ctrl.mode == "capture":
            ctrl.record(self.layer, query, key, value)
            queries, keys, values = query, key, value
        elif ctrl.mode == "inject":
            queries, keys, values = ctrl.injected(self.layer, query, key, value)
        else:
            refs = ctrl.live_refs
            q_gen, k_gen, v_gen = ctrl.injected(self.layer, query, key, value)
            queries = torch.cat([query[:refs], q_gen])
            keys = torch.cat([key[:refs], k_gen])
            values = torch.cat([value[:refs], v_gen])

        hidden_states = self._attend(attn, queries, keys, values)
        if ctrl.token_masks is not None and ctrl.mode in ("inject", "live"):
            refs = ctrl.live_refs if ctrl.mode == "live" else 0
            plain = self._attend(attn, query[refs:], key[refs:], value[refs:])
            masks = ctrl.token_masks[appended_rows(range(len(ctrl.token_masks)), plain.shape[0])]
            keep = token_mask(masks, plain.shape[1]).to(plain.dtype)
            restricted = keep * hidden_states[refs:] + (1 - keep) * plain
            hidden_states = torch.cat([hidden_states[:refs], restricted]) if refs else restricted
        return self_attention_output(attn, hidden_states, residual, shape)

    def _attend(self, attn: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return multihead_attention(attn, query, key, value, self.controller.settings.backend)


@contextmanager
def swapped_processors(unet: Any, make: Callable[[str, Any], Any], layers: Sequence[str]) -> Iterator[None]:
    """Set ``make(name, current_processor)`` on each processor name in ``layers`` (attention modules found by
    path, ``...attn1.processor`` -> ``...attn1``) and put the previous processors back on exit, also on error.

    Equivalent to ``set_attn_processor`` with a full dict but touches only ``layers``: diffusers' version
    walks every module of the UNet twice per install (tens of ms per window on a motion UNet).
    """
    modules = [unet.get_submodule(name.removesuffix(".processor")) for name in layers]
    saved = [module.processor for module in modules]
    try:
        for name, module, previous in zip(layers, modules, saved, strict=True):
            module.set_processor(make(name, previous))
        yield
    finally:
        for module, previous in zip(modules, saved, strict=True):
            module.set_processor(previous)


@contextmanager
def installed_processors(unet: Any, layers: Sequence[str], controller: InjectionController) -> Iterator[None]:
    """Install injection processors on ``layers`` (processor names) and put the previous processors back on
    exit, also when the body raises."""
    with swapped_processors(
        unet, lambda name, previous: StyleInjectionProcessor(name, controller, previous), layers
    ):
        yield
