"""StyleID injection cost: UNet evaluations, stylize / plain-generation time, cache bytes; one JSON line.

Usage: ``python benchmarks/injection.py [--model tiny-sd] [--steps 50] [--size 256] [--count-size 64]
[--repeats 5] [--threads 1] [--device cpu]``

1. Exact UNet evaluation counts per stylized image (``output.unet_evals``, batch rows) for N steps with a
   fresh ``InversionCache``: cold (content and style new), style cached (new content), both cached; for
   the ``features`` strategy (target 3N, 2N, N), the ``trajectory`` strategy (batch rows: the references
   run live beside the stylized row) and the ``styleid-official`` preset cold (2N + N - 1). Counts do not
   depend on the resolution; they are taken at ``--count-size`` and the features counts of the timed
   calls at ``--size`` (style cached, both cached) are checked to be the same
   (``checks.evals_same_at_size``).
2. Wall-time ratio stylize / plain text-to-image generation (a stock diffusers pipeline built from the
   same components; empty prompt, same N and resolution, ``output_type="np"``). StyleID has no
   classifier-free guidance, so the baseline runs with ``guidance_scale=1.0``; the ratio against the
   default CFG 7.5 is reported as an extra. Rounds interleave the calls (rotating their order) and the
   median of the per-round ratios is reported (the per-round wall ratios too, to show the noise), and
   process CPU-time ratios (less sensitive to other load on the machine).
3. Cache bytes for SD 1.5 at 512x512 and 50 steps (whatever ``--steps`` is): shapes read from a
   meta-device forward (no weights) of the real SD 1.5 UNet config with the real capture processors,
   turned into the bytes of the cache entries the code writes. The same formula is checked against the
   actual entries of the benchmarked model (sum of tensor nbytes of every ``InversionCache.put``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel

from stylekit.attention import resolve_layers
from stylekit.attention.conditioner import ROLE_KINDS
from stylekit.attention.injection import InjectionController, InjectionSettings, installed_processors
from stylekit.cache import CacheKey, InversionCache
from stylekit.models import load_pipeline

# The SD 1.5 UNet config (stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json), written out so
# that no download is needed.
SD15_UNET_CONFIG: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": [
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SD15_PARAMETERS = 859_520_964  # parameter count of the SD 1.5 UNet: checks the config above
SD15_TEXT_TOKENS = 77
SD15_VAE_FACTOR = 8
SD15_SIZE = 512
SD15_STEPS = 50  # the SD 1.5 byte figures are always for 512x512 and 50 steps, whatever --steps is

# What the official run_styleid.py pickles per image (research/styleid.md section 1.8).
OFFICIAL_BYTES_PER_IMAGE = 3.54e9


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- bytes
def capture_shapes(
    unet_config: dict[str, Any],
    layers: Any,
    architecture: str,
    latent_hw: tuple[int, int],
    conditioning: dict,
) -> tuple[int, tuple[str, ...], dict[str, dict[str, tuple[int, int]]]]:
    """Run one meta-device UNet forward with the real capture processors.

    Args:
        conditioning: UNet keyword arguments for a batch of 2 (content row, style row); any device.

    Returns:
        (parameter count, targeted layer names, ``{role: {"layer|kind": (tokens, channels)}}``) where the
        roles are "content" and "style" and the kinds those ``AttentionInjection`` stores for each role.
    """

    def to_meta(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: to_meta(v) for k, v in value.items()}
        return torch.empty(value.shape, dtype=value.dtype, device="meta") if torch.is_tensor(value) else value

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
    parameters = sum(p.numel() for p in unet.parameters())
    names = resolve_layers(layers, unet.attn_processors.keys(), architecture)
    controller = InjectionController(InjectionSettings())
    controller.capture_rows = [("content", ROLE_KINDS["content"]), ("style", ROLE_KINDS["style"])]
    controller.timestep = 1
    controller.mode = "capture"
    sample = torch.empty(2, unet.config.in_channels, *latent_hw, device="meta")
    with torch.no_grad(), installed_processors(unet, names, controller):
        unet(sample, torch.tensor([1], device="meta"), **to_meta(conditioning), return_dict=False)
    shapes = {}
    for role in ("content", "style"):
        stacked = controller.bank.to_tensors(role)
        shapes[role] = {k: tuple(v.shape[1:]) for k, v in stacked.items() if "|" in k}
    return parameters, names, shapes


def entry_bytes(
    shapes: dict[str, tuple[int, int]] | None,
    steps: int,
    latent_shape: tuple[int, int, int],
    feature_bytes: int,
) -> int:
    """Bytes of one ``InversionCache`` entry as ``AttentionInjection`` writes it.

    ``features`` entries: the role's Q (content) or K, V (style) per layer and step in the feature dtype;
    every entry: the inversion latents (N, C, h, w) and the start latent (C, h, w) in fp32, and the
    inversion and sampling timesteps (N each, int64; corrected timing). ``shapes=None`` gives a
    ``trajectory`` entry.
    """
    latent = int(np.prod(latent_shape))
    features = sum(steps * t * c for t, c in (shapes or {}).values()) * feature_bytes
    return features + (steps + 1) * latent * 4 + 2 * steps * 8


class RecordingCache(InversionCache):
    """An in-memory ``InversionCache`` that also records the bytes of each entry it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.entry_bytes: dict[tuple[str, str, tuple[int, int]], list[int]] = {}

    def put(self, key: CacheKey, tensors: dict[str, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        self.entry_bytes.setdefault((key.strategy, key.role, tuple(key.resolution)), []).append(size)
        super().put(key, tensors)


# ---------------------------------------------------------------------------------------------- timing
class UnetTimer:
    """Wall time spent inside ``unet.forward`` (hooks), to show how much of a call the UNet takes."""

    def __init__(self, unet: torch.nn.Module) -> None:
        self.total = 0.0
        self._start = 0.0
        self._handles = [
            unet.register_forward_pre_hook(self._pre),
            unet.register_forward_hook(self._post),
        ]

    def _pre(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _post(self, *_: Any) -> None:
        self.total += time.perf_counter() - self._start

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def measured(out: dict[str, list[float]], name: str, timer: UnetTimer) -> Any:
    unet_before = timer.total
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out.setdefault(f"{name}_wall", []).append(wall)
    out.setdefault(f"{name}_cpu", []).append(cpu)
    out.setdefault(f"{name}_unet", []).append((timer.total - unet_before) / wall)


def round_ratios(samples: dict[str, list[float]], num: str, den: str, unit: str = "wall") -> list[float]:
    return [round(a / b, 3) for a, b in zip(samples[f"{num}_{unit}"], samples[f"{den}_{unit}"], strict=True)]


def median_ratio(samples: dict[str, list[float]], num: str, den: str, unit: str = "wall") -> float:
    return round(statistics.median(round_ratios(samples, num, den, unit)), 3)


# ---------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="a stylekit preset or model (default tiny-sd)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps N (default 50)")
    parser.add_argument("--size", type=int, default=256, help="height = width in pixels (default 256)")
    parser.add_argument(
        "--count-size", type=int, default=64, help="resolution of the (untimed) counting calls (default 64)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing rounds (default 5)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1: the dev machine is shared)"
    )
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    n, size = args.steps, args.size
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    plain_class = StableDiffusionXLPipeline if pipe.architecture == "sdxl" else StableDiffusionPipeline
    extra = {} if pipe.architecture == "sdxl" else {"requires_safety_checker": False}
    plain = plain_class(**pipe.components, **extra)  # the very same modules and scheduler
    plain.set_progress_bar_config(disable=True)

    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.random((size, size, 3), dtype=np.float32)

    style, content_a, content_b = image(), image(), image()

    def stylize(content: np.ndarray, cache: Any, strategy: str, at: int = size, **kwargs: Any) -> int:
        out = pipe(
            content,
            style,
            num_inference_steps=n,
            height=at,
            width=at,
            cache=cache,
            cache_strategy=strategy,
            output_type="np",
            **kwargs,
        )
        return int(out.unet_evals)

    # 1. counts (they do not depend on the resolution: run at --count-size, checked at --size below) --------
    counts: dict[str, int] = {}
    caches: dict[str, RecordingCache] = {}
    for strategy, prefix in (("features", "unet_evals"), ("trajectory", "trajectory_unet_rows")):
        cache = caches[strategy] = RecordingCache()
        counts[f"{prefix}_cold"] = stylize(content_a, cache, strategy, args.count_size)
        counts[f"{prefix}_style_cached"] = stylize(content_b, cache, strategy, args.count_size)
        counts[f"{prefix}_both_cached"] = stylize(content_b, cache, strategy, args.count_size)
        log(f"counts ({strategy}): {counts}")
    if pipe.architecture == "sd":
        counts["unet_evals_official_cold"] = stylize(
            content_a, False, "features", args.count_size, layers="styleid-official"
        )
    # At --size: cache the pair timed as "both cached" (also the stylize warm-up).
    stylize(content_b, caches["features"], "features")

    # 2. time ratios -----------------------------------------------------------------------------------
    new_contents = iter([image() for _ in range(args.repeats)])  # "style cached": a new content each time
    timer = UnetTimer(pipe.unet)
    samples: dict[str, list[float]] = {}
    evals_at_size: dict[str, set[int]] = {"both_cached": set(), "style_cached": set()}

    def run_plain(guidance: float) -> None:
        generator = torch.Generator().manual_seed(0)
        plain(
            "",
            num_inference_steps=n,
            height=size,
            width=size,
            guidance_scale=guidance,
            output_type="np",
            generator=generator,
        )

    tasks: list[tuple[str, Callable[[], Any]]] = [
        ("plain", lambda: run_plain(1.0)),
        ("both_cached", lambda: stylize(content_b, caches["features"], "features")),
        ("style_cached", lambda: stylize(next(new_contents), caches["features"], "features")),
        ("plain_cfg", lambda: run_plain(7.5)),
    ]
    run_plain(1.0)  # warm-up
    for round_index in range(args.repeats):
        shift = round_index % len(tasks)
        for name, task in tasks[shift:] + tasks[:shift]:
            with measured(samples, name, timer):
                value = task()
            if name in evals_at_size:
                evals_at_size[name].add(value)
        log(
            f"round {round_index + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in samples.items() if not k.endswith("_unet"))
        )
    timer.remove()

    # 3. bytes ---------------------------------------------------------------------------------------
    # (a) the benchmarked model: the formula (shapes from a meta forward, the feature dtype the code uses
    # on this device) against every entry the caches were given, at each resolution used.
    feature_bytes = 2 if torch.device(args.device).type == "cuda" else 4
    cache_check: dict[str, list[int]] = {}
    model_shapes: dict[int, dict[str, dict[str, tuple[int, int]]]] = {}
    for strategy, cache in caches.items():
        for (_, role, (height, width)), sizes in sorted(cache.entry_bytes.items()):
            latent_hw = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
            latent_shape = (int(pipe.unet.config.in_channels), *latent_hw)
            if strategy == "features" and height not in model_shapes:
                conditioning = pipe.unet_conditioning(2, pipe.unet.dtype, height, width)
                config = dict(pipe.unet.config)
                model_shapes[height] = capture_shapes(
                    config, None, pipe.architecture, latent_hw, conditioning
                )[2]
            shapes = model_shapes[height][role] if strategy == "features" else None
            expected = entry_bytes(shapes, n, latent_shape, feature_bytes)
            cache_check[f"{strategy}_{role}_{height}"] = [expected, *sorted(set(sizes))]
    matches = all(len(v) == 2 and v[0] == v[1] for v in cache_check.values())

    # (b) SD 1.5 at 512x512, fp16 features (as on CUDA).
    sd15_latent = (4, SD15_SIZE // SD15_VAE_FACTOR, SD15_SIZE // SD15_VAE_FACTOR)
    sd15_cond = {
        "encoder_hidden_states": torch.empty(2, SD15_TEXT_TOKENS, SD15_UNET_CONFIG["cross_attention_dim"])
    }
    sd15_params, sd15_layers, sd15_shapes = capture_shapes(
        SD15_UNET_CONFIG, "styleid", "sd", sd15_latent[1:], sd15_cond
    )
    sd15_content = entry_bytes(sd15_shapes["content"], SD15_STEPS, sd15_latent, 2)
    sd15_style = entry_bytes(sd15_shapes["style"], SD15_STEPS, sd15_latent, 2)
    sd15_trajectory = entry_bytes(None, SD15_STEPS, sd15_latent, 2)
    # The official format: q, k and v of every injected layer for every step, fp32, per image.
    qkv_per_step = sum(t * c for t, c in sd15_shapes["content"].values()) * 3
    sd15_official = SD15_STEPS * qkv_per_step * 4

    def gb(x: float) -> float:
        return round(x / 1e9, 3)

    ratios = {
        "time_ratio_style_cached": median_ratio(samples, "style_cached", "plain"),
        "time_ratio_both_cached": median_ratio(samples, "both_cached", "plain"),
        "time_ratio_both_cached_vs_cfg": median_ratio(samples, "both_cached", "plain_cfg"),
        "time_ratio_style_cached_vs_cfg": median_ratio(samples, "style_cached", "plain_cfg"),
        "cpu_time_ratio_style_cached": median_ratio(samples, "style_cached", "plain", "cpu"),
        "cpu_time_ratio_both_cached": median_ratio(samples, "both_cached", "plain", "cpu"),
    }
    result: dict[str, Any] = {
        "benchmark": "injection",
        "model": args.model,
        "steps": n,
        "size": size,
        "device": args.device,
        "threads": args.threads,
        "repeats": args.repeats,
        **counts,
        **ratios,
        "time_ratio_style_cached_rounds": round_ratios(samples, "style_cached", "plain"),
        "time_ratio_both_cached_rounds": round_ratios(samples, "both_cached", "plain"),
        "plain_s": round(statistics.median(samples["plain_wall"]), 3),
        "plain_cfg_s": round(statistics.median(samples["plain_cfg_wall"]), 3),
        "stylize_both_cached_s": round(statistics.median(samples["both_cached_wall"]), 3),
        "stylize_style_cached_s": round(statistics.median(samples["style_cached_wall"]), 3),
        "unet_time_fraction_plain": round(statistics.median(samples["plain_unet"]), 3),
        "unet_time_fraction_both_cached": round(statistics.median(samples["both_cached_unet"]), 3),
        "sd15_size": SD15_SIZE,
        "sd15_steps": SD15_STEPS,
        "sd15_feature_cache_bytes_per_pair": sd15_content + sd15_style,
        "sd15_feature_cache_gb_per_pair": gb(sd15_content + sd15_style),
        "sd15_feature_cache_bytes_content": sd15_content,
        "sd15_feature_cache_bytes_style": sd15_style,
        "sd15_trajectory_bytes_per_image": sd15_trajectory,
        "sd15_trajectory_mb_per_image": round(sd15_trajectory / 1e6, 3),
        "sd15_official_qkv_bytes_per_image": sd15_official,
        "sd15_official_gb_per_image": gb(sd15_official),
        "sd15_injected_layers": len(sd15_layers),
        "sd15_unet_parameters": sd15_params,
        "sd15_shapes_from": "meta-device forward with the capture processors",
        "cache_bytes_formula_vs_actual": cache_check,
        "cache_bytes_formula_matches_code": matches,
    }
    checks = {
        "evals_cold_3n": counts["unet_evals_cold"] == 3 * n,
        "evals_style_cached_2n": counts["unet_evals_style_cached"] == 2 * n,
        "evals_both_cached_n": counts["unet_evals_both_cached"] == n,
        "evals_official_cold_3n_minus_1": (
            counts["unet_evals_official_cold"] == 3 * n - 1 if "unet_evals_official_cold" in counts else None
        ),
        "evals_same_at_size": evals_at_size["both_cached"] == {counts["unet_evals_both_cached"]}
        and evals_at_size["style_cached"] == {counts["unet_evals_style_cached"]},
        "time_both_cached_le_1.10": ratios["time_ratio_both_cached"] <= 1.10,
        "time_style_cached_le_2.15": ratios["time_ratio_style_cached"] <= 2.15,
        "sd15_features_le_1.8gb": sd15_content + sd15_style <= 1.8e9,
        "sd15_trajectory_le_4mb": sd15_trajectory <= 4e6,
        "sd15_config_is_sd15": sd15_params == SD15_PARAMETERS,
        "official_qkv_matches_3.54gb": abs(sd15_official / OFFICIAL_BYTES_PER_IMAGE - 1) < 0.005,
    }
    result["checks"] = checks
    result.update(
        {
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "wall_s": round(time.perf_counter() - started, 1),
        }
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
