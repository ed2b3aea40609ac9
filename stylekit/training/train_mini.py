"""Train the bundled ``mini`` model from scratch on the synthetic style world.

    accelerate launch -m stylekit.training.train_mini --output_dir stylekit/assets/mini \\
        --checkpoint_dir runs/mini --stage all --seed 0

Stage ``vae`` trains the ``AutoencoderKL`` (L1 + MSE + a small KL) and writes ``OUTPUT_DIR/vae`` (fp16
safetensors); stage ``unet`` freezes that VAE and trains the UNet and the CLIP text encoder jointly (DDPM,
epsilon, SD betas, min-SNR weighting, caption dropout, EMA) and writes the rest of the diffusers folder
(``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) plus the model card
``README.md`` and sample grids. ``all`` runs both. Training batches are rendered on the fly from the train
part of every world split (``docs/world.md``), as a pure function of ``(seed, stage, step)``, so a run
resumed with ``--resume_from_checkpoint latest`` reproduces an uninterrupted one. See ``docs/mini.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stylekit.data import SPLITS
from stylekit.files import atomic_path, write_json_atomic
from stylekit.models import dtype_kwarg

from .architecture import (
    MiniArchitecture,
    build_inference_scheduler,
    build_noise_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
    count_parameters,
    fold_latent_normalization,
)
from .checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from .data import STAGE_IDS, build_latent_pool, pool_rows, step_rng, world_batch
from .ema import EMA

STAGES = ("vae", "unet", "all")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainMiniConfig:
    """Every setting of a mini training run (validated on construction; see ``--help``)."""

    output_dir: str
    checkpoint_dir: str | None = None
    stage: str = "all"
    seed: int = 0
    num_threads: int = 1
    splits: tuple[str, ...] = ("content_style", "style", "factor")
    arch: MiniArchitecture = field(default_factory=MiniArchitecture)
    # VAE stage
    vae_steps: int = 4000
    vae_batch_size: int = 16
    vae_lr: float = 1e-3
    vae_l1_weight: float = 1.0
    vae_mse_weight: float = 1.0
    vae_kl_weight: float = 1e-6
    vae_precision: str = "bf16"
    vae_crop_size: int = 32
    # UNet + text encoder stage
    unet_steps: int = 2000
    unet_batch_size: int = 32
    unet_lr: float = 1e-3
    text_lr: float = 1e-3
    caption_dropout: float = 0.1
    unet_pool_size: int = 12288
    snr_gamma: float = 5.0
    noise_offset: float = 0.1
    unet_precision: str = "fp32"
    # both stages
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.999
    checkpointing_steps: int = 250
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str | None = None
    log_every: int = 25
    report_to: str = "none"
    eval_images: int = 512
    sample_steps: int = 25
    sample_guidance: float = 4.0
    write_card: bool = True

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir: expected a folder path, got ''")
        if self.stage not in STAGES:
            raise ValueError(f"stage: expected one of {STAGES}, got {self.stage!r}")
        unknown = [s for s in self.splits if s not in SPLITS]
        if unknown:
            raise ValueError(f"splits: unknown split(s) {unknown}; expected names from {sorted(SPLITS)}")
        self.splits = tuple(self.splits)
        positive_ints = (
            "num_threads",
            "vae_steps",
            "vae_batch_size",
            "unet_steps",
            "unet_batch_size",
            "unet_pool_size",
            "checkpointing_steps",
            "checkpoints_total_limit",
            "log_every",
            "eval_images",
            "sample_steps",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("vae_lr", "unet_lr", "text_lr", "max_grad_norm", "sample_guidance"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}: expected a number > 0, got {value!r}")
        for name in (
            "vae_l1_weight",
            "vae_mse_weight",
            "vae_kl_weight",
            "snr_gamma",
            "weight_decay",
            "noise_offset",
        ):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        crop = self.vae_crop_size
        if isinstance(crop, bool) or not isinstance(crop, int) or crop < 0 or crop > self.arch.image_size:
            raise ValueError(
                f"vae_crop_size: expected 0 (whole images) or 1..{self.arch.image_size}, got {crop!r}"
            )
        if crop % self.arch.vae_factor:
            raise ValueError(f"vae_crop_size: expected a multiple of the VAE factor {self.arch.vae_factor}")
        if self.vae_l1_weight + self.vae_mse_weight <= 0:
            raise ValueError("vae_l1_weight / vae_mse_weight: at least one must be > 0")
        for name in ("caption_dropout", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}: expected a number in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")
        if (
            isinstance(self.warmup_steps, bool)
            or not isinstance(self.warmup_steps, int)
            or self.warmup_steps < 0
        ):
            raise ValueError(f"warmup_steps: expected an integer >= 0, got {self.warmup_steps!r}")
        for name in ("vae_precision", "unet_precision"):
            if getattr(self, name) not in PRECISIONS:
                raise ValueError(f"{name}: expected one of {PRECISIONS}, got {getattr(self, name)!r}")
        if self.report_to not in ("none", "tensorboard", "all"):
            raise ValueError(f"report_to: expected 'none', 'tensorboard' or 'all', got {self.report_to!r}")
        if self.checkpoint_dir is None:
            self.checkpoint_dir = str(Path(self.output_dir) / "checkpoints")

    def stage_dir(self, stage: str) -> Path:
        """Where the checkpoints and logs of ``stage`` go."""
        return Path(self.checkpoint_dir) / stage

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of every setting."""
        out = asdict(self)
        out["arch"] = self.arch.to_dict()
        out["splits"] = list(self.splits)
        return out

    def stage_signature(self, stage: str) -> dict[str, Any]:
        """The settings that must not change when a run of ``stage`` is resumed."""
        keys = [
            "seed",
            "splits",
            "warmup_steps",
            "min_lr_ratio",
            "weight_decay",
            "max_grad_norm",
            "ema_decay",
        ]
        keys += [f.name for f in fields(self) if f.name.startswith(stage + "_")]
        if stage == "unet":
            keys += ["text_lr", "caption_dropout", "snr_gamma", "noise_offset"]
        data = self.to_dict()
        return {"arch": data["arch"], **{k: data[k] for k in sorted(keys)}}


