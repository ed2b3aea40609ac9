"""Train a style-token adapter (the base model frozen): ``accelerate launch -m stylekit.tokens.train``.

Each step renders world pairs (``stylekit.data.positive_pairs``, train part of the ``style`` split): a
target image of style S and, as the style reference, ANOTHER image of the same style S with different
content, so the adapter can only learn what the two share: the style. The target's caption is the text
condition; with probability ``swap_style_prob`` its style words are those of a random other style (so the
adapter learns to carry the reference's style even where the prompt says otherwise), with probability
``caption_dropout`` it is empty. The loss is the base model's noise-prediction MSE through the adapter's
decoupled cross-attention, plus the text head's regression of the reference's style code from the style
words (``style_phrase``) and ``local_from_global``'s regression of the local code from the global one.

Checkpoints (``accelerator.save_state``, atomic), ``--resume_from_checkpoint latest``, ``log.jsonl``, a
tqdm bar; the final adapter is written with ``save_pretrained`` (``config.json`` + ``adapter.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stylekit.extractors.train import RUN_CONTROL_OPTIONS


@dataclass
class TrainConfig:
    """Options of ``stylekit.tokens.train`` (every field is a ``--flag``)."""

    pretrained_model_name_or_path: str = "mini"
    extractor: str = ""  # "" = the bundled extractor; else a StyleExtractor folder
    output_dir: str = "runs/style-tokens"
    export_dir: str = ""  # "" = output_dir/adapter
    max_steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    resolution: int = 0  # 0 = the model's native resolution
    noise_offset: float = 0.0  # match the base model's training (mini with offset noise: 0.1)
    swap_style_prob: float = 0.4
    content_only_prob: float = 0.25  # caption without style words (only the object phrases)
    caption_dropout: float = 0.1
    text_code_prob: float = 0.15  # use the text head's code instead of the image's (detached) for a row
    text_loss_weight: float = 1.0
    max_loss_weight: float = 20.0  # per-sample weight min(1 / alpha_bar_t, this): 1 = plain eps MSE
    num_global_tokens: int = 4
    num_local_tokens: int = 2
    time_embedding: bool = True  # also train the zero-init style -> timestep-embedding path
    checkpointing_steps: int = 200
    checkpoints_total_limit: int = 2
    resume_from_checkpoint: str = ""
    log_every: int = 10
    max_seconds: float = 0.0  # stop (and export) after this wall time; 0 = no limit
    num_threads: int = 1  # torch CPU threads (0 = leave torch's default)
    overwrite_output_dir: bool = False  # start afresh over an output_dir holding checkpoints (deleted first)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise ValueError("max_steps, batch_size and log_every must be >= 1")
        if self.checkpointing_steps < 0 or self.checkpoints_total_limit < 0:
            raise ValueError(
                "checkpointing_steps must be >= 0 (0: only at the end), checkpoints_total_limit >= 0 (0: keep all)"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"--{f.name}: expected a finite number, got {value}")
        for name in ("learning_rate", "max_loss_weight"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name}: expected a number > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm", "noise_offset", "text_loss_weight", "max_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}: expected a number >= 0, got {getattr(self, name)}")
        if self.extractor and not Path(self.extractor).is_dir():
            raise ValueError(f"--extractor: not a folder: {self.extractor} (a saved StyleExtractor)")
        for name in ("swap_style_prob", "content_only_prob", "caption_dropout", "text_code_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name}: expected a probability in [0, 1], got {getattr(self, name)}")
        if self.swap_style_prob + self.content_only_prob + self.caption_dropout > 1.0:
            raise ValueError("swap_style_prob + content_only_prob + caption_dropout must be <= 1")


RESUME_MAY_CHANGE = RUN_CONTROL_OPTIONS | {"max_seconds", "num_threads"}
"""Options a resumed run may change; the others shape the training and must match the checkpoint's."""


