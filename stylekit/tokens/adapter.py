"""``StyleTokenAdapter``: the trainable part of style tokens (IP-Adapter-like decoupled cross-attention).

A style is summarised as a *style code*: the extractor's global style embedding ``g`` (``(D,)``, unit
length) and the mean of its local style tokens ``l`` (``(D,)``). Two ``diffusers`` ``ImageProjection``
heads turn ``g`` into ``num_global_tokens`` and ``l`` into ``num_local_tokens`` context tokens of the
UNet's cross-attention width. Every cross-attention layer gets new ``to_k_ip`` / ``to_v_ip`` projections
of those tokens; ``to_v_ip`` starts at zero, so an untrained adapter leaves the model exactly as it was
(``to_k_ip`` starts as a copy of the layer's ``to_k``, as IP-Adapter initialises it).

A text head maps the pipeline text encoder's pooled output of a style description to a style code, so a
style given as text lands in the same space as one given as an image; ``local_from_global`` predicts
``l`` when only a global embedding is given.

Saved as ``config.json`` + ``adapter.safetensors`` (written atomically).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers.models.embeddings import ImageProjection
from safetensors.torch import load_file, save_file
from torch import nn

from stylekit.files import atomic_path
from stylekit.tokens.latent_stats import LatentStatsHead

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "adapter.safetensors"


class AdapterCompatibilityError(ValueError):
    """An adapter does not fit a UNet, text encoder or extractor (the message names both shapes)."""


@dataclass(frozen=True)
class LayerShape:
    """One cross-attention layer: its processor name, the key/value width and the context width."""

    name: str
    inner_dim: int
    cross_attention_dim: int


@dataclass(frozen=True)
class AdapterConfig:
    """Architecture of a style-token adapter.

    Attributes:
        embed_dim: the extractor's style-embedding (and token) size ``D``.
        cross_attention_dim: the UNet's context width ``C``.
        text_dim: hidden size of the text encoder whose pooled output the text head reads (0 = no head).
        layers: the cross-attention layers that get ``to_k_ip`` / ``to_v_ip``.
        num_global_tokens, num_local_tokens: context tokens made from ``g`` and ``l``.
        text_hidden: width of the text head's hidden layer.
        extractor_hash: ``StyleExtractor.config_hash()`` of the extractor it was trained with ("" = any).
        time_embed_dim: width of the UNet's timestep embedding for the optional global path (a zero-init
            linear map of the style code added to the timestep embedding); 0 = off.
        latent_stats_channels: latent channels of the optional latent-statistics head (style code ->
            per-channel latent means/stds, for latent-statistics guidance of text/embedding styles); 0 = none.
            Configs written before it existed load with 0.
    """

    embed_dim: int
    cross_attention_dim: int
    text_dim: int = 0
    layers: tuple[LayerShape, ...] = field(default_factory=tuple)
    num_global_tokens: int = 4
    num_local_tokens: int = 2
    text_hidden: int = 256
    extractor_hash: str = ""
    time_embed_dim: int = 0
    latent_stats_channels: int = 0

    def __post_init__(self) -> None:
        for name in ("embed_dim", "cross_attention_dim", "num_global_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"AdapterConfig.{name}: expected >= 1, got {getattr(self, name)}")
        if self.num_local_tokens < 0 or self.text_dim < 0 or self.latent_stats_channels < 0:
            raise ValueError(
                "AdapterConfig: num_local_tokens, text_dim and latent_stats_channels must be >= 0"
            )
        if not self.layers:
            raise ValueError("AdapterConfig.layers: expected at least one cross-attention layer")

    @property
    def num_tokens(self) -> int:
        """Context tokens per style."""
        return self.num_global_tokens + self.num_local_tokens

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        data = dict(data)
        data["layers"] = tuple(LayerShape(**layer) for layer in data.get("layers", ()))
        return cls(**data)


def cross_attention_layers(unet: Any) -> tuple[LayerShape, ...]:
    """The UNet's cross-attention layers (``...attn2.processor`` names) with their widths."""
    modules = dict(unet.named_modules())
    layers = []
    for name in sorted(unet.attn_processors):
        if not name.endswith(".attn2.processor"):
            continue
        attn = modules[name.removesuffix(".processor")]
        layers.append(LayerShape(name, int(attn.to_k.out_features), int(attn.to_k.in_features)))
    return tuple(layers)


def text_width(text_encoder: Any) -> int:
    """Width of what :func:`stylekit.extractors.clip_text_embeddings` returns for this text encoder."""
    projection = getattr(text_encoder, "text_projection", None)
    return int(projection.out_features) if projection is not None else int(text_encoder.config.hidden_size)


def time_embedding_width(unet: Any) -> int:
    """Width of ``unet.time_embedding``'s output."""
    return int(unet.time_embedding.linear_2.out_features)


