"""The bundled mini model: offline loading, generation, size, and a smoke run of its training code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from stylekit.models import MINI_PATH

TINY_ARCH = [
    "--vae_channels", "8,16,16", "--unet_channels", "16,32,32,32", "--unet_heads", "1,2,2,2",
    "--norm_groups", "8", "--text_hidden", "32", "--text_layers", "1", "--text_heads", "2",
]  # fmt: skip


def _tiny_args(out: Path, *extra: str) -> list[str]:
    return [
        "--output_dir", str(out), "--vae_batch_size", "4", "--unet_batch_size", "4", "--eval_images", "8",
        "--sample_steps", "2", "--log_every", "1", "--warmup_steps", "1", "--unet_pool_size", "16", *TINY_ARCH,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def mini_pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(MINI_PATH, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_mini_folder_is_complete_small_and_fp16() -> None:
    index = json.loads((MINI_PATH / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["requires_safety_checker"] is False
    weights = sorted(MINI_PATH.glob("*/*.safetensors"))
    assert {w.parent.name for w in weights} == {"vae", "unet", "text_encoder"}
    assert sum(w.stat().st_size for w in weights) <= 30e6
    for path in weights:
        with safe_open(str(path), "pt") as handle:
            assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"F16"}, path
    scheduler = json.loads((MINI_PATH / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler"
    assert (scheduler["clip_sample"], scheduler["set_alpha_to_one"], scheduler["steps_offset"]) == (
        False,
        False,
        1,
    )
    card = (MINI_PATH / "README.md").read_text()
    assert "accelerate launch" in card and "PSNR" in card


def test_mini_generates_with_stock_pipeline(mini_pipe) -> None:
    unet = mini_pipe.unet
    assert mini_pipe.vae_scale_factor == 4 and unet.config.sample_size == 16
    assert unet.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    image = mini_pipe(
        "a red circle on plain cream paper, thick outline",
        num_inference_steps=4,
        guidance_scale=4.0,
        generator=generator,
        output_type="np",
    ).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert image.std() > 0.02  # not a flat or blank image


def test_load_pipeline_mini_and_its_layer_preset() -> None:
    from diffusers import DDIMScheduler

    from stylekit.attention import resolve_layers
    from stylekit.models import load_pipeline

    pipe = load_pipeline("mini")
    assert pipe.unet.dtype == torch.float32 and pipe.vae.dtype == torch.float32
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.native_resolution == 64
    layers = resolve_layers("styleid-mini", pipe.unet.attn_processors.keys())
    assert len(layers) == 4
    assert {name.split(".attentions")[0] for name in layers} == {"up_blocks.2", "up_blocks.3"}
    text = load_pipeline("mini", kind="text-to-image")
    assert type(text).__name__ == "StableDiffusionPipeline"


def test_config_validation() -> None:
    from stylekit.training.architecture import MiniArchitecture
    from stylekit.training.train_mini import TrainMiniConfig

    with pytest.raises(ValueError, match="stage"):
        TrainMiniConfig(output_dir="x", stage="gan")
    with pytest.raises(ValueError, match="splits"):
        TrainMiniConfig(output_dir="x", splits=("nope",))
    with pytest.raises(ValueError, match="caption_dropout"):
        TrainMiniConfig(output_dir="x", caption_dropout=1.5)
    with pytest.raises(ValueError, match="norm_groups"):
        MiniArchitecture(vae_channels=(12, 16, 16))
    with pytest.raises(ValueError, match="unet_heads"):
        MiniArchitecture(unet_heads=(3, 4, 4))
    assert TrainMiniConfig(output_dir="x").checkpoint_dir == str(Path("x") / "checkpoints")


def test_training_smoke_run_writes_a_loadable_folder(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from stylekit.training.train_mini import main

    out = tmp_path / "mini"
    results = main(_tiny_args(out, "--vae_steps", "2", "--unet_steps", "2"))
    assert results["vae"]["final"]["step"] == 2 and results["unet"]["final"]["step"] == 2
    assert "psnr" in results["vae"]["eval_heldout"]
    for name in ("model_index.json", "README.md", "samples_heldout.png", "vae_reconstructions.png"):
        assert (out / name).is_file(), name
    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a blue star on striped white paper, thin outline", num_inference_steps=2, output_type="np")
    assert image.images.shape == (1, 64, 64, 3)


def test_resume_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    import shutil

    from stylekit.training.checkpoint import list_checkpoints, load_checkpoint
    from stylekit.training.train_mini import main

    common = [
        "--stage",
        "vae",
        "--vae_steps",
        "4",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "3",
    ]
    main(_tiny_args(tmp_path / "a", *common, "--write_card", "false"))
    full = list_checkpoints(tmp_path / "a" / "checkpoints" / "vae")
    assert [p.name for p in full] == ["checkpoint-0000002", "checkpoint-0000004"]
    resumed_dir = tmp_path / "b" / "checkpoints" / "vae"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(full[0], resumed_dir / full[0].name)
    (resumed_dir / ".checkpoint-0000003.tmp").mkdir()  # an interrupted write is never "latest"
    main(_tiny_args(tmp_path / "b", *common, "--resume_from_checkpoint", "latest", "--write_card", "false"))
    a, b = load_checkpoint(full[1]), load_checkpoint(resumed_dir / "checkpoint-0000004")
    for key, value in a["modules"]["vae"].items():
        torch.testing.assert_close(b["modules"]["vae"][key], value, rtol=0, atol=0)
    for key, value in a["ema"]["vae"].items():
        torch.testing.assert_close(b["ema"]["vae"][key], value, rtol=0, atol=0)
    assert a["state"]["running"]["history"] == b["state"]["running"]["history"]
    with pytest.raises(ValueError, match="other vae settings"):
        main(
            _tiny_args(tmp_path / "b", *common[:-2], "--vae_lr", "0.5", "--resume_from_checkpoint", "latest")
        )


def test_latent_standardisation_is_folded_exactly() -> None:
    from stylekit.training.architecture import MiniArchitecture, build_vae, fold_latent_normalization

    torch.manual_seed(0)
    vae = build_vae(MiniArchitecture(vae_channels=(8, 16, 16), norm_groups=8)).eval()
    pixels = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        before = vae.encode(pixels).latent_dist
        decoded = vae.decode(before.mean).sample
        mean, std = before.mean.mean(dim=(0, 2, 3)), before.mean.std(dim=(0, 2, 3))
        fold_latent_normalization(vae, mean, std)
        after = vae.encode(pixels).latent_dist
        torch.testing.assert_close(vae.decode(after.mean).sample, decoded, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(after.mean.mean(dim=(0, 2, 3)), torch.zeros(8), rtol=0, atol=1e-4)
    torch.testing.assert_close(after.mean.std(dim=(0, 2, 3)), torch.ones(8), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(after.std, before.std / std[None, :, None, None], rtol=1e-4, atol=1e-6)
    assert vae.config.scaling_factor == 1.0


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    from stylekit.data.splits import SPLITS, in_part
    from stylekit.training.data import pool_rows, sample_scenes_in, step_rng, world_batch

    a = world_batch(0, "unet", 5, 8, 64, tuple(SPLITS), caption_dropout=0.5)
    b = world_batch(0, "unet", 5, 8, 64, tuple(SPLITS), caption_dropout=0.5)
    assert torch.equal(a.pixels, b.pixels) and a.captions == b.captions and "" in a.captions
    halves = [world_batch(0, "unet", 5, 8, 64, tuple(SPLITS), 0.5, rank, 2) for rank in (0, 1)]
    assert torch.equal(torch.cat([h.pixels for h in halves])[[0, 4, 1, 5, 2, 6, 3, 7]], a.pixels)
    contents, styles = sample_scenes_in(step_rng(0, "vae", 0), 64, tuple(SPLITS))
    assert all(in_part(c, s, name, "train") for c, s in zip(contents, styles, strict=True) for name in SPLITS)
    epoch = np.concatenate([pool_rows(3, step, 10, 40) for step in range(4)])
    assert sorted(epoch.tolist()) == list(range(40))
    assert np.array_equal(pool_rows(3, 7, 16, 40), pool_rows(3, 7, 16, 40))