def _boolean(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Flags -> ``TrainConfig``."""
    parser = argparse.ArgumentParser(prog="stylekit.tokens.train", description=__doc__.splitlines()[0])
    for f in fields(TrainConfig):
        kind = _boolean if isinstance(f.default, bool) else type(f.default)
        parser.add_argument(f"--{f.name}", type=kind, default=f.default)
    return TrainConfig(**vars(parser.parse_args(argv)))


def _load_models(config: TrainConfig) -> tuple[Any, Any]:
    from stylekit.extractors import StyleExtractor, load_default
    from stylekit.models import load_pipeline

    pipe = load_pipeline(config.pretrained_model_name_or_path, kind="text-to-image", dtype=torch.float32)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    extractor = StyleExtractor.from_pretrained(config.extractor) if config.extractor else load_default()
    extractor.requires_grad_(False).eval()
    return pipe, extractor


def world_batch(config: TrainConfig, step: int, size: int) -> dict[str, Any]:
    """The batch of ``step`` (a pure function of ``(seed, step)``): target / reference images, captions."""
    from stylekit.data import caption, positive_pairs, sample_styles, style_phrase

    from .prompts import content_prompt

    rng = np.random.default_rng([config.seed, step, 41])
    target, reference = positive_pairs(rng, config.batch_size, size, "style", "train")
    others = sample_styles(rng, config.batch_size, "style", "train")
    captions = []
    for content, style, other in zip(target.contents, target.styles, others, strict=True):
        u = rng.random()
        if u < config.caption_dropout:
            captions.append("")
        elif u < config.caption_dropout + config.swap_style_prob:
            captions.append(caption(content, other))
        elif u < config.caption_dropout + config.swap_style_prob + config.content_only_prob:
            captions.append(content_prompt(content, style))
        else:
            captions.append(caption(content, style))
    return {
        "target": target.images,
        "reference": reference.images,
        "captions": captions,
        "style_text": [style_phrase(s) for s in target.styles],
        "use_text_code": rng.random(config.batch_size) < config.text_code_prob,
        "seed": int(rng.integers(2**31)),
    }


def _lr_factor(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def weights_for(noise_scheduler: Any, timesteps: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-sample loss weights ``min(1 / alpha_bar_t, cap)`` (= the v-prediction error's weight, capped).

    Style (palette, paper texture) is decided at high noise, where the plain epsilon MSE barely weighs the
    image: ``||x0 error||^2 = (1 - alpha_bar) / alpha_bar * ||eps error||^2``. ``cap = 1`` gives the plain MSE.
    """
    alpha_bar = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    weights = (1.0 / alpha_bar).clamp(max=max(cap, 1.0))
    return weights


def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training in the current accelerate environment; returns a summary (loss, seconds, paths)."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    from stylekit.attention.conditioner import encode_latents
    from stylekit.extractors import clip_text_embeddings
    from stylekit.extractors.train import clear_earlier_run, resolve_checkpoint, run_identity, save_checkpoint
    from stylekit.tokens.adapter import StyleTokenAdapter
    from stylekit.tokens.processor import StyleTokenProcessor, TokenState, add_time_delta

    output_dir = Path(config.output_dir)
    # before any model loads: a bad resume point, other training options, a folder holding another run
    resume = resolve_checkpoint(output_dir, config.resume_from_checkpoint or None, config, RESUME_MAY_CHANGE)
    accelerator = Accelerator(step_scheduler_with_optimizer=False)
    processes, rank = accelerator.num_processes, accelerator.process_index
    if config.batch_size % processes:
        raise ValueError(
            f"--batch_size {config.batch_size}: expected a multiple of the {processes} processes"
        )
    torch.manual_seed(config.seed)
    export = Path(config.export_dir or output_dir / "adapter")
    pipe, extractor = _load_models(config)
    device = accelerator.device
    pipe.to(device)
    extractor.to(device)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    size = config.resolution or int(unet.config.sample_size) * int(pipe.vae_scale_factor)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    adapter = StyleTokenAdapter.for_unet(
        unet,
        extractor.embed_dim,
        text_encoder,
        extractor.config_hash(),
        num_global_tokens=config.num_global_tokens,
        num_local_tokens=config.num_local_tokens,
        time_embedding=config.time_embedding,
    ).to(device)
    optimizer = torch.optim.AdamW(
        adapter.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    adapter, optimizer, scheduler = accelerator.prepare(adapter, optimizer, scheduler)
    model = accelerator.unwrap_model(adapter)

    state = TokenState(scales={layer.name: 1.0 for layer in model.config.layers})
    processors = dict(unet.attn_processors)
    for layer in model.config.layers:
        to_k, to_v = model.layer_projections(layer.name)
        processors[layer.name] = StyleTokenProcessor(layer.name, processors[layer.name], to_k, to_v, state)
    unet.set_attn_processor(processors)
    state.time_scale = 1.0
    unet.time_embedding.register_forward_hook(lambda m, a, out: add_time_delta(state, out))

    start_step = 0
    if resume is None and config.overwrite_output_dir and accelerator.is_main_process:
        clear_earlier_run(output_dir)
    accelerator.wait_for_everyone()
    if resume is not None:
        accelerator.load_state(str(resume))
        start_step = int(json.loads((resume / "trainer_state.json").read_text())["step"])
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "log.jsonl"
    started = time.perf_counter()
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not accelerator.is_main_process,
        desc="style tokens",
    )
    last: dict[str, float] = {}
    step = start_step
    share = slice(rank * config.batch_size // processes, (rank + 1) * config.batch_size // processes)
    while step < config.max_steps:
        batch = world_batch(config, step, size)  # the global batch; this process trains its share of rows
        gen = torch.Generator().manual_seed(batch["seed"])
        batch = {k: v if k == "seed" else v[share] for k, v in batch.items()}
        with torch.no_grad():
            target = _pixels(batch["target"]).to(device)
            latents = encode_latents(vae, target * 2 - 1)
            out = extractor(_pixels(batch["reference"]).to(device))
            g_img, l_img = out.embedding, out.tokens.mean(dim=1)
            text_states = text_encoder(
                tokenizer(
                    batch["captions"],
                    padding="max_length",
                    max_length=tokenizer.model_max_length,
                    truncation=True,
                    return_tensors="pt",
                ).input_ids.to(device)
            )[0]
            style_text = clip_text_embeddings(text_encoder, tokenizer, batch["style_text"])
        g_text, l_text = model.text_codes(style_text)
        l_pred = model.local_from_global(g_img)
        text_loss = (1 - (g_text * g_img).sum(-1)).mean() + F.mse_loss(l_text, l_img)
        local_loss = F.mse_loss(l_pred, l_img)
        use_text = torch.from_numpy(batch["use_text_code"]).to(device)[:, None]
        g_code = torch.where(use_text, g_text.detach(), g_img)
        l_code = torch.where(use_text, l_text.detach(), l_img)
        state.context = model.context(g_code, l_code)
        state.time_delta = model.time_delta(g_code, l_code)

        rows = config.batch_size  # drawn for the global batch, so every share matches one process's run
        noise = torch.randn((rows, *latents.shape[1:]), generator=gen)[share].to(device)
        if config.noise_offset:
            offset = torch.randn((rows, latents.shape[1], 1, 1), generator=gen)[share]
            noise = noise + config.noise_offset * offset.to(device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (rows,), generator=gen)
        timesteps = timesteps[share].to(device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        target_eps = (
            noise
            if noise_scheduler.config.prediction_type == "epsilon"
            else (noise_scheduler.get_velocity(latents, noise, timesteps))
        )
        pred = unet(noisy, timesteps, encoder_hidden_states=text_states, return_dict=False)[0]
        per_sample = ((pred.float() - target_eps.float()) ** 2).mean(dim=(1, 2, 3))
        diffusion_loss = (per_sample * weights_for(noise_scheduler, timesteps, config.max_loss_weight)).mean()
        loss = diffusion_loss + config.text_loss_weight * (text_loss + local_loss)
        accelerator.backward(loss)
        if processes > 1:  # the adapter's methods are called unwrapped, past DDP's forward: average here
            for param in adapter.parameters():
                if param.grad is not None:
                    param.grad = accelerator.reduce(param.grad, reduction="mean")
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(adapter.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update()
        parts = torch.stack([loss, diffusion_loss, text_loss, local_loss]).detach()
        if processes > 1:  # the global batch's losses, not this process's share
            parts = accelerator.reduce(parts, reduction="mean")
        last = {
            **dict(zip(("loss", "diffusion", "text", "local"), parts.tolist(), strict=True)),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        if accelerator.is_main_process and (step % config.log_every == 0 or step == config.max_steps):
            bar.set_postfix(loss=f"{last['diffusion']:.4f}", text=f"{last['text']:.3f}")
            with log_path.open("a") as f:
                f.write(json.dumps({"step": step, **last}) + "\n")
        out_of_time = bool(config.max_seconds) and time.perf_counter() - started > config.max_seconds
        if config.max_seconds and processes > 1:  # one decision for all: a process stopping alone would hang
            flag = torch.tensor([float(out_of_time)], device=device)
            out_of_time = bool(accelerator.reduce(flag, reduction="sum").item() > 0)
        periodic = config.checkpointing_steps and step % config.checkpointing_steps == 0
        if periodic or step == config.max_steps or out_of_time:
            identity = run_identity(config, RESUME_MAY_CHANGE)
            save_checkpoint(accelerator, output_dir, step, config.checkpoints_total_limit, identity)
        if out_of_time:
            break
    bar.close()
    seconds = time.perf_counter() - started
    state.context = state.time_delta = None
    if accelerator.is_main_process:
        model.save_pretrained(
            export, metadata={"base_model": config.pretrained_model_name_or_path, "steps": str(step)}
        )
        summary = {"seconds": round(seconds, 1), "steps": step, "config": asdict(config), **last}
        (export / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"seconds": round(seconds, 1), "steps": step, "export_dir": str(export), **last}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``accelerate launch -m stylekit.tokens.train`` (and ``python -m``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_args(argv)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