def _key(name: str) -> str:
    return name.removesuffix(".processor").replace(".", "__")


class StyleTokenAdapter(nn.Module):
    """Projections (style code -> context tokens), per-layer ``to_k_ip`` / ``to_v_ip`` and the text head."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.global_proj = ImageProjection(c.embed_dim, c.cross_attention_dim, c.num_global_tokens)
        self.local_proj = (
            ImageProjection(c.embed_dim, c.cross_attention_dim, c.num_local_tokens)
            if c.num_local_tokens
            else None
        )
        self.local_from_global = nn.Linear(c.embed_dim, c.embed_dim)
        self.text_head = (
            nn.Sequential(
                nn.LayerNorm(c.text_dim),
                nn.Linear(c.text_dim, c.text_hidden),
                nn.GELU(),
                nn.Linear(c.text_hidden, 2 * c.embed_dim),
            )
            if c.text_dim
            else None
        )
        self.time_proj = nn.Linear(2 * c.embed_dim, c.time_embed_dim) if c.time_embed_dim else None
        if self.time_proj is not None:
            nn.init.zeros_(self.time_proj.weight)
            nn.init.zeros_(self.time_proj.bias)
        self.latent_stats_head = (
            LatentStatsHead(c.embed_dim, c.latent_stats_channels) if c.latent_stats_channels else None
        )
        self.to_k_ip = nn.ModuleDict()
        self.to_v_ip = nn.ModuleDict()
        for layer in c.layers:
            self.to_k_ip[_key(layer.name)] = nn.Linear(c.cross_attention_dim, layer.inner_dim, bias=False)
            self.to_v_ip[_key(layer.name)] = nn.Linear(c.cross_attention_dim, layer.inner_dim, bias=False)
            nn.init.zeros_(self.to_v_ip[_key(layer.name)].weight)

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def for_unet(
        cls,
        unet: Any,
        embed_dim: int,
        text_encoder: Any | None = None,
        extractor_hash: str = "",
        **options: Any,
    ) -> StyleTokenAdapter:
        """A fresh adapter for ``unet`` (``to_v_ip`` zero, ``to_k_ip`` copied from each layer's ``to_k``).

        Args:
            unet: a diffusers ``UNet2DConditionModel``.
            embed_dim: the style extractor's embedding size.
            text_encoder: the pipeline's text encoder (its ``config.hidden_size`` sizes the text head);
                None = no text head.
            options: other ``AdapterConfig`` fields (``num_global_tokens``, ...).
        """
        layers = cross_attention_layers(unet)
        if not layers:
            raise AdapterCompatibilityError("the UNet has no cross-attention layers (attn2)")
        text_dim = text_width(text_encoder) if text_encoder is not None else 0
        if options.pop("time_embedding", False):
            options["time_embed_dim"] = time_embedding_width(unet)
        config = AdapterConfig(
            embed_dim=embed_dim,
            cross_attention_dim=layers[0].cross_attention_dim,
            text_dim=text_dim,
            layers=layers,
            extractor_hash=extractor_hash,
            **options,
        )
        adapter = cls(config)
        modules = dict(unet.named_modules())
        with torch.no_grad():
            for layer in layers:
                to_k = modules[layer.name.removesuffix(".processor")].to_k
                adapter.to_k_ip[_key(layer.name)].weight.copy_(to_k.weight.float())
        return adapter

    def layer_projections(self, name: str) -> tuple[nn.Linear, nn.Linear]:
        """``(to_k_ip, to_v_ip)`` of the processor ``name``."""
        return self.to_k_ip[_key(name)], self.to_v_ip[_key(name)]

    # ------------------------------------------------------------------------------------------ codes
    def context(self, global_code: torch.Tensor, local_code: torch.Tensor) -> torch.Tensor:
        """Style codes ``(B, D)`` + ``(B, D)`` -> context tokens ``(B, num_tokens, C)``."""
        tokens = [self.global_proj(global_code)]
        if self.local_proj is not None:
            tokens.append(self.local_proj(local_code))
        return torch.cat(tokens, dim=1)

    def time_delta(self, global_code: torch.Tensor, local_code: torch.Tensor) -> torch.Tensor | None:
        """Style codes -> ``(B, time_embed_dim)`` added to the timestep embedding (None without that path)."""
        if self.time_proj is None:
            return None
        return self.time_proj(torch.cat([global_code, local_code], dim=-1))

    def set_latent_stats_head(self, head: LatentStatsHead) -> None:
        """Add (or replace) the latent-statistics head; the config records its channels."""
        if head.net[0].in_features != 2 * self.config.embed_dim:
            raise AdapterCompatibilityError(
                f"latent-statistics head reads codes of shape (B, {head.net[0].in_features}) but the adapter's "
                f"style codes are (B, {2 * self.config.embed_dim})"
            )
        self.config = replace(self.config, latent_stats_channels=head.channels)
        param = next(self.parameters())
        self.latent_stats_head = head.to(device=param.device, dtype=param.dtype)

    def latent_stats(self, global_code: torch.Tensor, local_code: torch.Tensor) -> torch.Tensor:
        """Style codes ``(B, D)`` + ``(B, D)`` -> predicted ``(B, 2C)`` latent means then stds."""
        if self.latent_stats_head is None:
            raise AdapterCompatibilityError(
                "this adapter has no latent-statistics head (latent_stats_channels=0): latent-statistics "
                "guidance needs an image style, or fit the head with `python -m stylekit.tokens.latent_stats`"
            )
        return self.latent_stats_head(torch.cat([global_code, local_code], dim=-1))

    def text_codes(self, pooled_text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled text-encoder outputs ``(B, text_dim)`` -> ``(g (B, D) unit length, l (B, D))``."""
        if self.text_head is None:
            raise AdapterCompatibilityError(
                "this adapter has no text head (text_dim=0); give the style as an image or embedding"
            )
        if pooled_text.shape[-1] != self.config.text_dim:
            raise AdapterCompatibilityError(
                f"the text encoder's pooled output has shape {tuple(pooled_text.shape)} but the adapter's "
                f"text head expects (B, {self.config.text_dim})"
            )
        out = self.text_head(pooled_text.to(self.text_head[1].weight.dtype))
        g, local = out.split(self.config.embed_dim, dim=-1)
        return nn.functional.normalize(g, dim=-1), local

    # ------------------------------------------------------------------------------------------ checks
    def check_unet(self, unet: Any) -> None:
        """Raise ``AdapterCompatibilityError`` naming both shapes if the adapter does not fit ``unet``."""
        if self.time_proj is not None and time_embedding_width(unet) != self.config.time_embed_dim:
            raise AdapterCompatibilityError(
                f"adapter time_proj has shape {tuple(self.time_proj.weight.shape)} but the UNet's timestep "
                f"embedding needs ({time_embedding_width(unet)}, {2 * self.config.embed_dim})"
            )
        have = {layer.name: layer for layer in cross_attention_layers(unet)}
        for layer in self.config.layers:
            found = have.get(layer.name)
            expected = (layer.inner_dim, layer.cross_attention_dim)
            if found is None:
                raise AdapterCompatibilityError(
                    f"adapter layer {layer.name!r} (to_v_ip of shape {expected}) is not a cross-attention "
                    f"layer of this UNet; it has {len(have)}: {sorted(have)[:3]}..."
                )
            got = (found.inner_dim, found.cross_attention_dim)
            if got != expected:
                raise AdapterCompatibilityError(
                    f"adapter layer {layer.name!r} has to_v_ip of shape {expected} but the UNet's "
                    f"cross-attention there needs {got} (an adapter for another architecture)"
                )

    def check_embedding(self, shape: tuple[int, ...], what: str = "StyleCondition.embedding") -> None:
        """Raise if an embedding of ``shape`` is not ``(D,)`` or ``(1 + T, D)`` for this adapter's ``D``."""
        d = self.config.embed_dim
        if len(shape) not in (1, 2) or shape[-1] != d:
            raise AdapterCompatibilityError(
                f"{what} has shape {shape} but the adapter expects ({d},) or (1 + tokens, {d}) "
                f"(the style extractor's embedding size is {d})"
            )

    # ------------------------------------------------------------------------------------------ IO
    def save_pretrained(self, directory: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
        """Write ``config.json`` and ``adapter.safetensors`` (fp32) into ``directory`` atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in self.state_dict().items()}
        for name, write in (
            (
                WEIGHTS_NAME,
                lambda p: save_file(tensors, str(p), metadata={"format": "pt", **(metadata or {})}),
            ),
            (CONFIG_NAME, lambda p: Path(p).write_text(self.config.to_json() + "\n")),
        ):
            with atomic_path(directory / name) as temp:
                write(str(temp))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> StyleTokenAdapter:
        """Load an adapter written by :meth:`save_pretrained` (safetensors only; shapes checked)."""
        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"{directory} holds no style-token adapter ({CONFIG_NAME} + {WEIGHTS_NAME})"
            )
        config = AdapterConfig.from_dict(json.loads((directory / CONFIG_NAME).read_text()))
        adapter = cls(config)
        state = load_file(str(directory / WEIGHTS_NAME))
        own = adapter.state_dict()
        missing = sorted(set(own) - set(state))
        if missing:
            raise AdapterCompatibilityError(f"{directory / WEIGHTS_NAME} lacks weights {missing[:3]}")
        for name, tensor in state.items():
            if name in own and tuple(own[name].shape) != tuple(tensor.shape):
                raise AdapterCompatibilityError(
                    f"weight {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                    f"{tuple(own[name].shape)} in the adapter its config describes"
                )
        adapter.load_state_dict(state, strict=True)
        return adapter.eval()
