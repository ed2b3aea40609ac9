"""Training speed and memory of the split LoRAs vs plain peft LoRA on every UNet attention layer; one JSON line.

Usage: ``python benchmarks/lora_speed.py [--model mini] [--steps 40] [--rank 8] [--batch 2] [--threads 1]
[--size 64] [--repeats 1] [--step-rounds 30]``

Every method trains the same model on the same world images (rank, batch, steps, seed equal), each in its own
subprocess so that peak memory is its own: ``plain`` = the stock diffusers DreamBooth-LoRA recipe (peft LoRA
on to_q/to_k/to_v/to_out.0 of every attention block, ``--method dreambooth``), ``blora`` (content + style
blocks only), ``b4m`` (content break run: every attention block, half of each projection frozen).
Reported per method: optimizer steps/s (after one warm-up step); the training loop's memory
(``stylekit.training.memory.RegionPeakMemory``, measured by the trainer from the first step to the last, after
the model is loaded and the latents cached: CUDA ``max_memory_allocated``, CPU the resident high-water mark
reset at the loop's start), as ``loop_memory_mb`` (growth over the memory in use when the loop starts:
activations, gradients, optimizer state, which is what the methods change) and ``loop_peak_memory_mb``; the
whole process's peak (CUDA: ``max_memory_allocated``; CPU: ``ru_maxrss``) as ``process_peak_memory_mb``
(dominated by loading, equal for every method); trainable parameters (B4M's frozen halves are counted apart,
as ``frozen_params``: they are buffers, with no gradient and no optimizer state) and the optimizer-state size
(``optimizer_state_numel``: AdamW's exp_avg + exp_avg_sq entries); ``speed_ratio`` = steps/s / plain's,
``peak_memory_ratio`` = loop memory growth / plain's (``loop_peak_memory_ratio``,
``process_peak_memory_ratio``: the same for the two peaks). ``--repeats N`` runs the methods round-robin N
times and reports the median of each figure (per-run steps/s in ``runs``, loop memory in
``loop_memory_runs_mb``): on a shared machine one run's ratios are mostly noise.
``step_speed_ratio`` (per method ``step_ms``) is the low-noise speed figure: one training step (forward,
loss, backward, AdamW) of each method's LoRA, attached by the trainer's own code to copies of one UNet in
this process, timed interleaved in a shuffled order for ``--step-rounds`` rounds (median); it leaves out the
data loader and the trainer's bookkeeping, which are the same for every method. ``step_control_ratio``
times a second, identical plain set-up the same way: how far two copies of one set-up differ (memory
placement), the floor under which a step ratio says nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = {
    "plain": ["--method", "dreambooth"],
    "blora": ["--method", "blora"],
    "b4m": ["--method", "b4m", "--b4m_role", "content"],
}

CONTROL = "plain_control"  # a second, identical plain set-up in the in-process step timing

CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads({threads})
from stylekit.adapters.train_lora import parse_config, run
config = parse_config(sys.argv[1:])
if torch.cuda.is_available():
    torch.cuda.reset_peak_memory_stats()
summary = run(config)
out = json.loads(open(config.output_dir + "/train_summary.json").read())
peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("RESULT " + json.dumps({{"steps_per_second": out["steps_per_second"], "trainable_params": out["trainable_params"], "frozen_params": out["frozen_params"], "optimizer_state_numel": out.get("optimizer_state_numel"), "process_peak_bytes": peak, "loop_memory": out["loop_memory"]}}))
"""


def write_data(folder: Path, n: int, size: int, seed: int) -> Path:
    import numpy as np
    import PIL.Image

    from stylekit.data import style_set

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(style_set(np.random.default_rng(seed), n, size=size).images):
        PIL.Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def trainer_flags(method: str, args: argparse.Namespace, data: Path, output_dir: Path) -> list[str]:
    """The trainer's command-line flags of ``method``'s run (the same for every method but the method's own)."""
    return [
        *METHODS[method],
        "--pretrained_model_name_or_path",
        args.model,
        "--instance_data_dir",
        str(data),
        "--instance_prompt",
        "a [v]",
        "--output_dir",
        str(output_dir),
        "--rank",
        str(args.rank),
        "--max_train_steps",
        str(args.steps),
        "--train_batch_size",
        str(args.batch),
        "--checkpointing_steps",
        "0",
        "--seed",
        "0",
    ]


def measure(method: str, args: argparse.Namespace, data: Path, root: Path) -> dict[str, Any]:
    """Train ``args.steps`` steps in a subprocess; steps/s, trainable params, peak bytes."""
    cmd = [
        sys.executable,
        "-c",
        CHILD.format(threads=args.threads),
        *trainer_flags(method, args, data, root / method),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line.removeprefix("RESULT "))
    loop = out.pop("loop_memory")
    return {**out, "loop_growth_bytes": loop["growth_bytes"], "loop_peak_bytes": loop["peak_bytes"]}


