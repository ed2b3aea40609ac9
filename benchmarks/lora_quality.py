"""Content/style separation of split LoRAs (B-LoRA, Break-for-Make) on mini and the world; one JSON line.

Usage: ``python benchmarks/lora_quality.py [--model mini] [--methods blora,b4m] [--train-steps 200] [--rank 8]
[--lr 1e-2] [--n 16] [--steps 20] [--guidance 4.0] [--probe-steps 300] [--seed 0] [--work DIR]``

1. A *subject* (one shape, lone object, one style A, ``--n-train`` images) and a *style* (a composite style B
   from the held-out part of the world's ``style`` split, so mini never saw it; varied contents) are rendered.
2. Per method, a content adapter is trained on the subject and a style adapter on the style, both with the
   prompt ``"a [v] on paper"`` (B-LoRA's ``"a [v]"`` plus the world's "on paper": mini only knows world
   captions): ``blora`` trains one B-LoRA per image set and keeps its content / style half;
   ``b4m`` runs the content break (aux set: other styles), the style break (aux set: other contents) and the
   make stage (fused adapter = the composition).
3. ``--n`` images are generated from the same prompt (fixed seeds) with: the composition, the content adapter
   only, the style adapter only.
4. Measured: ``composed_content_acc`` / ``style_only_content_acc`` = share of images whose first shape the
   world content probe reads as the subject's (chance 0.1); ``composed_style_score`` /
   ``content_only_style_score`` = ``stylekit.metrics.style_score(output, subject image, style image)``
   (0 = the subject image's style A, 1 = the style image's style B), mean over images and references.
Targets: composition shows both; content only has style score <= 0.3; style only does not carry the subject.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from stylekit.adapters.lora_block_probe import PROMPT, world_sets
from stylekit.adapters.train_lora import TrainLoRAConfig, run
from stylekit.lora_style import LoRAStyle
from stylekit.metrics import style_score_components, train_probe
from stylekit.models import load_pipeline


def train(method: str, sets: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Path]:
    """Adapters of one method: ``{"content": dir, "style": dir, "composed": [dirs]}``."""
    dirs = sets["dirs"]
    common = dict(
        pretrained_model_name_or_path=args.model,
        instance_prompt=PROMPT,
        rank=args.rank,
        max_train_steps=args.train_steps,
        learning_rate=args.lr,
        checkpointing_steps=0,
        seed=args.seed,
        train_batch_size=2,
    )
    if method == "blora":
        run(
            TrainLoRAConfig(
                method="blora", instance_data_dir=str(dirs["subject"]), output_dir=str(root / "c"), **common
            )
        )
        run(
            TrainLoRAConfig(
                method="blora", instance_data_dir=str(dirs["style"]), output_dir=str(root / "s"), **common
            )
        )
        return {"content": root / "c" / "content", "style": root / "s" / "style"}
    out = root / "b4m"
    b4m = dict(method="b4m", output_dir=str(out), learning_rate_2=args.lr / 10, **common)
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["subject"]),
            b4m_role="content",
            aux_data_dir=[str(dirs["other_styles"])],
            aux_prompt=["a shape on paper"],
            **b4m,
        )
    )
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["style"]),
            b4m_role="style",
            aux_data_dir=[str(dirs["other_contents"])],
            aux_prompt=["a shape on paper"],
            **b4m,
        )
    )
    make = {**b4m, "max_train_steps": max(1, args.train_steps // 3)}
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["subject"]),
            b4m_stage="make",
            content_lora=str(out / "content"),
            style_lora=str(out / "style"),
            aux_data_dir=[str(dirs["style"])],
            aux_prompt=[PROMPT],
            **make,
        )
    )
    return {"content": out / "content", "style": out / "style", "fused": out / "fused"}


def generate(pipe: Any, lora: LoRAStyle | None, args: argparse.Namespace) -> np.ndarray:
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.n)]
    call = dict(
        num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators, output_type="np"
    )
    if lora is None:
        images = pipe([PROMPT] * args.n, **call).images
    else:
        with lora.applied(pipe):
            images = pipe([PROMPT] * args.n, **call).images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def measure(images: np.ndarray, sets: dict[str, Any], probe: Any) -> dict[str, float]:
    shape_acc = float((probe.predict(images)["shape"] == sets["shape"]).mean())
    k = len(sets["subject"])
    outs = np.repeat(images, k, axis=0)
    contents = np.tile(sets["subject"], (len(images), 1, 1, 1))
    styles = np.tile(sets["style"], (len(images), 1, 1, 1))
    score = float(style_score_components(outs, contents, styles)["style"].mean())
    return {"content_acc": round(shape_acc, 4), "style_score": round(score, 4)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--methods", default="blora,b4m")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default=None, help="folder for data and adapters (default: a temp folder)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    root = Path(args.work or tempfile.mkdtemp(prefix="lora_quality_"))
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    sets = world_sets(args.seed, args.n_train, size, root / "data")
    probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    report: dict[str, Any] = {
        "benchmark": "lora_quality",
        "model": args.model,
        "subject_shape": sets["shape"],
        "style_a": sets["style_a"],
        "style_b": sets["style_b"],
        "train_steps": args.train_steps,
        "rank": args.rank,
        "n": args.n,
    }
    report["base"] = measure(generate(pipe, None, args), sets, probe)
    methods: dict[str, Any] = {}
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.perf_counter()
        adapters = train(method, sets, args, root / method)
        composed = (
            LoRAStyle(adapters={"fused": adapters["fused"]})
            if "fused" in adapters
            else LoRAStyle(content=adapters["content"], style=adapters["style"])
        )
        comp = measure(generate(pipe, composed, args), sets, probe)
        content_only = measure(generate(pipe, LoRAStyle(content=adapters["content"]), args), sets, probe)
        style_only = measure(generate(pipe, LoRAStyle(style=adapters["style"]), args), sets, probe)
        methods[method] = {
            "composed_content_acc": comp["content_acc"],
            "composed_style_score": comp["style_score"],
            "content_only_style_score": content_only["style_score"],
            "style_only_content_acc": style_only["content_acc"],
            "content_only_content_acc": content_only["content_acc"],
            "style_only_style_score": style_only["style_score"],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(f"{method}: {methods[method]}", file=sys.stderr, flush=True)
    report["methods"] = methods
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
