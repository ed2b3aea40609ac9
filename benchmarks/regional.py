"""Regional style quality and SAM prompt cost on held-out world images; prints one JSON line.

Usage: ``python benchmarks/regional.py [--model auto] [--pairs 8] [--steps 25] [--feather 2] [--margin 2]
[--context 0] [--prompts 16] [--reencode 2] [--sam tiny|vit_b|checkpoint] [--only all|quality|sam] [--seed 0]``

Pairs are held-out (content, style) world pairs (``transfer_quality.sample_pairs``). Two regions per pair
from the content's exact object masks: ``objects`` (their union: style the objects, keep the scene; the
unprefixed keys) and ``scene`` (its complement: style the scene, keep the objects; keys prefixed
``scene_``). Per pair: whole-image StyleID, regional StyleID for each region (``StyleCondition(mask=
MaskSpec(region, feather)), region_context=--context``), and the content's VAE reconstruction; no inversion cache (fair times).

- ``background_psnr_db``: PSNR (pixels in [0, 1]) of the regional output against the reconstruction, over the
  pixels farther than ``--margin`` px from the region (capped at 100 dB = identical; ``background_max_abs``).
- ``inside_style_ratio``: ``style_score`` (vs the content and the style image) of the regional output /
  that of the whole-image output pasted into the region over the same reconstruction (the two differ only
  inside the region): how much of the whole-image transfer's style the region keeps. Small regions move
  the whole-image score little, so for ``objects`` the ratio is noisy; ``inside_change_ratio`` (mean
  |output - reconstruction| inside the region, regional / whole-image) is a metric-free cross-check.
- ``inside_region_style_ratio``: the region alone scored (``style_score_components(..., masks=)``: the
  palette of its pixels, the Gram over its feature positions), regional / whole-image output.
- ``seam_gradient_ratio``: mean squared image gradient in a band of +-2 px around the region's border,
  regional output / content reconstruction; ``seam_vs_hard_paste`` the same against the whole-image output
  pasted with the hard mask (< 1: a softer seam than cut-and-paste).
- SAM cost on one world image (``--sam``: the tiny random SAM, a random-weight ``vit_b`` of real size, or a
  checkpoint from ``$STYLEKIT_SAM_CHECKPOINT``): ``prompts`` point/box prompts through one ``SamMasker``
  give ``encoder_passes`` (exact count); ``per_prompt_time_ratio`` = time per prompt with the cached
  embedding / time per prompt when every prompt re-encodes the image (measured on ``--reencode`` prompts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_quality import default_model, sample_pairs  # noqa: E402

from stylekit import StyleCondition  # noqa: E402
from stylekit.attention.conditioner import encode_latents  # noqa: E402
from stylekit.images import to_tensor  # noqa: E402
from stylekit.metrics import style_score_components  # noqa: E402
from stylekit.models import load_pipeline  # noqa: E402
from stylekit.regions import MaskSpec  # noqa: E402
from stylekit.segment import Prompt, SamMasker, build_tiny_sam, interior_point, mask_box  # noqa: E402

PSNR_CAP = 100.0


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    x = torch.from_numpy(mask).float()[None, None]
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)[0, 0].numpy() > 0.5


def _erode(mask: np.ndarray, radius: int) -> np.ndarray:
    return ~_dilate(~mask, radius)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * np.log10(1.0 / mse))


def gradient_energy(image: np.ndarray, band: np.ndarray) -> float:
    gy = np.zeros_like(image)
    gx = np.zeros_like(image)
    gy[1:] = image[1:] - image[:-1]
    gx[:, 1:] = image[:, 1:] - image[:, :-1]
    return float(((gx**2 + gy**2).sum(-1))[band].mean())


def reconstruction(pipe: Any, image: np.ndarray) -> np.ndarray:
    from PIL import Image

    with torch.no_grad():
        latents = encode_latents(pipe.vae, to_tensor(Image.fromarray(image))[None].to(pipe.vae.dtype))
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="np")[0]


REGIONS = ("objects", "scene")


def _summary(rows: dict[str, list[float]], prefix: str) -> dict[str, float]:
    def mean(key: str, digits: int = 4) -> float:
        return round(float(np.mean(rows[key])), digits)

    return {
        f"{prefix}background_psnr_db": mean("psnr", 2),
        f"{prefix}background_psnr_db_min": round(float(np.min(rows["psnr"])), 2),
        f"{prefix}background_max_abs": round(float(np.max(rows["max_abs"])), 6),
        f"{prefix}inside_style_ratio": mean("ratio"),
        f"{prefix}inside_region_style_ratio": mean("region_ratio"),
        f"{prefix}inside_change_ratio": mean("change"),
        f"{prefix}seam_gradient_ratio": mean("seam"),
        f"{prefix}seam_vs_hard_paste": mean("seam_paste"),
        f"{prefix}region_area": mean("area"),
    }


def quality(args: argparse.Namespace) -> dict[str, Any]:
    """Both readings of "the world's exact object masks": style the objects (keep the scene) and style the
    scene (keep the objects; keys prefixed ``scene_``)."""
    pipe = load_pipeline(args.model, dtype=torch.float32)  # CPU: compute in fp32 (folders may store fp16)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    pairs = sample_pairs(np.random.default_rng(args.seed), args.pairs, size)
    keys = ("psnr", "max_abs", "ratio", "region_ratio", "change", "seam", "seam_paste", "area")
    rows = {kind: {k: [] for k in keys} for kind in REGIONS}
    times = {"whole": 0.0, "regional": 0.0}
    for content, masks, style in zip(pairs["contents"], pairs["masks"], pairs["styles"], strict=True):
        objects = masks.any(0)
        call = {
            "content_image": content,
            "num_inference_steps": args.steps,
            "output_type": "np",
            "cache": False,
        }
        start = time.perf_counter()
        whole = pipe(style=style, **call).images[0]
        times["whole"] += time.perf_counter() - start
        recon = reconstruction(pipe, content)
        for kind, region in zip(REGIONS, (objects, ~objects), strict=True):
            start = time.perf_counter()
            condition = StyleCondition(image=style, mask=MaskSpec(region, feather=args.feather))
            regional = pipe(style=condition, region_context=args.context, **call).images[0]
            times["regional"] += (time.perf_counter() - start) / len(REGIONS)
            row = rows[kind]
            kept = ~_dilate(region, args.margin)
            row["psnr"].append(psnr(regional[kept], recon[kept]))
            row["max_abs"].append(float(np.abs(regional - recon)[kept].max()))
            pasted = np.where(region[..., None], whole, recon)
            scores = style_score_components([regional, pasted], [content, content], [style, style])["style"]
            row["ratio"].append(float(scores[0] / max(scores[1], 1e-9)))
            inside = style_score_components(
                [regional, whole], [content, content], [style, style], masks=np.stack([region, region])
            )["style"]
            row["region_ratio"].append(float(inside[0] / max(inside[1], 1e-9)))
            change = np.abs(whole - recon)[region].mean()
            row["change"].append(float(np.abs(regional - recon)[region].mean() / max(change, 1e-9)))
            band = _dilate(region, 2) & ~_erode(region, 2)
            row["seam"].append(gradient_energy(regional, band) / max(gradient_energy(recon, band), 1e-12))
            row["seam_paste"].append(
                gradient_energy(regional, band) / max(gradient_energy(pasted, band), 1e-12)
            )
            row["area"].append(float(region.mean()))
    return {
        "model": args.model,
        "size": size,
        "steps": args.steps,
        "pairs": args.pairs,
        "feather_px": args.feather,
        "margin_px": args.margin,
        "region_context": args.context,
        **_summary(rows["objects"], ""),
        **_summary(rows["scene"], "scene_"),
        "regional_time_ratio": round(times["regional"] / max(times["whole"], 1e-9), 3),
    }


def sam_model(kind: str) -> Any:
    if kind == "tiny":
        return build_tiny_sam(image_size=64)
    if kind == "vit_b":
        from segment_anything import sam_model_registry

        return sam_model_registry["vit_b"]().eval()  # random weights: the real architecture's cost
    return None  # a checkpoint from $STYLEKIT_SAM_CHECKPOINT


def sam_cost(args: argparse.Namespace) -> dict[str, Any]:
    pairs = sample_pairs(np.random.default_rng(args.seed + 1), 1, 128)
    image, masks = pairs["contents"][0], pairs["masks"][0]
    prompts = []
    for k in range(args.prompts):
        mask = masks[k % len(masks)] if masks[k % len(masks)].any() else masks.any(0)
        point, box = interior_point(mask), mask_box(mask)
        prompts.append(Prompt(points=(point,)) if k % 2 == 0 else Prompt(box=box))
    masker = SamMasker(sam_model(args.sam))
    masker.predict_many(image, prompts[:1])  # warm-up (also the one encoder pass)
    start = time.perf_counter()
    masker.predict_many(image, prompts)
    cached = (time.perf_counter() - start) / len(prompts)
    passes = masker.encoder_passes
    reencode = []
    for prompt in prompts[: args.reencode]:
        masker.predictor._cached = None  # forget the embedding: every prompt pays the encoder again
        start = time.perf_counter()
        masker.predict_many(image, [prompt])
        reencode.append(time.perf_counter() - start)
    per_reencode = float(np.mean(reencode))
    return {
        "sam": args.sam,
        "prompts": len(prompts),
        "encoder_passes": passes,
        "per_prompt_ms_cached": round(cached * 1000, 3),
        "per_prompt_ms_reencode": round(per_reencode * 1000, 3),
        "per_prompt_time_ratio": round(cached / per_reencode, 5),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="auto")
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--feather", type=int, default=2)
    parser.add_argument("--margin", type=int, default=2)
    parser.add_argument("--context", type=float, default=0.0, help="region_context of the regional calls")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--reencode", type=int, default=2)
    parser.add_argument("--sam", choices=("tiny", "vit_b", "checkpoint"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", choices=("all", "quality", "sam"), default="all")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.model == "auto":
        args.model = default_model()
    start = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "regional"}
    if args.only in ("all", "quality"):
        result.update(quality(args))
    if args.only in ("all", "sam"):
        result.update(sam_cost(args))
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
