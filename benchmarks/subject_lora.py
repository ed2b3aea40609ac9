"""Does a subject LoRA learn the subject's outline? Attention-only vs attention + ResNet convolutions; one JSON line.

Usage: ``python benchmarks/subject_lora.py [--model mini] [--train-steps 2000] [--lr 1e-3] [--rank 8] [--n 32]
[--steps 20] [--guidance 4.0] [--seed 0] [--threads 1]``

The subject of ``benchmarks/lora_quality.py`` (a lone hexagon in style A, 4 images, prompt ``"a [v] on paper"``)
is learned by one peft LoRA on the frozen UNet in a plain DreamBooth loop (batch 2, epsilon MSE, no prior
preservation), twice: on the attention projections only (``to_q/to_k/to_v/to_out.0`` of every attention
block: what the split methods train) and on those plus every ResNet ``conv1``/``conv2`` (LoCon-style).
``--n`` images are generated from the prompt (fixed seeds) with each adapter and with none (``base``);
``content_acc`` = share the validated subject detector of ``lora_quality`` flags as the subject,
``style_score`` as there (0 = the subject images' style A). ``subject_detector`` reports the detector's check
(``lora_quality.checked_detector``).
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

import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lora_quality import PROMPT, checked_detector, generate, measure, world_sets  # noqa: E402

ATTENTION = (".to_q", ".to_k", ".to_v", ".to_out.0")


def lora_targets(unet: torch.nn.Module, convs: bool) -> list[str]:
    """Module names: the attention projections, and with ``convs`` every ResNet ``conv1``/``conv2``."""
    names = [
        n
        for n, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and n.endswith(ATTENTION) and (".attn1." in n or ".attn2." in n)
    ]
    if convs:
        names += [
            n
            for n, m in unet.named_modules()
            if isinstance(m, torch.nn.Conv2d) and ".resnets." in n and n.endswith((".conv1", ".conv2"))
        ]
    return names


def train_subject_lora(pipe: Any, images: Any, targets: list[str], args: argparse.Namespace) -> int:
    """Inject a LoRA ``"subject"`` on ``targets`` and fit it to ``images`` (uint8 ``(N, H, W, 3)``);
    returns its parameter count. Deterministic by ``--seed``."""
    from diffusers import DDPMScheduler
    from peft import LoraConfig, inject_adapter_in_model

    unet = pipe.unet
    config = LoraConfig(
        r=args.rank, lora_alpha=args.rank, target_modules=targets, init_lora_weights="gaussian"
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        inject_adapter_in_model(config, unet, adapter_name="subject")
    params = [p for n, p in unet.named_parameters() if "lora_" in n]
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        posterior = pipe.vae.encode(pixels).latent_dist
        ids = pipe.tokenizer(
            [PROMPT] * 2,
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            return_tensors="pt",
        ).input_ids
        text = pipe.text_encoder(ids)[0]
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    optimizer = torch.optim.AdamW(params, lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)
    unet.train()
    for _ in range(args.train_steps):
        rows = torch.randint(0, len(pixels), (2,), generator=generator)
        eps = torch.randn(posterior.mean[rows].shape, generator=generator)
        latents = (posterior.mean[rows] + posterior.std[rows] * eps) * pipe.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (2,), generator=generator)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=text).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unet.eval()
    for p in params:
        p.requires_grad_(False)
    return sum(p.numel() for p in params)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--train-steps", type=int, default=2000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--detector-n", type=int, default=600)
    parser.add_argument("--detector-val", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from stylekit.metrics import train_probe
    from stylekit.models import load_pipeline

    start = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "subject_lora", "model": args.model, "prompt": PROMPT}
    report.update({k: getattr(args, k) for k in ("train_steps", "lr", "rank", "n")})

    def fresh_pipe() -> Any:  # the untrained weights, for the base row and for every LoRA
        pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    pipe = fresh_pipe()
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    with tempfile.TemporaryDirectory(prefix="subject_lora_") as work:
        sets = world_sets(args.seed, 4, size, Path(work) / "data")
    detector, report["subject_detector"] = checked_detector(sets, args, pipe.vae, size)
    probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    rows: dict[str, Any] = {"base": measure(generate(pipe, None, args), sets, probe, detector)}
    for name, convs in (("attention", False), ("attention_convs", True)):
        pipe = fresh_pipe()
        t0 = time.perf_counter()
        targets = lora_targets(pipe.unet, convs)
        row: dict[str, Any] = {
            "modules": len(targets),
            "params": train_subject_lora(pipe, sets["subject"], targets, args),
        }
        row["train_seconds"] = round(time.perf_counter() - t0, 1)
        row.update(measure(generate(pipe, None, args), sets, probe, detector))
        rows[name] = row
        print(f"{name}: {row}", file=sys.stderr, flush=True)
    report["rows"] = rows
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