# ------------------------------------------------------------------------------------------------ helpers
def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up, then cosine down to ``min_ratio``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast(device: torch.device, precision: str):
    """bf16 autocast (fp32 master weights) for ``precision="bf16"``, else a no-op context."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def torch_generator(seed: int, stage: str, step: int, process_index: int) -> torch.Generator:
    """The torch generator of ``step`` on one process (noise, timesteps, posterior samples)."""
    value = np.random.default_rng([int(seed), STAGE_IDS[stage], int(step), 1000 + process_index]).integers(
        2**62
    )
    return torch.Generator().manual_seed(int(value))


def _save_component(module: Any, target: Path) -> None:
    """``save_pretrained`` a fp16 copy of ``module`` to ``target`` atomically (safetensors)."""
    import copy

    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    try:
        with atomic_path(target, folder=True) as temp:
            if isinstance(module, torch.nn.Module):
                diffusers_logging.set_verbosity_error()  # the fp16 cast is deliberate: no "keep in fp32" warning
                copy.deepcopy(module).to(torch.float16).save_pretrained(temp, safe_serialization=True)
            else:
                module.save_pretrained(temp)
    finally:
        diffusers_logging.set_verbosity(verbosity)


class _Running:
    """Running means of logged values over the last logging window (JSON state for resume)."""

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        state = state or {}
        self.sums: dict[str, float] = dict(state.get("sums", {}))
        self.count: int = int(state.get("count", 0))
        self.history: list[dict[str, float]] = list(state.get("history", []))

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def flush(self, step: int) -> dict[str, float]:
        means = {k: v / max(1, self.count) for k, v in self.sums.items()}
        self.history.append({"step": step, **{k: round(v, 6) for k, v in means.items()}})
        self.sums, self.count = {}, 0
        return means

    def state(self) -> dict[str, Any]:
        return {"sums": self.sums, "count": self.count, "history": self.history}


class _VAELoss(torch.nn.Module):
    """Wraps the VAE so one forward (DDP-friendly) returns the reconstruction and the KL."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dist = self.vae.encode(pixels).latent_dist
        latents = dist.mean + dist.std * eps
        return self.vae.decode(latents).sample, dist.kl()


