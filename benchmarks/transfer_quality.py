"""Style-transfer quality of StyleID and its ablations on held-out world pairs; prints one JSON line.

Usage: ``python benchmarks/transfer_quality.py [--model auto] [--pairs 100] [--steps 50] [--size 0]
[--layers auto] [--rows all] [--layers-sweep] [--temperature 1.5] [--seed 0] [--threads 0] [--device cpu] [--out-grid PATH]``

Pairs: a content image (content ``c`` in style ``s_c``) and a style image (another content class ``c'``
in style ``s``), with ``(c, s)``, ``(c, s_c)`` and ``(c', s)`` all in the test part of the world's
``content_style`` split (held out from the mini model's training). Content images the segmenter itself
cannot read (IoU with their own masks < ``stylekit.metrics.RELIABLE_IOU``) are redrawn; how many is
reported (``rejected_unreadable``).

Rows (each a ``StyleInjectionPipeline`` call per pair, one shared ``InversionCache``):

- ``identity``: the content image unchanged (no model);
- ``adain_only``: AdaIN of the start latent, no attention change;
- ``kv_only``: style K/V injection, no query preservation, no AdaIN;
- ``kv_qp``: injection + query preservation (gamma 0.75), no AdaIN;
- ``styleid_official``: everything on with the official start-latent/timestep quirk (the
  ``styleid-official`` preset, or the benchmark's layers with official timing where the model lacks
  that preset's blocks);
- ``styleid``: everything on, gamma 0.75 (the benchmark's layers);
- ``styleid_g03``: everything on, gamma 0.3.

Reference rows (not ablations):

- ``oracle``: the ideal answer, the content rendered by the world in the target style (same layout,
  the style image's style key and seed): what the metrics give a perfect transfer;
- ``vae_roundtrip``: the content image through the VAE (encode, posterior mode, decode);
- ``ddim_roundtrip``: DDIM inversion of the content and plain sampling back from it (every StyleID
  part off, the content as its own style).

Per row, means over pairs of ``style_score`` (0 = content image, 1 = style image; palette and Gram
distance closed, ``stylekit.metrics.style_score``), ``content_iou`` (segmented output vs the content's
masks), ``edge_ssim`` (Sobel-edge SSIM vs the content image), ``content_score`` = (content_iou +
edge_ssim) / 2, ``hmean`` = harmonic mean of the row's mean style_score and mean content_score and
``hmean_iou`` = harmonic mean of mean style_score and mean content_iou. Edge SSIM compares luminance
edges, so it also drops when the paper/object texture changes as it should (the ``oracle`` row shows
how much); ``hmean_iou`` leaves it out.

Extractor columns (the bundled style extractor, ``stylekit.metrics_style.style_similarity``; issue 4):
``extractor_similarity`` = mean cosine similarity of the output's style embedding to the style image's,
and ``extractor_style_score`` = mean of ``d_c / (d_c + d_s)`` with ``d = 1 - similarity`` to the content /
style image (0 = the content's style, 1 = the style image's, the same normalisation as ``style_score``).

``--layers-sweep`` adds ``layer_sweep``: the ``styleid`` row for every run of adjacent decoder blocks
with self-attention (each alone, adjacent pairs, ..., all of them), keyed ``up1``, ``up2+up3``, ..., and
for every self-attention layer of the UNet (encoder and middle too), keyed ``all``.
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

from stylekit.attention.targeting import LAYER_PRESETS, LayerPreset, LayerSelectionError, resolve_layers
from stylekit.cache import InversionCache
from stylekit.data import render_samples, sample_content, sample_style
from stylekit.data.specs import StyleSpec
from stylekit.data.splits import split_of
from stylekit.metrics import (
    RELIABLE_IOU,
    content_iou,
    edge_ssim,
    harmonic_mean,
    mask_iou,
    segment_objects,
    style_score_components,
)
from stylekit.metrics_style import style_similarity
from stylekit.models import MINI_PATH, load_pipeline

ROWS = ("identity", "adain_only", "kv_only", "kv_qp", "styleid_official", "styleid", "styleid_g03")
ABLATIONS = ("identity", "adain_only", "kv_only", "kv_qp")
REFERENCE_ROWS = ("oracle", "vae_roundtrip", "ddim_roundtrip")
OFFICIAL_FALLBACK = "transfer-quality-official"


def default_model() -> str:
    """``mini`` when the bundled model exists, else ``tiny-sd``."""
    return "mini" if (MINI_PATH / "model_index.json").exists() else "tiny-sd"


def _is_test(content: Any, style: StyleSpec) -> bool:
    return split_of(content, style, "content_style") == "test"


def sample_pairs(rng: np.random.Generator, n: int, size: int, max_tries: int = 100_000) -> dict[str, Any]:
    """``n`` held-out (content image, style image) pairs whose content the segmenter can read.

    Returns:
        ``{"contents": uint8 (n, S, S, 3), "masks": bool (n, 3, S, S), "styles": uint8 (n, S, S, 3),
        "oracles": uint8 (n, S, S, 3) (the content in the target style), "specs": [(content spec,
        content style, style content, style)], "rejected": int}``.
    """
    contents, masks, styles, oracles, specs = [], [], [], [], []
    rejected = 0
    for _ in range(max_tries):
        if len(contents) == n:
            break
        c, s = sample_content(rng), sample_style(rng)
        if not _is_test(c, s):
            continue
        s_c = next(
            (x for x in (sample_style(rng) for _ in range(500)) if x.key != s.key and _is_test(c, x)), None
        )
        c2 = next(
            (
                x
                for x in (sample_content(rng) for _ in range(500))
                if x.content_class != c.content_class and _is_test(x, s)
            ),
            None,
        )
        if s_c is None or c2 is None:
            continue
        s_img = StyleSpec(*s.key, seed=int(rng.integers(0, 2**32)))
        sample = render_samples([c, c2, c], [s_c, s_img, s_img], size)
        if mask_iou(segment_objects(sample.images[0]), sample.masks[0]) < RELIABLE_IOU:
            rejected += 1
            continue
        contents.append(sample.images[0])
        masks.append(sample.masks[0])
        styles.append(sample.images[1])
        oracles.append(sample.images[2])
        specs.append((c, s_c, c2, s_img))
    if len(contents) < n:
        raise RuntimeError(f"could only sample {len(contents)} of {n} pairs")
    return {
        "contents": np.stack(contents),
        "masks": np.stack(masks),
        "styles": np.stack(styles),
        "oracles": np.stack(oracles),
        "specs": specs,
        "rejected": rejected,
    }


def attention_blocks(pipe: Any) -> list[int]:
    """Indices of the UNet's up blocks that have self-attention."""
    blocks = set()
    for name in pipe.unet.attn_processors:
        parts = name.split(".")
        if parts[0] == "up_blocks" and name.endswith("attn1.processor"):
            blocks.add(int(parts[1]))
    return sorted(blocks)


