"""The architecture of the bundled ``mini`` model: a small Stable Diffusion (VAE + UNet + CLIP text encoder).

Everything is built from config, the diffusers/transformers way, so the trained folder loads with the stock
``StableDiffusionPipeline.from_pretrained``. Shapes (defaults): 64 x 64 RGB images, a VAE with a
downsampling factor of 4 (three levels) to 16 x 16 x 8 latents, a UNet with Stable Diffusion 1.x's block
layout scaled down (four levels, 16/8/4/2 latent cells; cross-attention blocks in the first three down and
last three up blocks), so decoder self-attention sits in ``up_blocks.1``-``3`` and SD's layer presets
(``styleid``: ``up_blocks.2``-``3``, the 8 x 8 and 16 x 16 levels) apply unchanged, and a 3-layer CLIP text
encoder over the world's caption words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
"""Stable Diffusion's noise schedule (1000 scaled-linear betas), epsilon prediction."""


def _check_positive(name: str, values: tuple[int, ...] | int) -> None:
    items = values if isinstance(values, tuple) else (values,)
    if not items or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
        raise ValueError(f"{name}: expected positive integers, got {values!r}")


@dataclass(frozen=True)
class MiniArchitecture:
    """Sizes of the mini model's components (validated on construction).

    Attributes:
        image_size: training resolution in pixels (square).
        vae_channels: ``block_out_channels`` of the VAE; its length L gives a downsampling factor 2^(L-1).
        vae_layers_per_block: resnets per VAE encoder level (the decoder has one more).
        vae_mid_attention: whether the VAE's middle block has a self-attention.
        latent_channels: channels of the latent.
        unet_channels: ``block_out_channels`` of the UNet (4 levels as in SD 1.x; attention in the three finest).
        unet_layers_per_block: resnets (and attentions) per UNet encoder level (the decoder has one more).
        unet_heads: attention heads per UNet level (diffusers' ``attention_head_dim`` argument).
        unet_text_pooling: add an attention-pooled text embedding to the timestep embedding
            (``addition_embed_type="text"``; it needs only ``encoder_hidden_states``, so stock pipelines work).
        text_hidden: width of the text encoder (= the UNet's ``cross_attention_dim``).
        text_layers: transformer layers of the text encoder.
        text_heads: attention heads of the text encoder.
        max_tokens: the tokenizer's padded length (captions take at most 44 tokens: the tokenizer splits
            some words into pieces).
        norm_groups: GroupNorm groups of the VAE and the UNet.
    """

    image_size: int = 64
    vae_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    vae_mid_attention: bool = False
    latent_channels: int = 8
    unet_channels: tuple[int, int, int, int] = (32, 64, 128, 128)
    unet_layers_per_block: int = 1
    unet_heads: tuple[int, int, int, int] = (1, 2, 4, 4)
    unet_text_pooling: bool = True
    text_hidden: int = 128
    text_layers: int = 3
    text_heads: int = 4
    max_tokens: int = 64
    norm_groups: int = 16

    def __post_init__(self) -> None:
        for name in ("image_size", "vae_layers_per_block", "latent_channels", "unet_layers_per_block"):
            _check_positive(name, getattr(self, name))
        for name in ("text_hidden", "text_layers", "text_heads", "max_tokens", "norm_groups"):
            _check_positive(name, getattr(self, name))
        for name in ("vae_channels", "unet_channels", "unet_heads"):
            value = getattr(self, name)
            if not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
            _check_positive(name, getattr(self, name))
        if len(self.unet_channels) != 4 or len(self.unet_heads) != 4:
            raise ValueError(
                f"unet_channels / unet_heads: expected 4 levels, got {self.unet_channels} / {self.unet_heads}"
            )
        if len(self.vae_channels) < 2:
            raise ValueError(f"vae_channels: expected at least 2 levels, got {self.vae_channels}")
        if self.image_size % (self.vae_factor * 8):
            raise ValueError(
                f"image_size: expected a multiple of {self.vae_factor * 8} (VAE factor x UNet factor), "
                f"got {self.image_size}"
            )
        for name in ("vae_channels", "unet_channels"):
            bad = [c for c in getattr(self, name) if c % self.norm_groups]
            if bad:
                raise ValueError(f"{name}: every entry must be a multiple of norm_groups={self.norm_groups}")
        for channels, heads in zip(self.unet_channels, self.unet_heads, strict=True):
            if channels % heads:
                raise ValueError(f"unet_heads: {heads} heads do not divide {channels} channels")
        if self.text_hidden % self.text_heads:
            raise ValueError(
                f"text_heads: {self.text_heads} heads do not divide text_hidden={self.text_hidden}"
            )
        if self.max_tokens < 48:
            raise ValueError(
                f"max_tokens: expected >= 48 (the longest caption has 44 tokens), got {self.max_tokens}"
            )

    @property
    def vae_factor(self) -> int:
        """Downsampling factor of the VAE (4 for three levels)."""
        return 2 ** (len(self.vae_channels) - 1)

    @property
    def latent_size(self) -> int:
        """Side of the latent in cells (16 for 64-pixel images and factor 4)."""
        return self.image_size // self.vae_factor

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_tokenizer(arch: MiniArchitecture):
    """A ``CLIPTokenizer`` with one token per caption word (``stylekit.tokenizer``), built offline."""
    from stylekit.data import caption_vocabulary
    from stylekit.tokenizer import build_clip_tokenizer

    return build_clip_tokenizer(caption_vocabulary(), model_max_length=arch.max_tokens)