def interleaved_step_seconds(args: argparse.Namespace, data: Path, root: Path) -> dict[str, float]:
    """Median seconds of one training step (UNet forward, MSE loss, backward, AdamW step) per method, and of
    a second copy of plain (``plain_control``: the noise floor of identical set-ups, about 1-7 % here).

    Every method's LoRA is attached by the trainer's own :func:`attach_lora` to a copy of one UNet in this
    process; each round times one step of every method, in a shuffled order, on the same random batch, so
    machine noise hits the methods alike (``--step-rounds`` rounds after two warm-up steps each).
    """
    import copy
    import random

    import torch

    from stylekit.adapters.train_lora import attach_lora, parse_config, resolve_roles
    from stylekit.models import load_pipeline

    torch.set_num_threads(args.threads)
    device = "cuda" if _cuda() else "cpu"
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    base = pipe.unet.requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    side = args.size // int(pipe.vae_scale_factor)
    latents = torch.randn(args.batch, base.config.in_channels, side, side, generator=generator).to(device)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
    context = torch.randn(args.batch, 77, base.config.cross_attention_dim, generator=generator).to(device)

    timed = {**{m: m for m in METHODS}, CONTROL: "plain"}  # timed name -> its method
    steps: dict[str, Any] = {}
    for name, method in timed.items():
        config = parse_config(trainer_flags(method, args, data, root / "steps"))
        unet = copy.deepcopy(base)
        groups, _ = attach_lora(unet, config, resolve_roles(config, unet))
        unet.to(device).train()
        optimizer = torch.optim.AdamW(groups)

        def step(unet: Any = unet, optimizer: Any = optimizer) -> None:
            prediction = unet(latents, timesteps, encoder_hidden_states=context).sample
            torch.nn.functional.mse_loss(prediction, noise).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        steps[name] = step
    seconds: dict[str, list[float]] = {m: [] for m in timed}
    for name in [*timed, *timed]:  # warm-up
        steps[name]()
    for round_ in range(args.step_rounds):
        order = list(timed)
        random.Random(round_).shuffle(order)
        for name in order:
            if device == "cuda":
                torch.cuda.synchronize()
            begin = time.perf_counter()
            steps[name]()
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - begin)
    return {m: statistics.median(v) for m, v in seconds.items()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--repeats", type=int, default=1, help="round-robin runs per method (median reported)"
    )
    parser.add_argument(
        "--step-rounds",
        type=int,
        default=30,
        help="rounds of the in-process interleaved step timing (step_speed_ratio); 0 skips it",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="lora_speed_"))
    data = write_data(root / "data", 4, args.size, 0)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in METHODS}
    for repeat in range(args.repeats):
        for method in METHODS:
            runs[method].append(measure(method, args, data, root / f"r{repeat}"))
    medians = ("steps_per_second", "loop_growth_bytes", "loop_peak_bytes", "process_peak_bytes")
    results = {
        m: {**r[0], **{k: statistics.median(x[k] for x in r) for k in medians}} for m, r in runs.items()
    }
    plain = results["plain"]
    report: dict[str, Any] = {
        "benchmark": "lora_speed",
        "model": args.model,
        "rank": args.rank,
        "steps": args.steps,
        "batch": args.batch,
        "device": "cuda" if _cuda() else "cpu",
    }
    for method, r in results.items():
        report[method] = {
            "steps_per_second": round(r["steps_per_second"], 3),
            "loop_memory_mb": round(r["loop_growth_bytes"] / 2**20, 1),
            "loop_peak_memory_mb": round(r["loop_peak_bytes"] / 2**20, 1),
            "process_peak_memory_mb": round(r["process_peak_bytes"] / 2**20, 1),
            "trainable_params": r["trainable_params"],
            "frozen_params": r["frozen_params"],
            "optimizer_state_numel": r["optimizer_state_numel"],
            "speed_ratio": round(r["steps_per_second"] / plain["steps_per_second"], 3),
            "peak_memory_ratio": round(r["loop_growth_bytes"] / plain["loop_growth_bytes"], 3),
            "loop_peak_memory_ratio": round(r["loop_peak_bytes"] / plain["loop_peak_bytes"], 3),
            "process_peak_memory_ratio": round(r["process_peak_bytes"] / plain["process_peak_bytes"], 3),
        }
    if args.step_rounds:
        step_seconds = interleaved_step_seconds(args, data, root)
        for method in METHODS:
            report[method]["step_ms"] = round(step_seconds[method] * 1000, 2)
            report[method]["step_speed_ratio"] = round(step_seconds["plain"] / step_seconds[method], 3)
        report["step_control_ratio"] = round(step_seconds["plain"] / step_seconds[CONTROL], 3)
        report["step_speed_ratio"] = {m: report[m]["step_speed_ratio"] for m in ("blora", "b4m")}
    report["speed_ratio"] = {m: report[m]["speed_ratio"] for m in ("blora", "b4m")}
    report["peak_memory_ratio"] = {m: report[m]["peak_memory_ratio"] for m in ("blora", "b4m")}
    report["trainable_params"] = {m: report[m]["trainable_params"] for m in METHODS}
    if args.repeats > 1:
        report["repeats"] = args.repeats
        report["runs"] = {m: [round(x["steps_per_second"], 3) for x in r] for m, r in runs.items()}
        report["loop_memory_runs_mb"] = {
            m: [round(x["loop_growth_bytes"] / 2**20, 1) for x in r] for m, r in runs.items()
        }
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return report


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
