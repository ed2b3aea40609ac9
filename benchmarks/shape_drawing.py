"""Does a text-to-image model draw each world shape from its caption? One JSON line.

Usage: ``python benchmarks/shape_drawing.py [--model mini] [--n 16] [--steps 25] [--guidance 4.0]
[--detector-n 600] [--detector-val 200] [--seed 0] [--threads 1]``

Per shape of the world (10): a subject detector (``benchmarks/lora_quality.py``'s: a small MLP on a
rotation-, scale- and style-free outline descriptor) is fitted on world renders of that shape as a lone
object against 1-3 objects of the other shapes, and validated on fresh renders, also after a round trip
through the model's VAE (what the decoder lets through). Then ``--n`` images are generated from world
captions of a lone object of that shape (random colours and styles, stock ``StableDiffusionPipeline``,
fixed seeds) and ``drawn`` = the share the detector flags. ``drawn_mean`` over shapes is the headline; the
detector's false-positive rate on real renders of other shapes (``false_positive``) is its floor.

This is what bounds the content measures of ``benchmarks/lora_quality.py`` and the content probe of
``benchmarks/style_tokens.py``: an adapter cannot show a subject the base model does not draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lora_quality import detector_rates, train_subject_detector  # noqa: E402

from stylekit.data import N_SHAPES, sample_content, sample_style  # noqa: E402
from stylekit.data.captions import caption  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mini", help="mini, tiny-sd or a diffusers folder")
    parser.add_argument("--n", type=int, default=16, help="generations per shape")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--detector-n", type=int, default=600, help="world renders each detector fits")
    parser.add_argument("--detector-val", type=int, default=200, help="fresh renders it is validated on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import StableDiffusionPipeline

    from stylekit.models import load_pipeline

    started = time.time()
    pipe = StableDiffusionPipeline.from_pipe(load_pipeline(args.model))  # the stock text-to-image pipeline
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    rng = np.random.default_rng(args.seed)
    shapes: dict[str, dict[str, float]] = {}
    for shape in range(N_SHAPES):
        keys = [sample_style(rng).key, sample_style(rng).key]
        detector = train_subject_detector(shape, keys, args.detector_n, size, args.seed)
        rng_val = np.random.default_rng([args.seed, 73, shape])
        rates = detector_rates(detector, rng_val, shape, keys, args.detector_val, size, pipe.vae)
        captions = [caption(sample_content(rng, shapes=(shape,)), sample_style(rng)) for _ in range(args.n)]
        generated = pipe(
            captions,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            output_type="np",
            generator=torch.Generator().manual_seed(args.seed * 100 + shape),
        ).images
        drawn = detector.flags(np.round(generated * 255).astype(np.uint8))
        shapes[str(shape)] = {
            "drawn": round(float(drawn.mean()), 4),
            "recall": rates["real_subject_recall"],
            "false_positive": rates["real_other_false_positive"],
            "vae_recall": rates["vae_subject_recall"],
        }
    line: dict[str, object] = {
        "benchmark": "shape_drawing",
        "model": str(args.model),
        "n": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "drawn_mean": round(float(np.mean([s["drawn"] for s in shapes.values()])), 4),
        "false_positive_mean": round(float(np.mean([s["false_positive"] for s in shapes.values()])), 4),
        "vae_recall_mean": round(float(np.mean([s["vae_recall"] for s in shapes.values()])), 4),
        "shapes": shapes,
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