def build_vae(arch: MiniArchitecture, scaling_factor: float = 1.0):
    """A randomly initialised ``AutoencoderKL`` (image ``(B, 3, S, S)`` in [-1, 1] <-> latent
    ``(B, latent_channels, S / factor, S / factor)``)."""
    from diffusers import AutoencoderKL

    levels = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=arch.vae_channels,
        layers_per_block=arch.vae_layers_per_block,
        latent_channels=arch.latent_channels,
        norm_num_groups=arch.norm_groups,
        sample_size=arch.image_size,
        scaling_factor=scaling_factor,
        mid_block_add_attention=arch.vae_mid_attention,
    )


def build_unet(arch: MiniArchitecture):
    """A randomly initialised ``UNet2DConditionModel`` on ``(B, latent_channels, L, L)`` latents.

    SD 1.x's layout: down CrossAttn x 3, plain; up plain, CrossAttn x 3 (``up_blocks.1`` at L/4,
    ``up_blocks.2`` at L/2, ``up_blocks.3`` at L): decoder self-attention at three resolutions.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=arch.latent_size,
        in_channels=arch.latent_channels,
        out_channels=arch.latent_channels,
        layers_per_block=arch.unet_layers_per_block,
        block_out_channels=arch.unet_channels,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=arch.text_hidden,
        attention_head_dim=arch.unet_heads,
        norm_num_groups=arch.norm_groups,
        addition_embed_type="text" if arch.unet_text_pooling else None,
        addition_embed_type_num_heads=arch.text_heads,
    )


def build_text_encoder(arch: MiniArchitecture, tokenizer):
    """A randomly initialised ``CLIPTextModel`` (``last_hidden_state``: ``(B, max_tokens, text_hidden)``)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.text_hidden,
        intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads,
        max_position_embeddings=arch.max_tokens,
        projection_dim=arch.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_noise_scheduler():
    """The training ``DDPMScheduler`` (Stable Diffusion's betas, epsilon prediction)."""
    from diffusers import DDPMScheduler

    config = {k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one",)}
    return DDPMScheduler(**config)


def build_inference_scheduler():
    """The shipped ``DDIMScheduler`` (``clip_sample=False``, ``set_alpha_to_one=False``, ``steps_offset=1``)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULER_CONFIG)


@torch.no_grad()
def fold_latent_normalization(vae: Any, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Make ``vae``'s latents zero-mean, unit-std per channel without changing what it decodes.

    Stock ``StableDiffusionPipeline`` only multiplies latents by one ``scaling_factor``; a from-scratch VAE's
    channels have different offsets and spreads, which slows diffusion training and biases sampling. The
    per-channel affine map ``z' = (z - mean) / std`` is folded exactly into the 1x1 ``quant_conv`` (posterior
    mean and log-variance) and its inverse into ``post_quant_conv``, so encode -> decode is unchanged and
    the VAE keeps ``scaling_factor = 1``.

    Args:
        vae: an ``AutoencoderKL`` with ``quant_conv`` and ``post_quant_conv``; modified in place.
        mean / std: ``(latent_channels,)`` statistics of its posterior means on training images.
    """
    if vae.quant_conv is None or vae.post_quant_conv is None:
        raise ValueError("fold_latent_normalization needs a VAE with quant_conv and post_quant_conv")
    channels = vae.config.latent_channels
    mean, std = mean.double(), std.double()
    quant_w = vae.quant_conv.weight.double()  # (2C, 2C, 1, 1): rows [0, C) = mean, [C, 2C) = logvar
    quant_b = vae.quant_conv.bias.double()
    quant_w[:channels] /= std[:, None, None, None]
    quant_b[:channels] = (quant_b[:channels] - mean) / std
    quant_b[channels:] -= 2 * torch.log(std)
    post_w = vae.post_quant_conv.weight.double()  # (C, C, 1, 1) acting on z = std * z' + mean
    post_b = vae.post_quant_conv.bias.double() + (post_w[:, :, 0, 0] @ mean)
    post_w = post_w * std[None, :, None, None]
    for param, value in [
        (vae.quant_conv.weight, quant_w),
        (vae.quant_conv.bias, quant_b),
        (vae.post_quant_conv.weight, post_w),
        (vae.post_quant_conv.bias, post_b),
    ]:
        param.copy_(value.to(param.dtype))
    vae.register_to_config(scaling_factor=1.0)


def count_parameters(module: Any) -> int:
    """Number of parameters of a torch module."""
    return sum(p.numel() for p in module.parameters())