class _Denoiser(torch.nn.Module):
    """UNet + text encoder as one module: ``(noisy latents, timesteps, token ids) -> predicted noise``."""

    def __init__(self, unet: Any, text_encoder: Any) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, input_ids: torch.Tensor
    ) -> torch.Tensor:
        states = self.text_encoder(input_ids)[0]
        return self.unet(latents, timesteps, encoder_hidden_states=states).sample


# ------------------------------------------------------------------------------------------------- loops
def _run_stage(
    config: TrainMiniConfig,
    accelerator: Any,
    stage: str,
    modules: dict[str, torch.nn.Module],
    trainer: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Any,
    total_steps: int,
    depends_on: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The shared loop: resume, per-step LR, optimisation, EMA, logging, checkpoints.

    ``depends_on`` (JSON) joins the stage's settings in the signature a resumed run must match.

    Returns:
        The run state: ``{"wall_s", "history", "final", ...}`` with EMA weights copied into ``modules``.
    """
    from accelerate.logging import get_logger
    from tqdm.auto import tqdm

    logger = get_logger(__name__)
    stage_dir = config.stage_dir(stage)
    emas = {name: EMA(module, config.ema_decay) for name, module in modules.items()}
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    start, wall, running = 0, 0.0, _Running()
    signature = dict(config.stage_signature(stage), **(depends_on or {}))
    resume = resolve_checkpoint(stage_dir, config.resume_from_checkpoint)
    if resume is not None:
        saved = load_checkpoint(resume)
        if saved["state"].get("signature") != signature:
            raise ValueError(
                f"--resume_from_checkpoint: {resume} was written with other {stage} settings (or another VAE); "
                "resume with the same settings or start a new --checkpoint_dir"
            )
        for name, module in modules.items():
            module.load_state_dict(saved["modules"][name])
            emas[name].load_state_dict(saved["ema"][name])
        optimizer.load_state_dict(saved["optimizer"])
        start, wall = int(saved["state"]["step"]), float(saved["state"]["wall_s"])
        running = _Running(saved["state"]["running"])
        logger.info(f"{stage}: resumed from {resume} at step {start}", main_process_only=True)
    trainer, optimizer = accelerator.prepare(trainer, optimizer)
    progress = tqdm(
        range(start, total_steps),
        initial=start,
        total=total_steps,
        desc=f"mini {stage}",
        disable=not accelerator.is_local_main_process,
    )
    tic = time.perf_counter()
    for step in progress:
        factor = lr_factor(step, total_steps, config.warmup_steps, config.min_lr_ratio)
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * factor
        trainer.train()
        loss, values = step_fn(trainer, step)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            values["grad_norm"] = float(
                accelerator.clip_grad_norm_(trainer.parameters(), config.max_grad_norm)
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for name, module in modules.items():
            emas[name].update(module, step + 1)
        running.add(values)
        done = step + 1
        if done % config.log_every == 0 or done == total_steps:
            means = running.flush(done)
            means["lr"] = base_lrs[0] * factor
            accelerator.log({f"{stage}/{k}": v for k, v in means.items()}, step=done)
            progress.set_postfix({k: f"{v:.4g}" for k, v in means.items() if k != "grad_norm"})
            logger.info(f"{stage} step {done}: " + json.dumps({k: round(v, 5) for k, v in means.items()}))
        if done % config.checkpointing_steps == 0 or done == total_steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                state = {
                    "signature": signature,
                    "wall_s": wall + time.perf_counter() - tic,
                    "running": running.state(),
                }
                save_checkpoint(
                    stage_dir,
                    done,
                    {name: m.state_dict() for name, m in modules.items()},
                    {name: e.state_dict() for name, e in emas.items()},
                    optimizer.state_dict(),
                    state,
                    keep=config.checkpoints_total_limit,
                )
            accelerator.wait_for_everyone()
    progress.close()
    wall += time.perf_counter() - tic
    for name, module in modules.items():
        emas[name].copy_to(module)
    history = running.history
    return {"wall_s": round(wall, 1), "history": history, "final": history[-1] if history else {}}


def train_vae(config: TrainMiniConfig, accelerator: Any) -> dict[str, Any]:
    """Stage 1: train the VAE and write ``OUTPUT_DIR/vae`` (fp16). Returns the stage summary."""
    from diffusers import AutoencoderKL

    from .evaluate import evaluate_vae, reconstruction_grid

    started = time.perf_counter()
    arch = config.arch
    torch.manual_seed(config.seed)
    vae = build_vae(arch)
    trainer = _VAELoss(vae)
    optimizer = torch.optim.AdamW(
        vae.parameters(), lr=config.vae_lr, betas=(0.9, 0.99), weight_decay=config.weight_decay
    )
    rank, world = accelerator.process_index, accelerator.num_processes

    def step_fn(model: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = world_batch(
            config.seed, "vae", step, config.vae_batch_size, arch.image_size, config.splits, 0.0, rank, world
        )
        pixels = batch.pixels
        gen = torch_generator(config.seed, "vae", step, rank)
        if config.vae_crop_size:
            crop = config.vae_crop_size
            corners = torch.randint(0, arch.image_size - crop + 1, (len(pixels), 2), generator=gen).tolist()
            pixels = torch.stack(
                [p[:, y : y + crop, x : x + crop] for p, (y, x) in zip(pixels, corners, strict=True)]
            )
        pixels = pixels.to(accelerator.device)
        cells = pixels.shape[-1] // arch.vae_factor
        latent_shape = (len(pixels), arch.latent_channels, cells, cells)
        eps = torch.randn(latent_shape, generator=gen).to(accelerator.device)
        with autocast(accelerator.device, config.vae_precision):
            recon, kl = model(pixels, eps)
        err = recon.float() - pixels
        l1, mse = err.abs().mean(), err.pow(2).mean()
        kl = kl.float().mean() / pixels[0].numel()
        loss = config.vae_l1_weight * l1 + config.vae_mse_weight * mse + config.vae_kl_weight * kl
        values = {"loss": loss, "l1": l1, "mse": mse, "kl": kl}
        values = {k: float(v.detach()) for k, v in values.items()}
        values["psnr"] = 10 * math.log10(4.0 / max(values["mse"], 1e-12))
        return loss, values

    run = _run_stage(config, accelerator, "vae", {"vae": vae}, trainer, optimizer, step_fn, config.vae_steps)
    summary: dict[str, Any] = {"stage": "vae", "steps": config.vae_steps, **run}
    if accelerator.is_main_process:
        vae.eval()
        mean, std = _latent_stats(vae, config)
        summary["latent_stats_raw"] = {"mean": mean.tolist(), "std": std.tolist()}
        fold_latent_normalization(vae, mean, std)
        check_mean, check_std = _latent_stats(vae, config)
        summary["latent_stats"] = {"mean": check_mean.tolist(), "std": check_std.tolist()}
        out = Path(config.output_dir)
        _save_component(vae, out / "vae")
        shipped = AutoencoderKL.from_pretrained(out / "vae", **{dtype_kwarg(): torch.float32}).eval()
        summary["params"] = count_parameters(shipped)
        summary["scaling_factor"] = shipped.config.scaling_factor
        summary["eval_heldout"] = evaluate_vae(shipped, n=config.eval_images, size=arch.image_size)
        summary["eval_train_dist"] = evaluate_vae(
            shipped, n=config.eval_images, seed=4321, size=arch.image_size, split=None, part="train"
        )
        reconstruction_grid(shipped).save(out / "vae_reconstructions.png")
        summary["total_s"] = round(time.perf_counter() - started, 1)
        write_json_atomic(Path(config.checkpoint_dir) / "summary-vae.json", summary)
    accelerator.wait_for_everyone()
    return summary


@torch.no_grad()
def _latent_stats(vae: Any, config: TrainMiniConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std ``(C,)`` of the posterior means of ``max(eval_images, 64)`` training images."""
    n = max(config.eval_images, 64)
    batch = world_batch(config.seed, "eval", 0, n, config.arch.image_size, config.splits)
    param = next(vae.parameters())
    latents = torch.cat(
        [vae.encode(chunk.to(param.device)).latent_dist.mean.float() for chunk in batch.pixels.split(64)]
    )
    return latents.mean(dim=(0, 2, 3)).cpu(), latents.std(dim=(0, 2, 3)).cpu()


def train_unet(config: TrainMiniConfig, accelerator: Any) -> dict[str, Any]:
    """Stage 2: train UNet + text encoder on latents of the frozen ``OUTPUT_DIR/vae`` and write the full
    diffusers folder. Returns the stage summary."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline

    from stylekit.models import model_fingerprint

    from .evaluate import held_out_captions, sample_grid

    started = time.perf_counter()
    arch = config.arch
    out = Path(config.output_dir)
    if not (out / "vae" / "config.json").is_file():
        raise FileNotFoundError(f"--stage unet needs a trained VAE in {out / 'vae'}; run --stage vae first")
    vae = (
        AutoencoderKL.from_pretrained(out / "vae", **{dtype_kwarg(): torch.float32})
        .to(accelerator.device)
        .eval()
    )
    vae.requires_grad_(False)
    scaling = float(vae.config.scaling_factor)
    torch.manual_seed(config.seed + 1)
    tokenizer = build_tokenizer(arch)
    unet = build_unet(arch)
    text_encoder = build_text_encoder(arch, tokenizer)
    trainer = _Denoiser(unet, text_encoder)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": config.unet_lr},
            {"params": list(text_encoder.parameters()), "lr": config.text_lr},
        ],
        betas=(0.9, 0.99),
        weight_decay=config.weight_decay,
    )
    noise_scheduler = build_noise_scheduler()
    alphas = noise_scheduler.alphas_cumprod
    snr_all = alphas / (1 - alphas)
    rank, world = accelerator.process_index, accelerator.num_processes

    pool = build_latent_pool(
        vae,
        config.seed,
        config.unet_pool_size,
        arch.image_size,
        config.splits,
        progress=accelerator.is_main_process,
    )
    if config.unet_batch_size % world:
        raise ValueError(
            f"unet_batch_size={config.unet_batch_size} must be a multiple of the {world} processes"
        )

    def step_fn(model: torch.nn.Module, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        rows = pool_rows(config.seed, step, config.unet_batch_size, len(pool))
        dropped = step_rng(config.seed, "unet", step).random(len(rows)) < config.caption_dropout
        mine = range(rank, len(rows), world)
        index = torch.from_numpy(rows[list(mine)])
        captions = ["" if dropped[i] else pool.captions[rows[i]] for i in mine]
        gen = torch_generator(config.seed, "unet", step, rank)
        b = len(captions)
        eps_post = torch.randn(pool.mean[index].shape, generator=gen)
        latents = ((pool.mean[index] + pool.std[index] * eps_post) * scaling).to(accelerator.device)
        noise = torch.randn(latents.shape, generator=gen)
        if config.noise_offset:
            # offset noise: on 16 x 16 latents the mean colour survives SD's last timestep (its noise averages
            # out), so without it the model copies the colour from the initial noise instead of the caption
            noise = noise + config.noise_offset * torch.randn((b, latents.shape[1], 1, 1), generator=gen)
        noise = noise.to(accelerator.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (b,), generator=gen)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps.to(accelerator.device))
        ids = tokenizer(
            captions, padding="max_length", max_length=arch.max_tokens, truncation=True, return_tensors="pt"
        ).input_ids.to(accelerator.device)
        with autocast(accelerator.device, config.unet_precision):
            pred = model(noisy, timesteps.to(accelerator.device), ids)
        per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        snr = snr_all[timesteps].to(per_sample.device)
        weights = (
            torch.clamp(snr, max=config.snr_gamma) / snr if config.snr_gamma > 0 else torch.ones_like(snr)
        )
        loss = (per_sample * weights).mean()
        return loss, {"loss": float(loss.detach()), "mse": float(per_sample.detach().mean())}

    modules = {"unet": unet, "text_encoder": text_encoder}
    run = _run_stage(
        config,
        accelerator,
        "unet",
        modules,
        trainer,
        optimizer,
        step_fn,
        config.unet_steps,
        depends_on={"vae": model_fingerprint(vae)},
    )
    summary: dict[str, Any] = {"stage": "unet", "steps": config.unet_steps, **run}
    if accelerator.is_main_process:
        unet.eval()
        text_encoder.eval()
        summary["params"] = {"unet": count_parameters(unet), "text_encoder": count_parameters(text_encoder)}
        for name, module in [("unet", unet), ("text_encoder", text_encoder), ("tokenizer", tokenizer)]:
            _save_component(module, out / name)
        _save_component(build_inference_scheduler(), out / "scheduler")
        _write_model_index(out)
        pipe = StableDiffusionPipeline.from_pretrained(out, **{dtype_kwarg(): torch.float32})
        pipe.set_progress_bar_config(disable=True)
        captions = held_out_captions(16)
        summary["sample_captions"] = captions
        sample_grid(pipe, captions, steps=config.sample_steps, guidance_scale=config.sample_guidance).save(
            out / "samples_heldout.png"
        )
        summary["total_s"] = round(time.perf_counter() - started, 1)
        write_json_atomic(Path(config.checkpoint_dir) / "summary-unet.json", summary)
    accelerator.wait_for_everyone()
    return summary


def _write_model_index(out: Path) -> None:
    """``model_index.json`` for ``StableDiffusionPipeline`` (no safety checker / feature extractor)."""
    import diffusers

    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    write_json_atomic(out / "model_index.json", index)


# --------------------------------------------------------------------------------------------------- CLI
def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    return values


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (every ``TrainMiniConfig`` field plus the architecture sizes)."""
    defaults = TrainMiniConfig(output_dir="-")
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m stylekit.training.train_mini",
        description="Train the bundled mini model (VAE, then UNet + text encoder) on the synthetic world.",
    )
    parser.add_argument("--output_dir", required=True, help="the diffusers folder to write")
    parser.add_argument(
        "--checkpoint_dir", default=None, help="checkpoints/logs (default OUTPUT_DIR/checkpoints)"
    )
    parser.add_argument("--stage", choices=STAGES, default="all")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    parser.add_argument(
        "--splits", default=",".join(defaults.splits), help="train on the train part of these"
    )
    for f in fields(TrainMiniConfig):
        if f.name in ("output_dir", "checkpoint_dir", "stage", "resume_from_checkpoint", "splits", "arch"):
            continue
        value = getattr(defaults, f.name)
        if isinstance(value, bool):
            parser.add_argument(
                f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value
            )
        else:
            parser.add_argument(f"--{f.name}", type=type(value), default=value, help=f"(default {value})")
    arch = MiniArchitecture()
    for f in fields(MiniArchitecture):
        value = getattr(arch, f.name)
        if isinstance(value, tuple):
            parser.add_argument(f"--{f.name}", type=_ints, default=value, help=f"(default {value})")
        elif isinstance(value, bool):
            parser.add_argument(
                f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"), default=value
            )
        else:
            parser.add_argument(f"--{f.name}", type=type(value), default=value, help=f"(default {value})")
    return parser


