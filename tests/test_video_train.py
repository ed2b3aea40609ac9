"""Motion adapter training: only motion modules train, full-config MotionAdapter round trip, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylekit.adapters.train_motion import (
    MotionTrainConfig,
    check_videos,
    folder_clips,
    folder_videos,
    main,
    parse_args,
    train,
    training_batch,
)

pytest.importorskip("imageio_ffmpeg")

NON_DEFAULT = [
    "--motion_transformer_layers_per_block", "2",
    "--motion_max_seq_length", "12",
    "--no-use_motion_mid_block",
    "--motion_num_attention_heads", "4",
]  # fmt: skip


def flags(tmp_path, *extra: str) -> list[str]:
    return [
        "--model", "tiny-sd", "--output_dir", str(tmp_path), "--frames", "4", "--resolution", "32",
        "--batch_size", "1", "--learning_rate", "1e-3", "--warmup_steps", "1", "--no-progress", *NON_DEFAULT, *extra,
    ]  # fmt: skip


def adapter_tensors(path) -> dict[str, torch.Tensor]:
    from diffusers import MotionAdapter

    return MotionAdapter.from_pretrained(path).state_dict()


def test_train_saves_loadable_full_config_adapter_and_resume_matches(tmp_path):
    from diffusers import MotionAdapter, UNetMotionModel

    from stylekit.adapters.train_motion import build_motion_model

    assert main(flags(tmp_path / "straight", "--max_steps", "2", "--checkpoint_every", "0")) == 0
    adapter = MotionAdapter.from_pretrained(tmp_path / "straight" / "motion_adapter")
    assert adapter.config.motion_transformer_layers_per_block == 2  # stock save_motion_modules drops these
    assert adapter.config.motion_max_seq_length == 12 and adapter.config.use_motion_mid_block is False
    pipe, start, _ = build_motion_model(parse_args(flags(tmp_path / "x")))
    trained = adapter.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in start.state_dict().items() if k in trained)
    unet = UNetMotionModel.from_unet2d(pipe.unet, adapter)  # stock loading path
    frozen = {k: v for k, v in unet.state_dict().items() if "motion_modules" not in k}
    assert all(
        torch.equal(frozen[k], v) for k, v in start.state_dict().items() if k in frozen
    )  # image UNet untouched
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in trained.items())

    first = flags(tmp_path / "resumed", "--max_steps", "1", "--checkpoint_every", "5")
    assert train(parse_args(first))["steps"] == 1
    assert (tmp_path / "resumed" / "checkpoint-0000001").is_dir()  # the last step is always checkpointed
    rest = flags(
        tmp_path / "resumed",
        "--max_steps",
        "2",
        "--checkpoint_every",
        "5",
        "--resume_from_checkpoint",
        "latest",
    )
    train(parse_args(rest))
    resumed = adapter_tensors(tmp_path / "resumed" / "motion_adapter")
    for key, value in trained.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-6)
    assert not any(
        p.name.startswith(".") for p in (tmp_path / "resumed").iterdir()
    )  # no half-written folders
    # resuming with flags that build other modules is refused before the model loads
    for changed in (["--motion_num_attention_heads", "8"], ["--motion_transformer_layers_per_block", "1"]):
        with pytest.raises(ValueError, match=f"{changed[0]}: .* differs from .* resume with its flags"):
            train(parse_args([*rest, *changed]))
    # --init_adapter decides the architecture: a flag that contradicts it is refused
    init = str(tmp_path / "straight" / "motion_adapter")
    with pytest.raises(ValueError, match="--motion_max_seq_length 8: the modules come from --init_adapter"):
        build_motion_model(
            parse_args(flags(tmp_path / "y", "--init_adapter", init, "--motion_max_seq_length", "8"))
        )


def test_still_videos_and_folder_data(tmp_path):
    from stylekit.video_io import write_video

    config = MotionTrainConfig(model="tiny-sd", frames=4, resolution=32, batch_size=2, still=True)
    pixels, captions = training_batch(config, 0, None)
    assert pixels.shape == (2, 4, 3, 32, 32) and len(captions) == 2
    assert torch.equal(pixels[:, :1].expand_as(pixels), pixels)  # one frame repeated
    moving, _ = training_batch(
        MotionTrainConfig(model="tiny-sd", frames=4, resolution=32, batch_size=2), 0, None
    )
    assert not torch.equal(moving[:, :1].expand_as(moving), moving)
    rng = np.random.default_rng(0)
    for name in ("a.mp4", "b.gif"):
        write_video(tmp_path / name, rng.integers(0, 255, (6, 24, 40, 3), dtype=np.uint8), fps=8)
    (tmp_path / "a.txt").write_text("a red circle")
    videos = folder_videos(tmp_path)
    folder = MotionTrainConfig(model="tiny-sd", data=str(tmp_path), frames=4, resolution=32, batch_size=3)
    clips, texts = folder_clips(folder, videos, step=1)
    assert clips.shape == (3, 4, 32, 32, 3) and set(texts) <= {"a red circle", ""}
    check_videos(videos, folder)
    write_video(tmp_path / "short.gif", rng.integers(0, 255, (3, 24, 40, 3), dtype=np.uint8), fps=8)
    with pytest.raises(ValueError, match="short.gif has 3 frames, fewer than --frames 4"):
        check_videos(folder_videos(tmp_path), folder)  # found before training, not when drawn
    still = MotionTrainConfig(
        model="tiny-sd", data=str(tmp_path), frames=4, resolution=32, batch_size=3, still=True
    )
    check_videos(folder_videos(tmp_path), still)  # --still needs one frame per video
    for step in range(4):  # videos of different lengths stack (a short one's frames cycle)
        assert training_batch(still, step, folder_videos(tmp_path))[0].shape == (3, 4, 3, 32, 32)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("not a video")
    with pytest.raises(ValueError, match="notes.*move it out of --data"):
        check_videos(folder_videos(tmp_path), still)
    with pytest.raises(ValueError, match="--frames"):
        MotionTrainConfig(frames=40, motion_max_seq_length=32)
    with pytest.raises(ValueError, match="--data"):
        MotionTrainConfig(data=str(tmp_path / "missing"))


def test_scaled_motion_delta():
    from stylekit.models import build_tiny_sd
    from stylekit.video_models import MotionAdapterMismatch, scaled_motion_delta, tiny_motion_adapter

    unet = build_tiny_sd()["unet"]
    base, tuned = tiny_motion_adapter(unet, seed=0), tiny_motion_adapter(unet, seed=1)
    b, t = base.state_dict(), tuned.state_dict()
    for scale in (0.0, 1.0, -0.5):
        out = scaled_motion_delta(base, tuned, scale).state_dict()
        for key in list(b)[:5]:
            torch.testing.assert_close(out[key], b[key] + scale * (t[key] - b[key]))
    with pytest.raises(MotionAdapterMismatch):
        scaled_motion_delta(base, tiny_motion_adapter(unet, motion_max_seq_length=8), -1.0)


def test_shipped_mini_motion_adapter_loads_in_stock_diffusers_and_fits_mini(tmp_path):
    from diffusers import MotionAdapter

    from stylekit import load_pipeline
    from stylekit.models import MOTION_ADAPTER_MINI_PATH
    from stylekit.video_models import motion_unet

    adapter = MotionAdapter.from_pretrained(MOTION_ADAPTER_MINI_PATH)
    assert next(adapter.parameters()).dtype == torch.float32  # shipped fp16, loaded fp32 by default
    pipe = load_pipeline("mini", kind="text-to-image")
    model = motion_unet(pipe.unet, adapter)  # raises MotionAdapterMismatch for another UNet
    latents = torch.randn(
        1, pipe.unet.config.in_channels, 4, 16, 16, generator=torch.Generator().manual_seed(0)
    )
    context = torch.zeros(4, 8, pipe.text_encoder.config.hidden_size)
    with torch.no_grad():
        out = model(latents, 500, encoder_hidden_states=context).sample
    assert out.shape == latents.shape and torch.isfinite(out).all()
    # the trained temporal layers do something: zeroing them changes the output
    for name, param in model.named_parameters():
        if "motion_modules" in name and "proj_out" in name:
            param.data.zero_()
    with torch.no_grad():
        assert not torch.allclose(model(latents, 500, encoder_hidden_states=context).sample, out)


def test_export_fp16_halves_the_adapter(tmp_path):
    main(flags(tmp_path, "--max_steps", "1", "--export_fp16"))
    from safetensors import safe_open

    weights = next((tmp_path / "motion_adapter").glob("*.safetensors"))
    with safe_open(str(weights), "pt") as handle:
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.float16}
