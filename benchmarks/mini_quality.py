"""Quality of the mini model: VAE reconstruction and text-to-image faithfulness; prints one JSON line.

Usage: ``python benchmarks/mini_quality.py [--model auto] [--n-vae 256] [--n-gen 200] [--steps 25]
[--guidance 4.0] [--probe-steps 1200] [--size 0] [--seed 0] [--threads 0] [--device cpu] [--out-grid PATH]
[--guidance-sweep 1,7.5]``

1. ``vae_psnr_db``: mean per-image PSNR (uint8, peak 255) of VAE reconstructions (posterior mode) of
   held-out world images (test part of the ``content_style`` split, which the mini's training never
   sees); ``vae_psnr_pooled_db`` is the PSNR of the pooled MSE, ``vae_psnr_p10_db`` the 10th percentile.
2. Text-to-image faithfulness: ``--n-gen`` held-out scenes (test part of ``content_style``) are captioned
   (``stylekit.data.caption``) and generated with the stock ``StableDiffusionPipeline``
   (``load_pipeline(model, kind="text-to-image")``, DDIM, ``--steps``, ``--guidance``, seed per image).
   A content probe (first object's shape, object count) and a style probe (palette, texture, stroke),
   small CNNs trained here on rendered train-part images (``stylekit.metrics.train_probe``), classify
   the generated images, the real renders of the same scenes and their VAE reconstructions.
   ``content_probe_ratio`` / ``style_probe_ratio`` = mean-over-heads accuracy on generated images / on
   real images (target >= 0.7); ``ratio_above_chance`` subtracts chance accuracy from both.
   ``--guidance-sweep`` repeats the generation at other guidance scales (same captions, seeds, probes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from stylekit.data import render_samples, sample_scenes
from stylekit.metrics import content_targets, style_targets, train_probe
from stylekit.models import MINI_PATH, load_pipeline


def default_model() -> str:
    """``mini`` when the bundled model exists, else ``tiny-sd``."""
    return "mini" if (MINI_PATH / "model_index.json").exists() else "tiny-sd"


def psnr_db(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 ``(B, S, S, 3)`` arrays; identical images give 99 dB."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(axis=1)
    return np.where(mse > 0, 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12)), 99.0)


@torch.no_grad()
def reconstruct(vae: Any, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """uint8 ``(B, S, S, 3)`` -> VAE (posterior mode) -> uint8."""
    param = next(vae.parameters())
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = vae.encode(x.to(param.device, param.dtype)).latent_dist.mode()
        y = vae.decode(latents).sample.float().clamp(-1, 1)
        out.append(((y + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)


def generate(
    pipe: Any, captions: list[str], steps: int, guidance: float, size: int, seed: int, batch_size: int = 16
) -> np.ndarray:
    """uint8 images for ``captions`` (image ``i`` uses ``torch.Generator().manual_seed(seed + i)``)."""
    out = []
    for start in range(0, len(captions), batch_size):
        chunk = captions[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(chunk))]
        images = pipe(
            chunk,
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=generators,
            output_type="np",
        ).images
        out.append((np.clip(images, 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out)


def _round(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 4) for k, v in d.items()}


def save_grid(path: str, real: np.ndarray, generated: np.ndarray, columns: int = 8, rows: int = 4) -> None:
    """Pairs of rows (real render above its generation) for the first ``columns * rows`` captions, x3."""
    import PIL.Image

    size = real.shape[1]
    k = min(columns * rows, len(real))
    n_rows = -(-k // columns)
    grid = np.full((n_rows * (2 * size + 6), columns * (size + 2), 3), 255, np.uint8)
    for i in range(k):
        r, c = divmod(i, columns)
        y, x = r * (2 * size + 6), c * (size + 2)
        grid[y : y + size, x : x + size] = real[i]
        grid[y + size + 1 : y + 2 * size + 1, x : x + size] = generated[i]
    image = PIL.Image.fromarray(grid)
    image.resize((image.width * 3, image.height * 3), PIL.Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="auto = mini if bundled, else tiny-sd")
    parser.add_argument("--n-vae", type=int, default=256)
    parser.add_argument("--n-gen", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--probe-steps", type=int, default=1200)
    parser.add_argument("--size", type=int, default=0, help="0 = the model's native resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-grid", default=None)
    parser.add_argument(
        "--guidance-sweep",
        default="",
        help="comma-separated extra guidance scales to measure (e.g. 1,7.5,12)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    model = default_model() if args.model == "auto" else args.model
    dtype = torch.float32 if args.device == "cpu" else None  # fp16 weights do not run on CPU
    pipe = load_pipeline(model, kind="text-to-image", dtype=dtype, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    size = args.size or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    # 1. VAE reconstruction
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 30])
    vae_images = render_samples(*sample_scenes(rng, args.n_vae, "content_style", "test"), size).images
    vae_recon = reconstruct(pipe.vae, vae_images)
    per_image = psnr_db(vae_images, vae_recon)
    pooled_mse = float(((vae_images.astype(np.float64) - vae_recon) ** 2).mean())
    vae_seconds = time.perf_counter() - t0

    # 2. text-to-image faithfulness
    t0 = time.perf_counter()
    rng = np.random.default_rng([args.seed, 31])
    contents, styles = sample_scenes(rng, args.n_gen, "content_style", "test")
    real = render_samples(contents, styles, size)
    generated = generate(pipe, real.captions, args.steps, args.guidance, size, args.seed)
    gen_seconds = time.perf_counter() - t0
    recon = reconstruct(pipe.vae, real.images)

    t0 = time.perf_counter()
    probes: dict[str, Any] = {}
    trained: dict[str, Any] = {}
    all_labels = {"content": content_targets(contents), "style": style_targets(styles)}
    for kind, labels in all_labels.items():
        probe = trained[kind] = train_probe(kind, steps=args.probe_steps, size=size, seed=args.seed)
        acc = {
            name: probe.accuracy(images, labels)
            for name, images in (("real", real.images), ("vae", recon), ("generated", generated))
        }
        probes[kind] = {name: _round(a) for name, a in acc.items()}
        probes[kind]["ratio"] = round(acc["generated"]["mean"] / max(acc["real"]["mean"], 1e-9), 4)
        chance = float(np.mean([1 / n for n in probe.heads.values()]))
        probes[kind]["chance"] = round(chance, 4)
        # the same ratio with chance accuracy subtracted from both (0 = chance, 1 = as good as real)
        probes[kind]["ratio_above_chance"] = round(
            (acc["generated"]["mean"] - chance) / max(acc["real"]["mean"] - chance, 1e-9), 4
        )
    probe_seconds = time.perf_counter() - t0

    # the same captions, seeds and probes at other guidance scales / step counts
    sweep: dict[str, Any] = {}
    t0 = time.perf_counter()
    for text in [g for g in args.guidance_sweep.split(",") if g.strip()]:
        scale = float(text)
        images = generate(pipe, real.captions, args.steps, scale, size, args.seed)
        entry: dict[str, Any] = {}
        for kind, probe in trained.items():
            acc = probe.accuracy(images, all_labels[kind])
            entry[f"{kind}_probe_ratio"] = round(acc["mean"] / max(probes[kind]["real"]["mean"], 1e-9), 4)
            entry[f"{kind}_generated"] = _round(acc)
        sweep[f"{scale:g}"] = entry
    sweep_seconds = time.perf_counter() - t0

    if args.out_grid:
        save_grid(args.out_grid, real.images, generated)

    vae_psnr = float(per_image.mean())
    report = {
        "benchmark": "mini_quality",
        "model": model,
        "size": size,
        "vae_psnr_db": round(vae_psnr, 2),
        "vae_psnr_pooled_db": round(10 * np.log10(255.0**2 / max(pooled_mse, 1e-12)), 2),
        "vae_psnr_p10_db": round(float(np.percentile(per_image, 10)), 2),
        "content_probe_ratio": probes["content"]["ratio"],
        "style_probe_ratio": probes["style"]["ratio"],
        "content_probe": probes["content"],
        "style_probe": probes["style"],
        "targets": {
            "vae_psnr_ge_28": vae_psnr >= 28.0,
            "content_probe_ratio_ge_0.7": probes["content"]["ratio"] >= 0.7,
            "style_probe_ratio_ge_0.7": probes["style"]["ratio"] >= 0.7,
        },
        "guidance_sweep": sweep,
        "n_vae": args.n_vae,
        "n_gen": args.n_gen,
        "steps": args.steps,
        "guidance": args.guidance,
        "probe_steps": args.probe_steps,
        "seconds": {
            "vae": round(vae_seconds, 1),
            "generation": round(gen_seconds, 1),
            "probes": round(probe_seconds, 1),
            "guidance_sweep": round(sweep_seconds, 1),
            "total": round(time.perf_counter() - start, 1),
        },
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }
    print(json.dumps(report))
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