def parse_config(argv: Sequence[str] | None = None) -> TrainMiniConfig:
    """Parse command-line arguments into a validated :class:`TrainMiniConfig`."""
    args = vars(build_parser().parse_args(argv))
    arch = MiniArchitecture(**{f.name: args.pop(f.name) for f in fields(MiniArchitecture)})
    args["splits"] = tuple(s.strip() for s in args["splits"].split(",") if s.strip())
    return TrainMiniConfig(arch=arch, **args)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the stages the config asks for. Returns ``{stage: summary}``."""
    try:
        config = parse_config(argv)
    except ValueError as error:
        print(f"train_mini: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    return run(config)


def run(config: TrainMiniConfig) -> dict[str, Any]:
    """Train per ``config`` (see the module docstring); writes ``config.output_dir``."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from .card import write_model_card

    torch.set_num_threads(config.num_threads)
    accelerator = Accelerator(
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.checkpoint_dir, logging_dir=config.checkpoint_dir
        ),
    )
    if config.report_to != "none":
        accelerator.init_trackers("mini", config={k: str(v) for k, v in config.to_dict().items()})
    Path(config.output_dir).mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        write_json_atomic(Path(config.checkpoint_dir) / f"config-{config.stage}.json", config.to_dict())
    results: dict[str, Any] = {}
    if config.stage in ("vae", "all"):
        results["vae"] = train_vae(config, accelerator)
    if config.stage in ("unet", "all"):
        results["unet"] = train_unet(config, accelerator)
    if accelerator.is_main_process and config.write_card:
        write_model_card(config)
    accelerator.end_training()
    return results


if __name__ == "__main__":
    import logging

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    main()
