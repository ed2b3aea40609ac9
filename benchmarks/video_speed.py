"""Speed and memory of video style transfer; prints one JSON line.

Usage: ``python benchmarks/video_speed.py [--model tiny-sd] [--frames 8] [--steps 10] [--size 64]
[--window 8] [--repeats 2] [--memory-size 128] [--memory-runs 3] [--threads 1] [--device cpu]``

- ``fps_ratio``: frames/s of ``VideoStyleTransferPipeline`` (StyleID + cross-frame attention + a motion
  adapter, style inversion cached as in any repeated use) / frames/s of stock diffusers
  ``AnimateDiffVideoToVideoPipeline`` with its default guidance (7.5, so two UNet rows per frame) and
  ``enforce_inference_steps=True`` (exactly ``--steps`` denoising steps), on the same components (a tiny
  random ``MotionAdapter`` built for the model's UNet), frames, steps and resolution, in one run. Every
  pipeline is timed on warm calls (one untimed warm-up call each first; for ours that is also where the
  style's inversion enters the cache, so the timed calls invert the frames only); the calls of the
  pipelines are interleaved (ours, stock, stock without guidance, repeated ``--repeats`` times) so machine
  noise hits them alike, and the best wall time of each counts. ``fps_ratio_no_cfg`` compares with the
  stock pipeline at guidance 1; ``fps_ratio_cpu`` is the same ratio from the process's CPU time (one
  thread: less sensitive to other jobs on a shared machine). ``settings`` records both pipelines' exact
  arguments; ``unet_calls`` the UNet forward calls per video of each.
- ``fps_ratio_consistent``: the same for the configuration that meets the temporal-consistency target in
  ``benchmarks/video_quality.py`` (cross-frame attention + ``temporal_fusion=0.8``, no motion adapter: the
  image UNet samples), against the same stock pipeline (which needs its motion adapter).
- ``memory_ratio_4x_window``: peak resident-memory growth (``--device cuda``: growth of the allocator's
  peak) during a call on a video 4x the window length / the same on a video of one window (each in a fresh
  subprocess, RSS sampled every 2 ms; frames streamed to a file, so what grows with the length is only the
  returned frames); the median of ``--memory-runs``
  processes per length (single runs vary by about 20 MB), each run's figure in ``memory_runs_mb``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

OUR_DEFAULTS = ("gamma", "temperature", "cross_frame", "anchors", "adain", "window_overlap")


def _rss() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(model: str, seed: int = 0, device: str = "cpu"):
    """(VideoStyleTransferPipeline, stock AnimateDiffVideoToVideoPipeline, motion adapter) on shared components,
    on ``device``."""
    from diffusers import AnimateDiffVideoToVideoPipeline

    from stylekit import load_pipeline
    from stylekit.pipelines import VideoStyleTransferPipeline
    from stylekit.video_models import motion_unet, tiny_motion_adapter

    base = load_pipeline(model)
    adapter = tiny_motion_adapter(base.unet, seed=seed)
    ours = VideoStyleTransferPipeline.from_pipe(base, motion_adapter=adapter)
    stock = AnimateDiffVideoToVideoPipeline(
        base.vae, base.text_encoder, base.tokenizer, motion_unet(base.unet, adapter), adapter, base.scheduler
    )
    for pipe in (ours, stock):
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
    return ours, stock, adapter


def clip(frames: int, size: int, seed: int = 0) -> np.ndarray:
    from stylekit.data import sample_video

    return sample_video(np.random.default_rng(seed), frames, size).frames


def measure_memory(model: str, frames: int, window: int, size: int, steps: int, device: str = "cpu") -> int:
    """Peak memory growth (bytes) of one streamed call (run in a fresh process): resident memory on the CPU,
    ``torch.cuda.max_memory_allocated`` on CUDA."""
    ours, _, _ = build(model, device=device)
    video = clip(frames, size)
    style = clip(2, size, seed=1)[0]
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated() if cuda else _rss()
    peak = [baseline]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as folder:
        ours(
            video,
            style,
            num_inference_steps=steps,
            height=size,
            width=size,
            window_size=window,
            window_overlap=window // 4,
            output_type="np",
            output_path=os.path.join(folder, "out.mp4"),
        )
    done.set()
    thread.join()
    if cuda:
        return torch.cuda.max_memory_allocated() - baseline
    return peak[0] - baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny-sd")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--memory-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--device", default="cpu", help="cpu or cuda[:N] (memory: RSS on cpu, allocator peak on cuda)"
    )
    parser.add_argument(
        "--memory-runs", type=int, default=3, help="fresh processes per length (median counts)"
    )
    parser.add_argument("--measure-memory", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.device != "cpu" and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        parser.error(f"--device {args.device}: expected cpu, or cuda[:N] on a machine with CUDA")
    torch.set_num_threads(args.threads)
    if args.measure_memory is not None:
        print(
            measure_memory(
                args.model, args.measure_memory, args.window, args.memory_size, args.steps, args.device
            )
        )
        return 0

    from PIL import Image

    ours, stock, adapter = build(args.model, device=args.device)
    video = clip(args.frames, args.size)
    style = clip(2, args.size, seed=1)[0]
    frames_pil = [Image.fromarray(f) for f in video]

    rows: dict[str, object] = {}

    def run_ours() -> None:
        rows["ours"] = ours(
            video,
            style,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            window_size=args.window,
            output_type="np",
        )

    def run_consistent() -> None:  # the configuration that meets the temporal target (docs/video.md)
        ours(
            video,
            style,
            motion_adapter=None,
            temporal_fusion=0.8,
            num_inference_steps=args.steps,
            height=args.size,
            width=args.size,
            window_size=args.window,
            output_type="np",
        )

    def run_stock(guidance: float) -> None:
        stock(
            video=frames_pil,
            prompt="",
            num_inference_steps=args.steps,
            guidance_scale=guidance,
            enforce_inference_steps=True,
            height=args.size,
            width=args.size,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )

    runs = {
        "ours": run_ours,
        "stock": lambda: run_stock(7.5),
        "stock_no_cfg": lambda: run_stock(1.0),
        "ours_consistent": run_consistent,
    }
    calls = {name: 0 for name in runs}

    def counter(name: str):
        def count(*_: object) -> None:
            calls[name] += 1

        return count

    counted = [
        (ours._motion_cache.get(ours.unet, adapter), "ours"),
        (ours.unet, "ours"),
        (stock.unet, "stock"),
    ]
    for fn in runs.values():  # warm-up (and, for ours, the style's inversion into the cache)
        fn()
    wall: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            tag = "stock" if name.startswith("stock") else "ours"
            hooks = [m.register_forward_pre_hook(counter(name)) for m, owner in counted if owner == tag]
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
            for hook in hooks:
                hook.remove()
    fps_ours, fps_stock, fps_stock_no_cfg, fps_consistent = (args.frames / min(wall[name]) for name in runs)
    cpu_ratio = min(cpu["stock"]) / min(cpu["ours"])
    defaults = inspect.signature(type(ours).__call__).parameters
    settings = {
        "ours": {"class": type(ours).__name__, **{name: defaults[name].default for name in OUR_DEFAULTS},
                 "window_size": args.window, "num_inference_steps": args.steps,
                 "motion_adapter": "tiny random", "guidance": "none (1 UNet row per frame and step)",
                 "inversion": f"{args.steps} DDIM steps, style cached (warm), frames inverted every call"},
        "stock": {"class": type(stock).__name__, "prompt": "", "guidance_scale": 7.5,
                  "strength": inspect.signature(type(stock).__call__).parameters["strength"].default,
                  "enforce_inference_steps": True, "generator_seed": 0,
                  "scheduler": type(stock.scheduler).__name__},
        "stock_no_cfg": {"guidance_scale": 1.0},
        "timing": f"warm calls, interleaved, best of {args.repeats} (wall and process CPU time)",
    }  # fmt: skip

    def memory(frames: int) -> list[int]:
        """Peak RSS growth of ``--memory-runs`` fresh processes (RSS growth varies by ~20 MB run to run)."""
        command = [sys.executable, __file__, "--model", args.model, "--window", str(args.window), "--steps", str(args.steps),
                   "--memory-size", str(args.memory_size), "--threads", str(args.threads), "--device", args.device,
                   "--measure-memory", str(frames)]  # fmt: skip
        runs = [
            subprocess.run(command, capture_output=True, text=True, check=True)
            for _ in range(args.memory_runs)
        ]
        return [int(result.stdout.strip().splitlines()[-1]) for result in runs]

    runs_1x, runs_4x = memory(args.window), memory(4 * args.window)
    memory_1x, memory_4x = float(np.median(runs_1x)), float(np.median(runs_4x))
    line = {
        "benchmark": "video_speed",
        "model": args.model,
        "device": args.device,
        "frames": args.frames,
        "steps": args.steps,
        "size": args.size,
        "window": args.window,
        "fps": round(fps_ours, 3),
        "fps_stock": round(fps_stock, 3),
        "fps_stock_no_cfg": round(fps_stock_no_cfg, 3),
        "fps_ratio": round(fps_ours / fps_stock, 3),
        "fps_ratio_no_cfg": round(fps_ours / fps_stock_no_cfg, 3),
        "fps_ratio_cpu": round(cpu_ratio, 3),
        "fps_consistent": round(fps_consistent, 3),
        "fps_ratio_consistent": round(fps_consistent / fps_stock, 3),
        "unet_calls": {name: calls[name] // args.repeats for name in runs},
        "unet_rows_per_frame": round(rows["ours"].unet_evals / args.frames, 2),
        "unet_rows_per_frame_stock": 2 * args.steps,
        "memory_size": args.memory_size,
        "memory_1x_window_mb": round(memory_1x / 2**20, 1),
        "memory_4x_window_mb": round(memory_4x / 2**20, 1),
        "memory_ratio_4x_window": round(memory_4x / max(memory_1x, 1), 3),
        "memory_runs_mb": {
            "1x": [round(m / 2**20, 1) for m in runs_1x],
            "4x": [round(m / 2**20, 1) for m in runs_4x],
        },
        "settings": settings,
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
