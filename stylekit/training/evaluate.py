"""Measurements of the mini model: VAE reconstruction PSNR on held-out world images and sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch

from stylekit.data import TEXTURES, caption, render_samples, sample_scenes

from .data import to_pixels


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """float ``(B, 3, S, S)`` in ``[-1, 1]`` -> uint8 ``(B, S, S, 3)`` (clamped, rounded)."""
    images = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB of uint8 ``(B, S, S, 3)`` arrays (peak 255; identical images give 99 dB)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 99.0)


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch_size: int = 32, sample: bool = False) -> np.ndarray:
    """Encode and decode uint8 images ``(B, S, S, 3)`` with ``vae``; returns uint8 ``(B, S, S, 3)``.

    Uses the posterior mean (``sample=False``) or a posterior sample (fixed generator).
    """
    param = next(vae.parameters())
    generator = torch.Generator().manual_seed(0)
    out = []
    for start in range(0, len(images), batch_size):
        pixels = to_pixels(images[start : start + batch_size]).to(param.device, param.dtype)
        dist = vae.encode(pixels).latent_dist
        latents = dist.sample(generator=generator) if sample else dist.mode()
        out.append(to_uint8(vae.decode(latents).sample))
    return np.concatenate(out)


def evaluate_vae(
    vae: Any,
    n: int = 512,
    seed: int = 1234,
    size: int = 64,
    split: str | None = "style",
    part: str = "test",
    batch_size: int = 32,
) -> dict[str, Any]:
    """VAE reconstruction PSNR on ``n`` world images from ``part`` of ``split`` (held-out by default).

    Args:
        vae: an ``AutoencoderKL`` (any device/dtype; evaluated as it is).
        n / seed / size: how many images, the generator seed and their side in pixels.
        split / part: which world images (``split=None``: the whole world).

    Returns:
        ``{"psnr": mean per-image PSNR (dB, uint8 outputs, posterior mean), "psnr_pooled": PSNR of the
        pooled MSE, "psnr_p10": 10th percentile, "psnr_sampled": mean PSNR with posterior samples,
        "by_texture": {texture: mean PSNR}, "n", "split", "part"}``.
    """
    rng = np.random.default_rng(seed)
    contents, styles = sample_scenes(rng, n, split, part)
    images = render_samples(contents, styles, size).images
    recon = reconstruct(vae, images, batch_size)
    per_image = psnr(images, recon)
    mse = ((images.astype(np.float64) - recon.astype(np.float64)) ** 2).mean()
    sampled = psnr(images, reconstruct(vae, images, batch_size, sample=True))
    textures = np.array([s.texture for s in styles])
    by_texture = {
        TEXTURES[t].name: round(float(per_image[textures == t].mean()), 2)
        for t in range(len(TEXTURES))
        if (textures == t).any()
    }
    return {
        "psnr": round(float(per_image.mean()), 2),
        "psnr_pooled": round(float(10 * np.log10(255.0**2 / max(mse, 1e-12))), 2),
        "psnr_p10": round(float(np.percentile(per_image, 10)), 2),
        "psnr_sampled": round(float(sampled.mean()), 2),
        "by_texture": by_texture,
        "n": n,
        "split": split,
        "part": part,
    }


def image_grid(images: Sequence[np.ndarray] | np.ndarray, columns: int, scale: int = 1) -> PIL.Image.Image:
    """Tile uint8 ``(S, S, 3)`` images row-major into one PIL image (1-pixel white gutters), upscaled by
    ``scale`` (nearest)."""
    images = [np.asarray(im) for im in images]
    side = images[0].shape[0]
    rows = (len(images) + columns - 1) // columns
    grid = np.full((rows * (side + 1) - 1, columns * (side + 1) - 1, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[r * (side + 1) : r * (side + 1) + side, c * (side + 1) : c * (side + 1) + side] = image
    out = PIL.Image.fromarray(grid)
    return out.resize((out.width * scale, out.height * scale), PIL.Image.NEAREST) if scale > 1 else out


def reconstruction_grid(vae: Any, n: int = 16, seed: int = 7, split: str | None = "style") -> PIL.Image.Image:
    """Held-out world images (odd columns) next to their VAE reconstructions (even columns), 8 columns."""
    rng = np.random.default_rng(seed)
    contents, styles = sample_scenes(rng, n, split, "test" if split else "train")
    images = render_samples(contents, styles, vae.config.sample_size).images
    recon = reconstruct(vae, images)
    pairs = [im for pair in zip(images, recon, strict=True) for im in pair]
    return image_grid(pairs, 8, scale=2)


def held_out_captions(n: int, seed: int = 11, split: str = "style") -> list[str]:
    """``n`` captions of scenes from the test part of ``split`` (styles never seen in training)."""
    rng = np.random.default_rng(seed)
    contents, styles = sample_scenes(rng, n, split, "test")
    return [caption(c, s) for c, s in zip(contents, styles, strict=True)]


@torch.no_grad()
def sample_grid(
    pipe: Any,
    captions: Sequence[str],
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 4.0,
    columns: int = 4,
) -> PIL.Image.Image:
    """Generate one image per caption (``pipe`` a ``StableDiffusionPipeline``) and tile them."""
    generator = torch.Generator().manual_seed(seed)
    images = pipe(
        list(captions),
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        generator=generator,
        output_type="np",
    ).images
    return image_grid((np.asarray(images) * 255).round().astype(np.uint8), columns, scale=2)