ALL_SELF_ATTENTION = {"down": True, "mid": True, "up": True}


def sweep_candidates(blocks: list[int]) -> list[dict[str, Any]]:
    """Every up block with self-attention alone, every run of adjacent ones, and every self-attention
    layer of the UNet (encoder, middle and decoder; labelled ``all``)."""
    runs = [blocks[i:j] for i in range(len(blocks)) for j in range(i + 1, len(blocks) + 1)]
    return [{"up": {f"block_{b}": True for b in run}} for run in runs] + [ALL_SELF_ATTENTION]


def resolve_default_layers(pipe: Any, model: str, requested: str) -> Any:
    """The layer spec the StyleID rows use: ``requested`` (a preset name, block names joined by ``+`` such
    as ``up1+up2``, or JSON) or, for ``auto``, ``styleid-mini`` on the mini model, else the
    architecture's default, else every decoder self-attention (``{"up": True}``)."""
    names = list(pipe.unet.attn_processors)
    if requested != "auto":
        spec = parse_layers(requested)
        resolve_layers(spec, names)  # raises LayerSelectionError with the choices
        return spec
    candidates: list[Any] = (["styleid-mini"] if model == "mini" else []) + [None, {"up": True}]
    for spec in candidates:
        try:
            resolve_layers(spec, names)
            return spec
        except LayerSelectionError:
            continue
    raise LayerSelectionError("no decoder self-attention layers found")


