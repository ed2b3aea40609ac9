"""Style tokens on ``mini``: text-to-image with a held-out style reference; prints one JSON line.

Usage: ``python benchmarks/style_tokens.py [--model mini] [--adapter DIR] [--n 48] [--steps 20]
[--guidance 4.0] [--style-guidance 4.0] [--scale 1.0|PRESET|JSON] [--probe-steps 600] [--seed 0]
[--latent-stats-strength 0] [--latent-stats-steps 0.3]``

``--latent-stats-strength`` > 0 adds latent-statistics guidance (``StyleTokens(latent_stats_strength=...,
latent_stats_steps=...)``: AdaIN of the early steps' predicted clean latent toward the reference's VAE-latent
channel statistics) to the ``with_adapter`` generations; ``without_adapter`` stays the plain model.
``--reference-as embedding`` gives each reference as its extractor output instead of the image (the same
style code; the latent statistics then come from the adapter's latent-statistics head).

Each case: a held-out caption (test part of the ``content_style`` split) describing content C in style
S_c, and a style reference rendered in a held-out style S_ref (test part of the ``style`` split: never seen
by the mini, the extractor or the adapter) with other content. Generated with the same seed without and
with the adapter (``StyleTokens`` with a separate style guidance scale).

- ``style_score``: ``stylekit.metrics.style_score`` of each generation with content = the render of the
  caption's scene (C in S_c, what the prompt alone asks for) and style = the reference: 0 = the prompt's
  own style, 1 = the reference's (palette and random-CNN Gram statistics).
- ``extractor_similarity``: cosine of the bundled extractor's embeddings, generation vs reference.
- Two prompt modes: ``full`` = the held-out caption itself (its style words name S_c, so the reference
  has to override them) and ``content`` = the caption's object phrases only (no paper/texture/stroke words).
- ``content_probe``: accuracy (shape of the first object, object count) of ``stylekit.metrics``' content
  probe on the generations, against the caption's content; ``real`` = on the renders of the captions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch


def _uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def generate(pipe: Any, captions: list[str], tokens: Any, args: argparse.Namespace, size: int) -> np.ndarray:
    """uint8 generations; image ``i`` uses seed ``args.seed + i`` (batches of 16)."""
    from stylekit import StyleCondition
    from stylekit.tokens import StyleTokens, text_to_image

    out = []
    for start in range(0, len(captions), 16):
        chunk = captions[start : start + 16]
        generators = [torch.Generator().manual_seed(args.seed + start + i) for i in range(len(chunk))]
        chunk_tokens = None
        if tokens is not None:  # one reference per caption
            references = tokens["references"][start : start + 16]
            if args.reference_as == "embedding":  # the extractor's (1 + T, D) output: the head's statistics
                g, local = tokens["extractor"].embed(references, return_tokens=True, progress=False)
                styles = [
                    StyleCondition(embedding=torch.cat([g[i : i + 1], local[i]])) for i in range(len(g))
                ]
            else:
                styles = [StyleCondition(image=image) for image in references]
            chunk_tokens = StyleTokens(
                tokens["adapter"],
                styles,
                scale=args.scale,
                style_guidance_scale=args.style_guidance,
                extractor=tokens["extractor"],
                per_row=True,
                latent_stats_strength=args.latent_stats_strength,
                latent_stats_steps=args.latent_stats_steps,
            )
        images = text_to_image(
            pipe,
            chunk,
            chunk_tokens,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=size,
            width=size,
            generator=generators,
            output_type="np",
        ).images
        out.append(_uint8(images))
    return np.concatenate(out)


def _scale(text: str) -> Any:
    """``--scale``: a number, a preset name or a JSON block dict (``stylekit.tokens.scales``; the dict's
    blocks are checked against the model when the adapter is attached)."""
    from stylekit.tokens.scales import SCALE_PRESETS

    try:
        return float(text)
    except ValueError:
        pass
    if text.lstrip().startswith("{"):
        return json.loads(text)
    if text not in SCALE_PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; presets: {sorted(SCALE_PRESETS)}")
    return text


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--adapter", default="", help="adapter folder (default: the bundled one)")
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--style-guidance", type=float, default=4.0)
    parser.add_argument(
        "--scale",
        type=_scale,
        default=1.0,
        help='token scale: a number, a preset (style-only, style-and-layout) or JSON, e.g. \'{"up": {"block_2": 1}}\'',
    )
    parser.add_argument("--probe-steps", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latent-stats-strength", type=float, default=0.0)
    parser.add_argument("--latent-stats-steps", type=float, default=0.3)
    parser.add_argument(
        "--reference-as",
        choices=("image", "embedding"),
        default="image",
        help="embedding: give each reference as its extractor embedding (latent statistics from the adapter's head)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", default="full,content", help="full captions and/or content-only prompts")
    parser.add_argument(
        "--out-grid", default="", help="rows: caption render, reference, then per prompt mode without/with"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from stylekit.data import render_samples, sample_content, sample_scenes, sample_styles
    from stylekit.extractors import load_default
    from stylekit.metrics import content_targets, style_score_components, train_probe
    from stylekit.metrics_style import style_similarity
    from stylekit.models import load_pipeline
    from stylekit.tokens import StyleTokenAdapter, load_default_adapter
    from stylekit.tokens.prompts import content_prompt

    start = time.perf_counter()
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    adapter = StyleTokenAdapter.from_pretrained(args.adapter) if args.adapter else load_default_adapter()
    extractor = load_default()

    rng = np.random.default_rng([args.seed, 77])
    contents, prompt_styles = sample_scenes(rng, args.n, "content_style", "test")
    scenes = render_samples(contents, prompt_styles, size)
    ref_styles = sample_styles(rng, args.n, "style", "test")
    ref_contents = []
    for content in contents:
        other = sample_content(rng)
        while other.content_class == content.content_class:
            other = sample_content(rng)
        ref_contents.append(other)
    references = render_samples(ref_contents, ref_styles, size).images

    probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    labels = content_targets(contents)
    real = probe.accuracy(scenes.images, labels)
    chance = float(np.mean([1 / n for n in probe.heads.values()]))
    report: dict[str, Any] = {"benchmark": "style_tokens", "model": args.model, "n": args.n}
    seconds: dict[str, float] = {}
    prompt_sets = {
        "full": scenes.captions,
        "content": [content_prompt(c, s) for c, s in zip(contents, prompt_styles, strict=True)],
    }
    grid_rows = [scenes.images, references]
    for mode in [m.strip() for m in args.prompts.split(",") if m.strip()]:
        captions = prompt_sets[mode]
        entry: dict[str, Any] = {}
        for name, tokens in (
            ("without_adapter", None),
            ("with_adapter", {"adapter": adapter, "extractor": extractor, "references": references}),
        ):
            t0 = time.perf_counter()
            images = generate(pipe, captions, tokens, args, size)
            seconds[f"{mode}_{name}"] = round(time.perf_counter() - t0, 1)
            grid_rows.append(images)
            scores = style_score_components(list(images), list(scenes.images), list(references))
            entry[name] = {
                "style_score": round(float(scores["style"].mean()), 4),
                "palette": round(float(scores["palette"].mean()), 4),
                "gram": round(float(scores["gram"].mean()), 4),
                "extractor_similarity": round(
                    float(style_similarity(images, references, extractor).mean()), 4
                ),
                "content_probe": {k: round(v, 4) for k, v in probe.accuracy(images, labels).items()},
            }
        with_adapter = entry["with_adapter"]
        entry["targets"] = {
            "style_score_ge_0.5": with_adapter["style_score"] >= 0.5,
            "content_recognised": with_adapter["content_probe"]["mean"] >= 0.7 * real["mean"],
        }
        report[f"prompt_{mode}"] = entry
    report["content_probe_real"] = {k: round(v, 4) for k, v in real.items()}
    report["content_probe_chance"] = round(chance, 4)
    if args.out_grid:
        import PIL.Image

        grid = np.concatenate([np.concatenate(list(r[:16]), axis=1) for r in grid_rows], axis=0)
        PIL.Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), 0).save(args.out_grid)
    report["settings"] = {
        "steps": args.steps,
        "guidance": args.guidance,
        "style_guidance": args.style_guidance,
        "scale": args.scale,
        "probe_steps": args.probe_steps,
        "adapter": args.adapter or "bundled",
        "latent_stats_strength": args.latent_stats_strength,
        "latent_stats_steps": args.latent_stats_steps,
        "reference_as": args.reference_as,
    }
    report["seconds"] = {**seconds, "total": round(time.perf_counter() - start, 1)}
    print(json.dumps(report))
    sys.stdout.flush()
    return report


if __name__ == "__main__":
    main()
