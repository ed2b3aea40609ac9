"""Latent-statistics guidance: pull the early prediction's per-channel latent statistics toward the style's.

Training-free and without extra UNet calls. On ``mini`` the palette is laid down in the first steps, where
the adapter learnt nothing (docs/style-tokens.md), while StyleID's AdaIN of the start latent carries most
of its style. This does the AdaIN on the *predicted clean latent* of each early step instead.

Math (VP form; the UNet input ``x = √ᾱ x₀ + √(1-ᾱ) ε`` for DDIM/DDPM/PNDM and also for the scaled input of
Euler-type schedulers, ᾱ = ``scheduler.alphas_cumprod[t]``):

1. The prediction the sampler will use (after classifier-free and three-pass style guidance) gives
   ``x̂₀ = (x - √(1-ᾱ) ε̂) / √ᾱ`` (ε-prediction) or ``x̂₀ = √ᾱ x - √(1-ᾱ) v̂`` (v-prediction).
2. Per row and latent channel c (statistics over the spatial dims, unbiased std as in
   :func:`stylekit.inversion.adain_latent`): AdaIN with strength s toward the target ``(μ*, σ*)``::

       x̂₀' = x̂₀ + s (σ*/σ (x̂₀ - μ) + μ* - x̂₀),        Δ = x̂₀' - x̂₀

3. Keep ``x`` fixed and re-derive the prediction that would have produced ``x̂₀'``:
   ``ε' = ε̂ - √ᾱ / √(1-ᾱ) Δ`` (or ``v' = v̂ - Δ / √(1-ᾱ)``). A DDIM step (η = 0) then gives
   ``x_prev = √ᾱ_prev x̂₀' + √(1-ᾱ_prev) ε'``: the sampler steps exactly as if the model had predicted
   the restyled clean latent from the same noisy latent (no drift between x̂₀ and ε).

Under CFG the pipeline combines its chunks as ``u + g (t - u)`` (weights summing to 1), so subtracting the
same ``√ᾱ/√(1-ᾱ) Δ`` (Δ computed on the *combined* x̂₀) from every chunk makes the combined prediction exactly
the one of step 3 (``guidance_rescale`` > 0 is not modelled). The hook acts on the UNet output, i.e. on
the latents that the uncond, text and text+style passes all share.

Targets: for an image reference, the per-channel mean/std of its VAE latent (``encode_latents``: cheap,
exact); for a style given only as text or an embedding, the adapter's optional ``latent_stats_head``
predicts them from the style code ``(g, l)`` (train it with ``python -m stylekit.tokens.latent_stats``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

STD_EPS = 1e-5


def latent_channel_stats(latents: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` latents -> ``(B, 2C)``: per-channel means then (unbiased) stds over the spatial dims."""
    dims = tuple(range(2, latents.ndim))
    x = latents.float()
    return torch.cat([x.mean(dim=dims), x.std(dim=dims)], dim=1)


@torch.no_grad()
def image_latent_stats(vae: Any, images: Any, size: int) -> torch.Tensor:
    """Images (anything ``stylekit.images.load_image`` takes, or ``(N, 3, H, W)`` in [-1, 1]) -> ``(N, 2C)``
    latent statistics of their VAE encodings (``size`` x ``size`` when given as images)."""
    from stylekit.attention.conditioner import encode_latents
    from stylekit.images import fit_to_size, load_image, to_tensor

    if torch.is_tensor(images):
        pixels = images.float()
    else:
        pixels = torch.stack([to_tensor(fit_to_size(load_image(im, "style"), size, size)) for im in images])
    param = next(vae.parameters())
    return latent_channel_stats(encode_latents(vae, pixels.to(device=param.device, dtype=param.dtype))).cpu()


def adain_delta(x0: torch.Tensor, target: torch.Tensor, strength: float) -> torch.Tensor:
    """``Δ = x̂₀' - x̂₀`` of the strength-``s`` per-channel AdaIN of ``x0`` (``(B, C, ...)``) toward ``target``
    (``(B, 2C)`` or ``(1, 2C)``: means then stds)."""
    channels = x0.shape[1]
    shape = (target.shape[0], channels) + (1,) * (x0.ndim - 2)
    mean_t = target[:, :channels].reshape(shape).to(x0)
    std_t = target[:, channels:].reshape(shape).to(x0)
    dims = tuple(range(2, x0.ndim))
    mean, std = x0.mean(dim=dims, keepdim=True), x0.std(dim=dims, keepdim=True)
    restyled = (x0 - mean) / (std + STD_EPS) * (std_t + STD_EPS) + mean_t
    return strength * (restyled - x0)


