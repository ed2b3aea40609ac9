"""Train an AnimateDiff motion adapter: ``accelerate launch -m stylekit.adapters.train_motion [--flags]``.

Only the motion modules train: the image UNet (inside a ``UNetMotionModel``), the VAE and the text encoder
are frozen (``UNetMotionModel.freeze_unet2d_params``). Data: clips of the synthetic world
(``--data world``; moving objects with their captions) or a folder of videos (``--data PATH``; random
clips of ``--frames`` consecutive frames, caption from ``<video>.txt`` beside it, else empty).
``--still`` trains StyleMaster's variant on still videos (one frame repeated); applied at inference with
a negative scale it pushes away from stillness and photorealism (docs/video.md).

Loss: MSE between the UNet's prediction and the scheduler's target (epsilon or v) on noised VAE latents
of whole clips. Every batch, noise and timestep is a pure function of ``(seed, step)``, so a resumed run
reproduces the uninterrupted one. Checkpoints (``checkpoint-N``: safetensors + JSON, written atomically)
every ``--checkpoint_every`` steps; ``--resume_from_checkpoint latest`` continues. Validation clips
(gif) every ``--validate_every`` steps. The result is saved in diffusers ``MotionAdapter`` format with its
full config (``save_motion_adapter``; stock ``save_motion_modules`` keeps only six config entries and
loses e.g. transformer depths), loadable with ``MotionAdapter.from_pretrained``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylekit.files import atomic_path
from stylekit.images import fit_to_size
from stylekit.training.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from stylekit.video_io import FFMPEG_SUFFIXES, GIF_SUFFIXES, read_video

ADAPTER_DIR = "motion_adapter"
# flags that shape the trained modules: a resumed run must keep them, and --init_adapter's config decides them
ARCHITECTURE_FLAGS = (
    "motion_num_attention_heads",
    "motion_transformer_layers_per_block",
    "motion_max_seq_length",
    "use_motion_mid_block",
)


@dataclass
class MotionTrainConfig:
    """Flags of ``train_motion`` (each field is ``--name``)."""

    model: str = "mini"
    output_dir: str = "runs/motion"
    data: str = "world"
    frames: int = 8
    resolution: int = 64
    batch_size: int = 2
    max_steps: int = 1000
    learning_rate: float = 1e-4
    warmup_steps: int = 50
    grad_clip: float = 1.0
    caption_dropout: float = 0.1
    still: bool = False
    max_speed: float = 0.04
    motion_num_attention_heads: int = 4
    motion_transformer_layers_per_block: int = 1
    motion_max_seq_length: int = 32
    use_motion_mid_block: bool = True
    init_adapter: str | None = None
    checkpoint_every: int = 250
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    validate_every: int = 0
    validation_prompt: str = "a red circle on plain white paper, thin outline"
    log_every: int = 10
    seed: int = 0
    threads: int = 0
    progress: bool = True
    export_dir: str | None = None
    export_fp16: bool = False  # save the exported adapter in fp16 (half the size; loads as fp32 by default)

    def __post_init__(self) -> None:
        for name in ("frames", "resolution", "batch_size", "max_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name}: expected an integer >= 1, got {getattr(self, name)}")
        if self.frames < 2 and not self.still:
            raise ValueError("--frames: motion needs at least 2 frames (or --still)")
        if self.frames > self.motion_max_seq_length:
            raise ValueError(
                f"--frames {self.frames} exceeds --motion_max_seq_length {self.motion_max_seq_length}"
            )
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"--caption_dropout: expected a value in [0, 1], got {self.caption_dropout}")
        if self.learning_rate <= 0:
            raise ValueError(f"--learning_rate: expected > 0, got {self.learning_rate}")
        if self.data != "world" and not Path(self.data).is_dir():
            raise ValueError(f"--data: expected 'world' or a folder of videos, got {self.data!r}")


def parse_args(argv: list[str] | None = None) -> MotionTrainConfig:
    parser = argparse.ArgumentParser(
        prog="stylekit.adapters.train_motion", description=__doc__.split("\n")[0]
    )
    for field in fields(MotionTrainConfig):
        default = field.default
        if isinstance(default, bool):
            parser.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = {int: int, float: float}.get(type(default), str)
            if field.name == "checkpoints_total_limit":
                kind = int
            parser.add_argument(f"--{field.name}", type=kind, default=default)
    return MotionTrainConfig(**vars(parser.parse_args(argv)))


# ------------------------------------------------------------------------------------------------- data
def _step_rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), 6, int(step)])


def world_clips(config: MotionTrainConfig, step: int) -> tuple[np.ndarray, list[str]]:
    """Batch ``step`` of world clips: uint8 ``(B, T, S, S, 3)`` and captions."""
    from stylekit.data import sample_video

    rng = _step_rng(config.seed, step)
    clips, captions = [], []
    for _ in range(config.batch_size):
        sample = sample_video(rng, max(2, config.frames), config.resolution, max_speed=config.max_speed)
        clips.append(sample.frames[: config.frames])
        captions.append(sample.caption)
    return np.stack(clips), captions


def folder_videos(folder: str | Path) -> list[Path]:
    """Video files (mp4/gif/...) and frame folders directly under ``folder``, sorted."""
    folder = Path(folder)
    found = [
        p
        for p in sorted(folder.iterdir())
        if (p.is_file() and p.suffix.lower() in FFMPEG_SUFFIXES + GIF_SUFFIXES)
        or (p.is_dir() and not p.name.startswith("."))
    ]
    if not found:
        raise ValueError(f"--data {folder}: no videos (mp4, gif, ... or frame folders) found")
    return found


def check_videos(videos: list[Path], config: MotionTrainConfig) -> None:
    """Read the first ``frames`` frames of every video before training: an unreadable video, a folder without
    frames or (unless ``--still``) a video shorter than ``--frames`` is a ``ValueError`` naming it."""
    from stylekit.video_io import VideoIOError

    for path in videos:
        try:
            count = len(read_video(path, max_frames=config.frames, argument=f"--data {path}"))
        except VideoIOError as error:
            raise ValueError(f"{error} (move it out of --data, or fix it)") from None
        if count < config.frames and not config.still:
            raise ValueError(f"--data: {path} has {count} frames, fewer than --frames {config.frames}")


def folder_clips(config: MotionTrainConfig, videos: list[Path], step: int) -> tuple[np.ndarray, list[str]]:
    """Batch ``step`` of random ``frames``-long clips from ``videos`` resized to ``resolution``."""
    rng = _step_rng(config.seed, step)
    clips, captions = [], []
    for _ in range(config.batch_size):
        path = videos[int(rng.integers(len(videos)))]
        video = read_video(path, argument=f"--data {path.name}")
        if len(video) < config.frames and not config.still:
            raise ValueError(f"--data: {path} has {len(video)} frames, fewer than --frames {config.frames}")
        start = int(rng.integers(0, max(1, len(video) - config.frames + 1)))
        frames = video.frames[start : start + config.frames]
        frames = frames[np.arange(config.frames) % len(frames)]  # --still: a short video's frames cycle
        size = config.resolution
        clips.append(np.stack([np.asarray(fit_to_size(Image.fromarray(f), size, size)) for f in frames]))
        text = path.with_suffix(".txt")
        captions.append(text.read_text().strip() if text.is_file() else "")
    return np.stack(clips), captions


def training_batch(
    config: MotionTrainConfig, step: int, videos: list[Path] | None
) -> tuple[torch.Tensor, list[str]]:
    """Pixels ``(B, T, 3, S, S)`` in [-1, 1] and captions (dropped to "" with ``caption_dropout``)."""
    clips, captions = world_clips(config, step) if videos is None else folder_clips(config, videos, step)
    rng = _step_rng(config.seed + 1, step)
    if config.still:
        pick = rng.integers(0, clips.shape[1], size=len(clips))
        clips = np.stack(
            [np.repeat(clip[i : i + 1], config.frames, axis=0) for clip, i in zip(clips, pick, strict=True)]
        )
    dropped = rng.random(len(captions)) < config.caption_dropout
    captions = ["" if d else c for c, d in zip(captions, dropped, strict=True)]
    pixels = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)
    return pixels, captions


# ------------------------------------------------------------------------------------------------- model
def adapter_config(unet: Any, config: MotionTrainConfig) -> dict[str, Any]:
    """The full ``MotionAdapter`` config for ``unet`` and the flags."""
    return {
        "block_out_channels": list(unet.config.block_out_channels),
        "motion_layers_per_block": unet.config.layers_per_block,
        "motion_transformer_layers_per_block": config.motion_transformer_layers_per_block,
        "motion_mid_block_layers_per_block": 1,
        "motion_transformer_layers_per_mid_block": 1,
        "motion_num_attention_heads": config.motion_num_attention_heads,
        "motion_norm_num_groups": unet.config.norm_num_groups,
        "motion_max_seq_length": config.motion_max_seq_length,
        "use_motion_mid_block": config.use_motion_mid_block,
        "conv_in_channels": None,
    }


def motion_state_dict(unet: Any) -> dict[str, torch.Tensor]:
    """The motion-module tensors of a ``UNetMotionModel`` (MotionAdapter key names)."""
    return {k: v.detach().cpu().clone() for k, v in unet.state_dict().items() if "motion_modules" in k}


def save_motion_adapter(
    unet: Any, config: dict[str, Any], path: str | Path, dtype: torch.dtype | None = None
) -> Path:
    """Save ``unet``'s motion modules as a ``MotionAdapter`` with the full ``config``, atomically.

    Unlike ``UNetMotionModel.save_motion_modules`` every config entry is kept (transformer depths, mid
    block layers, heads per block, ``conv_in_channels``), so ``MotionAdapter.from_pretrained`` rebuilds
    exactly the trained modules. ``dtype`` (e.g. ``torch.float16``) casts the saved weights. Returns the
    folder.
    """
    from diffusers import MotionAdapter

    path = Path(path)
    adapter = MotionAdapter.from_config(config)
    adapter.load_state_dict(motion_state_dict(unet), strict=True)
    if dtype is not None:
        adapter.to(dtype)
    with atomic_path(path, folder=True) as temp:
        adapter.save_pretrained(temp, safe_serialization=True)
    return path


def build_motion_model(config: MotionTrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    """(pipeline with frozen parts, trainable ``UNetMotionModel``, adapter config)."""
    from diffusers import MotionAdapter

    from stylekit.models import load_pipeline
    from stylekit.video_models import motion_unet

    pipe = load_pipeline(config.model, kind="text-to-image")
    if config.init_adapter:
        adapter = MotionAdapter.from_pretrained(config.init_adapter)
        adapter_cfg = {k: v for k, v in adapter.config.items() if not k.startswith("_")}
        defaults = MotionTrainConfig.__dataclass_fields__
        for flag in ARCHITECTURE_FLAGS:
            value = getattr(config, flag)
            if value != defaults[flag].default and value != adapter_cfg.get(flag):
                raise ValueError(
                    f"--{flag} {value}: the modules come from --init_adapter, whose {flag} is "
                    f"{adapter_cfg.get(flag)}; leave the flag out"
                )
    else:
        adapter_cfg = adapter_config(pipe.unet, config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            adapter = MotionAdapter(**adapter_cfg)
            _zero_out_projections(adapter)
    if config.frames > int(adapter_cfg["motion_max_seq_length"]):
        raise ValueError(f"--frames {config.frames} exceeds the adapter's motion_max_seq_length")
    unet = motion_unet(pipe.unet, adapter)
    unet.freeze_unet2d_params()
    for module in (pipe.vae, pipe.text_encoder):
        module.requires_grad_(False).eval()
    return pipe, unet, adapter_cfg


def _zero_out_projections(adapter: Any) -> None:
    """AnimateDiff starts motion modules as identities: ``proj_out`` zero-initialised."""
    for name, module in adapter.named_modules():
        if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def diffusion_loss(
    pipe: Any, unet: Any, pixels: torch.Tensor, captions: list[str], step: int, seed: int
) -> torch.Tensor:
    """MSE of the motion UNet on noised latents of ``pixels`` ``(B, T, 3, S, S)``."""
    from diffusers import DDPMScheduler

    from stylekit.attention.conditioner import encode_latents

    device = next(unet.parameters()).device
    batch, frames = pixels.shape[:2]
    with torch.no_grad():
        latents = encode_latents(pipe.vae, pixels.flatten(0, 1).to(device))
        latents = latents.view(batch, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
        embeds, _ = pipe.encode_prompt(captions, device, 1, False)
        embeds = embeds.repeat_interleave(frames, dim=0)
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator).to(
        device
    )
    noisy = scheduler.add_noise(latents, noise, timesteps)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(noisy, timesteps, encoder_hidden_states=embeds, return_dict=False)[0]
    return F.mse_loss(prediction.float(), target.float())


def validation_clip(pipe: Any, unet: Any, config: MotionTrainConfig, path: Path) -> Path:
    """Generate one short clip with the current motion modules and write it as a gif."""
    from stylekit.pipelines.style_video import StyleVideoPipeline
    from stylekit.video_io import write_video

    video_pipe = StyleVideoPipeline(pipe.vae, pipe.text_encoder, pipe.tokenizer, unet, None, pipe.scheduler)
    video_pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    try:
        frames = video_pipe(
            config.validation_prompt,
            num_frames=config.frames,
            num_inference_steps=20,
            guidance_scale=4.0,
            height=config.resolution,
            width=config.resolution,
            output_type="np",
            generator=torch.Generator().manual_seed(config.seed),
        ).frames[0]
    finally:
        unet.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, (np.clip(frames, 0, 1) * 255).round().astype(np.uint8), fps=8)


# ------------------------------------------------------------------------------------------------- loop
def train(config: MotionTrainConfig) -> dict[str, Any]:
    """Train under the current accelerate environment; returns a summary (steps, final loss, paths)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    if config.threads > 0:
        torch.set_num_threads(config.threads)  # on a shared CPU, 1 thread avoids oversubscription
    accelerator = Accelerator()
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    videos = None if config.data == "world" else folder_videos(config.data)
    if videos is not None:
        check_videos(videos, config)
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint)
    if checkpoint is not None:
        check_resumed_flags(output_dir, config)
    pipe, unet, adapter_cfg = build_motion_model(config)
    pipe.vae.to(accelerator.device)
    pipe.text_encoder.to(accelerator.device)
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)

    def lr_factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, config.warmup_steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    start_step = 0
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        saved, current = state["modules"]["motion"], motion_state_dict(unet)
        mismatched = sorted(set(saved) ^ set(current)) or [
            k for k in saved if saved[k].shape != current[k].shape
        ]
        if mismatched:
            raise ValueError(
                f"--resume_from_checkpoint: {checkpoint} holds other motion modules than these flags build "
                f"(e.g. {mismatched[0]}); resume with the flags in {output_dir / 'config.json'}"
            )
        unet.load_state_dict(saved, strict=False)
        optimizer.load_state_dict(state["optimizer"])
        start_step = int(state["state"]["step"])
        scheduler.last_epoch = start_step  # the loaded param groups already hold this step's lr
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")
    unet, optimizer = accelerator.prepare(unet, optimizer)
    unet.train()
    log_path = output_dir / "log.jsonl"
    if accelerator.is_main_process and start_step == 0:
        log_path.write_text("")
        (output_dir / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    started = time.time()
    loss_value = math.nan
    bar = tqdm(
        total=config.max_steps,
        initial=start_step,
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    for step in range(start_step, config.max_steps):
        pixels, captions = training_batch(config, step, videos)
        loss = diffusion_loss(pipe, unet, pixels, captions, step, config.seed)
        accelerator.backward(loss)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(accelerator.gather(loss.detach()[None]).mean())
        done = step + 1
        bar.update()
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if accelerator.is_main_process and (done % config.log_every == 0 or done == config.max_steps):
            with log_path.open("a") as log:
                log.write(
                    json.dumps({"step": done, "loss": loss_value, "lr": scheduler.get_last_lr()[0]}) + "\n"
                )
        if config.checkpoint_every and (done % config.checkpoint_every == 0 or done == config.max_steps):
            if accelerator.is_main_process:
                save_checkpoint(
                    output_dir,
                    done,
                    {"motion": motion_state_dict(accelerator.unwrap_model(unet))},
                    {},
                    optimizer.state_dict(),
                    {"loss": loss_value},
                    keep=config.checkpoints_total_limit,
                )
            accelerator.wait_for_everyone()
        if config.validate_every and done % config.validate_every == 0 and accelerator.is_main_process:
            validation_clip(
                pipe,
                accelerator.unwrap_model(unet),
                config,
                output_dir / "validation" / f"step-{done:07d}.gif",
            )
    bar.close()
    accelerator.wait_for_everyone()
    export = Path(config.export_dir) if config.export_dir else output_dir / ADAPTER_DIR
    if accelerator.is_main_process:
        dtype = torch.float16 if config.export_fp16 else None
        save_motion_adapter(accelerator.unwrap_model(unet), adapter_cfg, export, dtype=dtype)
    accelerator.wait_for_everyone()
    return {
        "steps": config.max_steps,
        "loss": loss_value,
        "seconds": time.time() - started,
        "adapter": str(export),
    }


def check_resumed_flags(output_dir: Path, config: MotionTrainConfig) -> None:
    """A resumed run must build the same modules as the run that wrote ``output_dir``: compare the flags that
    shape them with its ``config.json`` (a ``ValueError`` naming the first that differs)."""
    path = output_dir / "config.json"
    if not path.is_file():
        return
    first = json.loads(path.read_text())
    for flag in ("model", "init_adapter", *ARCHITECTURE_FLAGS):
        if flag in first and first[flag] != getattr(config, flag):
            raise ValueError(
                f"--{flag}: {getattr(config, flag)!r} differs from {first[flag]!r}, which the run in "
                f"{output_dir} was started with; resume with its flags ({path})"
            )


def main(argv: list[str] | None = None) -> int:
    """``accelerate launch -m stylekit.adapters.train_motion --model mini --max_steps 1000 ...``"""
    summary = train(parse_args(argv))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