def parse_layers(text: str) -> Any:
    """``styleid`` (preset) | ``up1+up2`` (whole up blocks) | ``all`` (every self-attention) | a JSON block dict."""
    if text == "all":
        return dict(ALL_SELF_ATTENTION)
    if text.startswith("{"):
        return json.loads(text)
    if all(part.startswith("up") and part[2:].isdigit() for part in text.split("+")):
        return {"up": {f"block_{part[2:]}": True for part in text.split("+")}}
    return text


def layers_label(spec: Any) -> str:
    if spec is None:
        return "default"
    if spec == ALL_SELF_ATTENTION:
        return "all"
    if isinstance(spec, dict) and set(spec) == {"up"} and isinstance(spec["up"], dict):
        return "+".join(f"up{key.split('_')[1]}" for key in spec["up"])
    return spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)


def official_layers(pipe: Any, layers: Any) -> tuple[str, Any]:
    """``styleid-official`` when the model has its blocks, else a benchmark-local preset with the
    benchmark's layers and ``official_timing=True`` (registered in ``LAYER_PRESETS`` for this process)."""
    try:
        resolve_layers("styleid-official", list(pipe.unet.attn_processors))
        return "styleid-official", "styleid-official"
    except LayerSelectionError:
        pass
    if isinstance(layers, str) and layers in LAYER_PRESETS:
        blocks = LAYER_PRESETS[layers].blocks
    elif isinstance(layers, dict):
        blocks = layers
    else:
        blocks = {"up": True}
    LAYER_PRESETS[OFFICIAL_FALLBACK] = LayerPreset(
        OFFICIAL_FALLBACK, "sd", blocks, "benchmark: the benchmark's layers with the official timing", True
    )
    return OFFICIAL_FALLBACK, f"{layers_label(layers)} (official timing)"


def row_settings(layers: Any, official: str, temperature: float = 1.5) -> dict[str, dict[str, Any] | None]:
    """Pipeline keyword arguments per row (None: the content itself; "oracle" / "vae": reference rows)."""
    on = {"attention_injection": True, "query_preservation": True, "adain": True, "temperature": temperature}
    return {
        "identity": None,
        "oracle": "oracle",
        "vae_roundtrip": "vae",
        "ddim_roundtrip": {
            "layers": layers,
            "attention_injection": False,
            "query_preservation": False,
            "adain": False,
            "content_as_style": True,
        },
        "adain_only": {
            "layers": layers,
            "attention_injection": False,
            "query_preservation": False,
            "adain": True,
        },
        "kv_only": {
            "layers": layers,
            "attention_injection": True,
            "query_preservation": False,
            "adain": False,
            "temperature": temperature,
        },
        "kv_qp": {
            "layers": layers,
            "attention_injection": True,
            "query_preservation": True,
            "adain": False,
            "gamma": 0.75,
            "temperature": temperature,
        },
        "styleid_official": {"layers": official, **on, "gamma": 0.75},
        "styleid": {"layers": layers, **on, "gamma": 0.75},
        "styleid_g03": {"layers": layers, **on, "gamma": 0.3},
    }