def guide_prediction(
    sample: torch.Tensor,
    prediction: torch.Tensor,
    alpha_bar: float,
    target: torch.Tensor,
    strength: float,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One prediction ``(B, C, ...)`` for noisy latents ``sample`` -> ``(Δ, change of the prediction)``:
    add the change to the prediction (and to every CFG chunk combined into it) to AdaIN its x̂₀."""
    a, b = alpha_bar**0.5, (1.0 - alpha_bar) ** 0.5
    x, p = sample.float(), prediction.float()
    if prediction_type == "epsilon":
        x0 = (x - b * p) / a
        delta = adain_delta(x0, target, strength)
        return delta, -(a / b) * delta
    if prediction_type == "v_prediction":
        x0 = a * x - b * p
        delta = adain_delta(x0, target, strength)
        return delta, -delta / b
    raise ValueError(
        f"latent-statistics guidance supports epsilon and v_prediction schedulers, not {prediction_type!r}"
    )


class LatentStatsHead(nn.Module):
    """Style code ``(g, l)`` (``(B, 2D)``) -> ``(B, 2C)`` latent statistics (means, stds > 0).

    Predicts standardised means and log-stds; ``mean`` / ``scale`` (buffers) undo the standardisation.
    """

    def __init__(self, embed_dim: int, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.channels = channels
        self.net = nn.Sequential(nn.Linear(2 * embed_dim, hidden), nn.GELU(), nn.Linear(hidden, 2 * channels))
        self.register_buffer("mean", torch.zeros(2 * channels))
        self.register_buffer("scale", torch.ones(2 * channels))

    def raw(self, code: torch.Tensor) -> torch.Tensor:
        """Unstandardised ``(means, log-stds)``."""
        return self.net(code) * self.scale + self.mean

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        out = self.raw(code)
        return torch.cat([out[:, : self.channels], out[:, self.channels :].exp()], dim=1)


def _targets(stats: torch.Tensor, channels: int) -> torch.Tensor:
    """``(means, stds)`` -> ``(means, log-stds)``."""
    return torch.cat([stats[:, :channels], stats[:, channels:].clamp_min(1e-4).log()], dim=1)


@torch.no_grad()
def world_codes_and_stats(
    pipe: Any, extractor: Any, n: int, part: str, seed: int, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` world images of the ``style`` split's ``part`` -> (style codes ``(n, 2D)``, latent stats ``(n, 2C)``)."""
    from stylekit.data import sample_world

    rng = np.random.default_rng([seed, 91])
    codes, stats = [], []
    for start in range(0, n, 128):
        world = sample_world(rng, min(128, n - start), size, "style", part)
        pixels = torch.from_numpy(world.float_images()).permute(0, 3, 1, 2) * 2 - 1
        g, tokens = extractor.embed(world.float_images(), return_tokens=True, progress=False)
        codes.append(torch.cat([g, tokens.mean(dim=1)], dim=1).float())
        stats.append(image_latent_stats(pipe.vae, pixels, size))
    return torch.cat(codes), torch.cat(stats)


def fit_head(
    codes: torch.Tensor, stats: torch.Tensor, steps: int = 1500, lr: float = 3e-3, seed: int = 0
) -> LatentStatsHead:
    """Fit a :class:`LatentStatsHead` (MSE on standardised means / log-stds, AdamW, full batch)."""
    torch.manual_seed(seed)
    channels = stats.shape[1] // 2
    head = LatentStatsHead(codes.shape[1] // 2, channels)
    target = _targets(stats, channels)
    head.mean.copy_(target.mean(0))
    head.scale.copy_(target.std(0).clamp_min(1e-4))
    standard = (target - head.mean) / head.scale
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    for _ in range(steps):
        loss = nn.functional.mse_loss(head.net(codes), standard)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
    return head.eval()


def r2(head: LatentStatsHead, codes: torch.Tensor, stats: torch.Tensor, part: slice = slice(None)) -> float:
    """Mean R² of the head's (means, log-stds) (``part`` of them) on data (1 = perfect, 0 = the mean)."""
    with torch.no_grad():
        target = _targets(stats, head.channels)[:, part]
        error = (head.raw(codes)[:, part] - target).pow(2).mean(0)
        return float((1 - error / target.var(0).clamp_min(1e-8)).mean())


def main(argv: list[str] | None = None) -> int:
    """``python -m stylekit.tokens.latent_stats --adapter DIR``: fit the adapter's latent-statistics head on
    world images (train part of the ``style`` split) and write it back into ``DIR`` (``--out`` elsewhere);
    the adapter's other tensors are unchanged. Prints one JSON line (held-out R² on the test part)."""
    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--adapter", default="", help="adapter folder (default: the bundled one)")
    parser.add_argument("--out", default="", help="where to write the adapter (default: --adapter)")
    parser.add_argument("--n", type=int, default=2048, help="training images")
    parser.add_argument("--n-test", type=int, default=512)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from stylekit.extractors import load_default
    from stylekit.models import load_pipeline
    from stylekit.tokens import DEFAULT_ADAPTER_PATH, StyleTokenAdapter

    start = time.perf_counter()
    source = args.adapter or str(DEFAULT_ADAPTER_PATH)
    adapter = StyleTokenAdapter.from_pretrained(source)
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    extractor = load_default()
    codes, stats = world_codes_and_stats(pipe, extractor, args.n, "train", args.seed, size)
    test_codes, test_stats = world_codes_and_stats(pipe, extractor, args.n_test, "test", args.seed + 1, size)
    head = fit_head(codes, stats, args.steps, seed=args.seed)
    adapter.set_latent_stats_head(head)
    with safe_open(str(Path(source) / "adapter.safetensors"), "pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata["latent_stats_head"] = f"{args.n} world images, {args.steps} steps, seed {args.seed}"
    out = adapter.save_pretrained(args.out or source, metadata=metadata)
    report = {
        "latent_stats_head": str(out),
        "train_images": args.n,
        "r2_train": round(r2(head, codes, stats), 4),
        "r2_test": round(r2(head, test_codes, test_stats), 4),
        "r2_test_means": round(r2(head, test_codes, test_stats, slice(0, head.channels)), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
