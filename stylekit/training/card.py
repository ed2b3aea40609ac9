"""The model card (``README.md``) of a trained mini folder, written from the run's measured figures."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from stylekit.files import atomic_path

REPRODUCE = (
    "HF_HUB_OFFLINE=1 accelerate launch --num_processes 1 -m stylekit.training.train_mini \\\n"
    "    --output_dir stylekit/assets/mini --checkpoint_dir runs/mini --stage all --seed 0"
)


def _load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def folder_sizes(folder: Path) -> dict[str, int]:
    """Bytes of the weight files per component (``vae``, ``unet``, ...) and ``total``."""
    sizes: dict[str, int] = {}
    for weights in sorted(folder.glob("*/*.safetensors")):
        sizes[weights.parent.name] = sizes.get(weights.parent.name, 0) + weights.stat().st_size
    sizes["total"] = sum(sizes.values())
    return sizes


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _fmt(values: dict[str, Any], keys: tuple[str, ...]) -> str:
    return ", ".join(f"{k} {values[k]:.4g}" for k in keys if k in values)


def render_card(
    config: Any, vae: dict[str, Any] | None, unet: dict[str, Any] | None, sizes: dict[str, int]
) -> str:
    """The model card's markdown for ``config`` (a ``TrainMiniConfig``) and the stage summaries."""
    arch = config.arch
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "license: apache-2.0",
        "tags: [stylekit, synthetic-data, tiny]",
        "---",
        "",
        "# stylekit `mini`",
        "",
        "A small Stable Diffusion (VAE + UNet + CLIP text encoder, diffusers folder format) trained from scratch",
        "by `stylekit.training.train_mini` on stylekit's synthetic style world. It is the offline default model of",
        "`stylekit` (CLI and app) and the model on which stylekit's quality benchmarks run. It draws 64 x 64 images",
        "of 1-3 flat shapes on textured paper from captions such as",
        '"a red star and an orange ring on striped cream paper, thick outline". It knows nothing else.',
        "",
        "```python",
        "from diffusers import StableDiffusionPipeline",
        "from stylekit.models import MINI_PATH",
        "",
        "pipe = StableDiffusionPipeline.from_pretrained(MINI_PATH, torch_dtype=torch.float32)  # offline",
        'image = pipe("a blue circle on dotted white paper, thin outline", num_inference_steps=25,',
        "             guidance_scale=4.0).images[0]",
        "```",
        "",
        "## Data",
        "",
        f"Rendered on the fly by `stylekit.data` at {arch.image_size} x {arch.image_size} (a fresh batch every step,",
        "a pure function of seed and step), restricted to scenes in the train part of the world splits "
        f"`{', '.join(config.splits)}` — so the test part of every split (held-out content/style combinations,",
        "63 held-out composite styles, 12 held-out palette/texture pairs) was never seen. "
        f"Captions are dropped (empty prompt) with probability {config.caption_dropout}, so unconditional "
        "generation and classifier-free guidance work.",
        "",
        "## Architecture",
        "",
        "| component | class | configuration | parameters | fp16 size |",
        "|---|---|---|---|---|",
    ]
    vae_params = vae.get("params") if vae else None
    unet_params = (unet or {}).get("params", {})
    lines.append(
        f"| vae | AutoencoderKL | blocks {list(arch.vae_channels)}, {arch.vae_layers_per_block} resnet/level, "
        f"factor {arch.vae_factor}, latent {arch.latent_size}x{arch.latent_size}x{arch.latent_channels}, "
        f"mid attention {arch.vae_mid_attention} | {vae_params or '?':,} | {_mb(sizes.get('vae', 0))} |"
        if vae_params
        else f"| vae | AutoencoderKL | blocks {list(arch.vae_channels)} | ? | {_mb(sizes.get('vae', 0))} |"
    )
    side = arch.latent_size
    pooled = (
        ", plus an attention-pooled text embedding added to the timestep embedding" * arch.unet_text_pooling
    )
    lines.append(
        f"| unet | UNet2DConditionModel | SD 1.x block layout scaled down: blocks {list(arch.unet_channels)} at "
        f"{side}/{side // 2}/{side // 4}/{side // 8} latent cells, {arch.unet_layers_per_block} resnet/level, "
        "down CrossAttn x 3 + plain, up plain + CrossAttn x 3 (decoder self- and cross-attention in "
        f"`up_blocks.1`-`3`, at {side // 4}x{side // 4}, {side // 2}x{side // 2} and {side}x{side}), heads "
        f"{list(arch.unet_heads)}, cross-attention dim {arch.text_hidden}{pooled} | "
        f"{unet_params.get('unet', 0):,} | {_mb(sizes.get('unet', 0))} |"
    )
    lines.append(
        f"| text_encoder | CLIPTextModel | {arch.text_layers} layers, hidden {arch.text_hidden}, "
        f"{arch.text_heads} heads, {arch.max_tokens} positions | {unet_params.get('text_encoder', 0):,} | "
        f"{_mb(sizes.get('text_encoder', 0))} |"
    )
    lines += [
        "| tokenizer | CLIPTokenizer | byte-level CLIP alphabet + BPE merges of the caption words "
        "(`stylekit.tokenizer.build_clip_tokenizer(caption_vocabulary())`; captions take at most 44 tokens) "
        "| - | - |",
        "| scheduler | DDIMScheduler | SD betas (scaled_linear 0.00085-0.012, 1000 steps), epsilon, "
        "clip_sample false, set_alpha_to_one false, steps_offset 1 | - | - |",
        "",
        f'Weights: fp16 safetensors, {_mb(sizes.get("total", 0))} in total. `stylekit.load_pipeline("mini")` loads',
        "them as float32 on CPU (pass `dtype=torch.float16` on CUDA).",
        "",
        "## Training",
        "",
        f"Seed {config.seed}, AdamW (betas 0.9/0.99, weight decay {config.weight_decay}), linear warm-up "
        f"{config.warmup_steps} steps then cosine to {config.min_lr_ratio} x lr, gradient clipping "
        f"{config.max_grad_norm}, EMA of the weights (decay {config.ema_decay}; the EMA weights are shipped). "
        f"torch.set_num_threads({config.num_threads}), one process, VAE in {config.vae_precision} autocast "
        f"(fp32 weights), UNet + text encoder in {config.unet_precision}, torch {torch.__version__}, "
        f"{platform.machine()} CPU ({os.cpu_count()} cores, shared with other jobs, so wall times vary).",
        "",
    ]
    if vae:
        final = vae.get("final", {})
        lines += [
            f"1. **VAE**: {vae['steps']} steps x batch {config.vae_batch_size} random "
            f"{config.vae_crop_size or arch.image_size}-pixel crops, lr {config.vae_lr}, loss "
            f"{config.vae_l1_weight} L1 + {config.vae_mse_weight} MSE (pixels in [-1, 1]) + {config.vae_kl_weight} KL "
            "(summed over the latent, divided by the number of pixel values, as in LDM). Final (mean of the "
            f"last {config.log_every} steps): {_fmt(final, ('loss', 'l1', 'mse', 'kl', 'psnr'))}. "
            f"Wall time {vae['wall_s'] / 60:.1f} min. The latents are then standardised per channel (the "
            "affine map is folded into `quant_conv` / `post_quant_conv`, decoding is unchanged), so "
            "`scaling_factor` is 1; raw channel means "
            f"{[round(v, 2) for v in vae.get('latent_stats_raw', {}).get('mean', [])]}, stds "
            f"{[round(v, 2) for v in vae.get('latent_stats_raw', {}).get('std', [])]}.",
        ]
    if unet:
        final = unet.get("final", {})
        lines += [
            f"2. **UNet + text encoder** (VAE frozen; a pool of {config.unet_pool_size} training scenes encoded "
            f"once, a fresh posterior sample each use): {unet['steps']} steps x batch {config.unet_batch_size}, "
            f"lr {config.unet_lr} (UNet) / {config.text_lr} (text encoder), DDPM noise (SD betas), epsilon MSE "
            f"with min-SNR-{config.snr_gamma} weighting, offset noise {config.noise_offset}, caption dropout "
            f"{config.caption_dropout}. Final (mean "
            f"of the last {config.log_every} steps): {_fmt(final, ('loss', 'mse'))}. "
            f"Wall time {unet['wall_s'] / 60:.1f} min.",
        ]
    total_wall = sum(s["wall_s"] for s in (vae, unet) if s) / 60
    end_to_end = sum(s.get("total_s", s["wall_s"]) for s in (vae, unet) if s) / 60
    lines += [
        "",
        f"Wall time: {total_wall:.1f} min of training steps; {end_to_end:.1f} min end to end (with the latent "
        "pool, evaluation, sample grids and saving).",
        "",
        "Reproduce (writes this folder; checkpoints in `runs/mini`, resumable with "
        "`--resume_from_checkpoint latest`):",
        "",
        "```bash",
        REPRODUCE,
        "```",
        "",
        "`--stage all` is exactly `--stage vae` followed by `--stage unet` with the same arguments. Results are",
        "deterministic for a given seed, thread count, torch build and CPU; another machine gives a model of the",
        "same quality but not bit-identical weights.",
        "",
        "## Measured",
        "",
    ]
    if vae and "eval_heldout" in vae:
        held, dist = vae["eval_heldout"], vae["eval_train_dist"]
        textures = ", ".join(f"{k} {v:.1f}" for k, v in held["by_texture"].items())
        lines += [
            f"- VAE reconstruction PSNR on {held['n']} held-out world images (test part of the `{held['split']}` "
            f"split, uint8 outputs, posterior mean): **{held['psnr']:.2f} dB** mean per image (pooled "
            f"{held['psnr_pooled']:.2f} dB, 10th percentile {held['psnr_p10']:.2f} dB, with posterior samples "
            f"{held['psnr_sampled']:.2f} dB). By texture: {textures}.",
            f"- The same on {dist['n']} fresh images of the whole world: {dist['psnr']:.2f} dB.",
            "- `vae_reconstructions.png`: held-out images (odd columns) and their reconstructions.",
        ]
    if unet:
        lines += [
            f"- `samples_heldout.png`: generations ({config.sample_steps} DDIM steps, guidance "
            f"{config.sample_guidance}, seed 0) for 16 captions of held-out styles (row-major):",
            "",
            *[f"  {i + 1}. {c}" for i, c in enumerate(unet.get("sample_captions", []))],
        ]
    lines += [
        "",
        "## Limitations",
        "",
        "64 x 64 pixels, a 59-word world, trained for minutes on a CPU: shapes and colours are rough, fine",
        "textures are approximate. It exists so that stylekit's pipelines, CLI, app and benchmarks run with a",
        "real (non-random) model offline; use a real Stable Diffusion checkpoint for real images.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(config: Any) -> Path:
    """Write ``OUTPUT_DIR/README.md`` from the summaries in ``CHECKPOINT_DIR`` (atomically). Returns the path."""
    out = Path(config.output_dir)
    vae = _load(Path(config.checkpoint_dir) / "summary-vae.json")
    unet = _load(Path(config.checkpoint_dir) / "summary-unet.json")
    text = render_card(config, vae, unet, folder_sizes(out))
    with atomic_path(out / "README.md") as temp:
        temp.write_text(text)
    return out / "README.md"