def extractor_scores(outputs: np.ndarray, contents: np.ndarray, styles: np.ndarray) -> dict[str, float]:
    """The extractor columns (see the module docstring); inputs float ``(n, S, S, 3)`` in [0, 1]."""
    from stylekit.extractors import load_default

    extractor = load_default()
    to_uint8 = lambda x: (np.clip(x, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    e_out, e_content, e_style = (extractor.embed(list(to_uint8(x))) for x in (outputs, contents, styles))
    sim_style = style_similarity(e_out, e_style, extractor)
    sim_content = style_similarity(e_out, e_content, extractor)
    d_s, d_c = (1 - sim_style).clamp_min(0), (1 - sim_content).clamp_min(0)
    normalised = torch.where(d_c + d_s > 0, d_c / (d_c + d_s).clamp_min(1e-12), torch.full_like(d_c, 0.5))
    return {
        "extractor_similarity": round(float(sim_style.mean()), 4),
        "extractor_style_score": round(float(normalised.mean()), 4),
    }


def score(outputs: np.ndarray, pairs: dict[str, Any]) -> dict[str, Any]:
    """Mean metrics of ``outputs`` (float (n, S, S, 3) in [0, 1]) against the pairs."""
    contents = pairs["contents"].astype(np.float32) / 255.0
    styles = pairs["styles"].astype(np.float32) / 255.0
    comp = style_score_components(list(outputs), list(contents), list(styles))
    ious = [content_iou(o, m) for o, m in zip(outputs, pairs["masks"], strict=True)]
    edges = [edge_ssim(o, c) for o, c in zip(outputs, contents, strict=True)]
    style = float(np.mean(comp["style"]))
    iou, edge = float(np.mean(ious)), float(np.mean(edges))
    content = (iou + edge) / 2
    return {
        "style_score": round(style, 4),
        "content_iou": round(iou, 4),
        "edge_ssim": round(edge, 4),
        "content_score": round(content, 4),
        "hmean": round(harmonic_mean(style, content), 4),
        "hmean_iou": round(harmonic_mean(style, iou), 4),
        "palette": round(float(np.mean(comp["palette"])), 4),
        "gram": round(float(np.mean(comp["gram"])), 4),
        "frac_iou_ge_0.7": round(float(np.mean(np.array(ious) >= 0.7)), 4),
        **extractor_scores(outputs, contents, styles),
    }


def run_row(
    pipe: Any,
    pairs: dict[str, Any],
    settings: dict[str, Any] | None,
    steps: int,
    size: int,
    cache: InversionCache,
) -> np.ndarray:
    if settings is None:
        return pairs["contents"].astype(np.float32) / 255.0
    if settings == "oracle":
        return pairs["oracles"].astype(np.float32) / 255.0
    if settings == "vae":
        return vae_roundtrip(pipe, pairs["contents"])
    settings = dict(settings)
    content_as_style = settings.pop("content_as_style", False)
    outs = []
    for content, style in zip(pairs["contents"], pairs["styles"], strict=True):
        result = pipe(
            content,
            content if content_as_style else style,
            num_inference_steps=steps,
            height=size,
            width=size,
            output_type="np",
            cache=cache,
            **settings,
        )
        outs.append(np.asarray(result.images[0], dtype=np.float32))
    return np.stack(outs)


@torch.no_grad()
def vae_roundtrip(pipe: Any, images: np.ndarray) -> np.ndarray:
    """uint8 ``(B, S, S, 3)`` -> VAE encode (posterior mode) and decode -> float ``(B, S, S, 3)`` in [0, 1]."""
    vae = pipe.vae
    param = next(vae.parameters())
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = vae.encode(x.to(param.device, param.dtype)).latent_dist.mode()
    y = vae.decode(latents).sample.float().clamp(-1, 1)
    return ((y + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(path: str, pairs: dict[str, Any], outputs: dict[str, np.ndarray], columns: int = 8) -> None:
    """Rows: content, style, then every row but identity, in run order; one column per pair (first ``columns`` pairs);
    upscaled x3 (nearest)."""
    import PIL.Image

    k = min(columns, len(pairs["contents"]))
    lines = [pairs["contents"][:k], pairs["styles"][:k]]
    lines += [
        (np.clip(outputs[name][:k], 0, 1) * 255).round().astype(np.uint8)
        for name in outputs
        if name != "identity"
    ]
    size = lines[0].shape[1]
    grid = np.full((len(lines) * (size + 2), k * (size + 2), 3), 255, np.uint8)
    for r, line in enumerate(lines):
        for c in range(k):
            grid[r * (size + 2) : r * (size + 2) + size, c * (size + 2) : c * (size + 2) + size] = line[c]
    image = PIL.Image.fromarray(grid)
    image.resize((image.width * 3, image.height * 3), PIL.Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="auto", help="auto = mini if bundled, else tiny-sd")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=0, help="0 = the model's native resolution")
    parser.add_argument("--layers", default="auto", help="auto | preset | up1+up2 | JSON block dict")
    parser.add_argument(
        "--rows", default="all", help="comma-separated subset of " + ",".join(ROWS + REFERENCE_ROWS)
    )
    parser.add_argument("--layers-sweep", action="store_true")
    parser.add_argument("--temperature", type=float, default=1.5, help="attention temperature of every row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out-grid", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    rows = ROWS + REFERENCE_ROWS if args.rows == "all" else tuple(r.strip() for r in args.rows.split(","))
    unknown = set(rows) - set(ROWS + REFERENCE_ROWS)
    if unknown:
        parser.error(f"--rows: unknown rows {sorted(unknown)}")

    start = time.perf_counter()
    model = default_model() if args.model == "auto" else args.model
    dtype = torch.float32 if args.device == "cpu" else None  # fp16 weights do not run on CPU
    pipe = load_pipeline(model, dtype=dtype, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    size = args.size or pipe.native_resolution
    layers = resolve_default_layers(pipe, model, args.layers)
    official, official_label = official_layers(pipe, layers)
    settings = row_settings(layers, official, args.temperature)

    pairs = sample_pairs(np.random.default_rng([args.seed, 20]), args.pairs, size)
    cache = InversionCache(max_memory_bytes=1 << 30)
    outputs: dict[str, np.ndarray] = {}
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name in rows:
        t0 = time.perf_counter()
        outputs[name] = run_row(pipe, pairs, settings[name], args.steps, size, cache)
        timings[name] = round(time.perf_counter() - t0, 1)
        results[name] = score(outputs[name], pairs)

    sweep: dict[str, Any] = {}
    if args.layers_sweep:
        names = list(pipe.unet.attn_processors)
        main_layers = resolve_layers(layers, names)
        for spec in sweep_candidates(attention_blocks(pipe)):
            t0 = time.perf_counter()
            if resolve_layers(spec, names) == main_layers and "styleid" in results:
                sweep[layers_label(spec)] = {
                    **results["styleid"],
                    "seconds": timings["styleid"],
                    "same_as": "styleid",
                }
                continue
            out = run_row(pipe, pairs, {**settings["styleid"], "layers": spec}, args.steps, size, cache)
            sweep[layers_label(spec)] = {**score(out, pairs), "seconds": round(time.perf_counter() - t0, 1)}

    if args.out_grid:
        save_grid(args.out_grid, pairs, outputs)

    targets: dict[str, Any] = {}
    if {"styleid", *ABLATIONS[1:]} <= set(results):
        full = results["styleid"]
        ablations = [r for r in ABLATIONS if r in results]
        targets = {
            "styleid_beats_ablations_hmean": all(full["hmean"] > results[r]["hmean"] for r in ablations),
            "styleid_style_ge_0.5": full["style_score"] >= 0.5,
            "styleid_iou_ge_0.7": full["content_iou"] >= 0.7,
        }
        targets["styleid_beats_ablations_hmean_iou"] = all(
            full["hmean_iou"] > results[r]["hmean_iou"] for r in ablations
        )
        if "styleid_official" in results:
            targets["styleid_official_beats_ablations_hmean"] = all(
                results["styleid_official"]["hmean"] > results[r]["hmean"] for r in ablations
            )
    report = {
        "benchmark": "transfer_quality",
        "model": model,
        "size": size,
        "steps": args.steps,
        "pairs": args.pairs,
        "rejected_unreadable": pairs["rejected"],
        "layers": layers_label(layers),
        "temperature": args.temperature,
        "official_layers": official_label,
        "rows": results,
        "targets": targets,
        "layer_sweep": sweep,
        "row_seconds": timings,
        "seconds": round(time.perf_counter() - start, 1),
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
