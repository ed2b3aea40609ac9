"""Video pipelines end to end on tiny-sd + a tiny MotionAdapter (32 px, 2 steps, 4-8 frames)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from conftest import make_image

from stylekit.video_io import VideoIOError, read_video, write_video
from stylekit.video_models import MotionAdapterMismatch, tiny_motion_adapter

pytest.importorskip("imageio_ffmpeg")

SIZE = 32
STEPS = 2


def moving_video(frames: int = 8, size: int = SIZE) -> np.ndarray:
    """A blob image shifted one pixel per frame (uint8 (T, H, W, 3))."""
    base = make_image(3, size=size + frames)
    return np.stack([base[t : t + size, t : t + size] for t in range(frames)])


@pytest.fixture(scope="module")
def video_pipe(tiny_sd):
    from stylekit.pipelines import VideoStyleTransferPipeline

    pipe = VideoStyleTransferPipeline.from_pipe(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def adapter(tiny_sd):
    return tiny_motion_adapter(tiny_sd.unet, motion_max_seq_length=8)


@pytest.fixture(scope="module")
def style():
    return make_image(7, size=SIZE)


def run(pipe, video, style, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    return pipe(video, style, **kwargs)


def test_transfer_end_to_end_with_motion_adapter_writes_video(video_pipe, adapter, style, tmp_path):
    clip = tmp_path / "in.mp4"
    write_video(clip, moving_video(6), fps=12)
    out = run(
        video_pipe,
        clip,
        style,
        motion_adapter=adapter,
        window_size=4,
        window_overlap=2,
        output_path=tmp_path / "out.gif",
    )
    assert out.frames.shape == (6, SIZE, SIZE, 3) and np.isfinite(out.frames).all()
    assert out.fps == 12 and out.windows == [(0, 4), (2, 6)]
    written = read_video(out.path)
    assert len(written) == 6 and written.fps == pytest.approx(12)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4", "out.gif"]
    plain = run(video_pipe, clip, style, window_size=4, window_overlap=2)
    assert not np.allclose(plain.frames, out.frames, atol=1e-4)  # temporal attention acts


def test_per_frame_mode_equals_image_stylid_and_cross_frame_keeps_frame_zero(video_pipe, tiny_sd, style):
    video = moving_video(4)
    per_frame = run(video_pipe, video, style, cross_frame=False, adain="frame", motion_adapter=None)
    image = tiny_sd(video[2], style, num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="np")
    np.testing.assert_allclose(per_frame.frames[2], image.images[0], atol=2e-3)
    cross = run(video_pipe, video, style, cross_frame=True, adain="frame")
    # frame 0 attends only to itself (all anchors are frame 0): exactly per-frame StyleID
    np.testing.assert_allclose(cross.frames[0], per_frame.frames[0], atol=1e-5)
    assert not np.allclose(cross.frames[1:], per_frame.frames[1:], atol=1e-4)
    video_adain = run(video_pipe, video, style, cross_frame=False)  # frame 0's statistics for every frame
    np.testing.assert_allclose(video_adain.frames[0], per_frame.frames[0], atol=1e-5)
    assert not np.allclose(video_adain.frames[1:], per_frame.frames[1:], atol=1e-4)


def test_sliding_windows(video_pipe, adapter, style):
    video = moving_video(8)
    single = run(video_pipe, video, style, motion_adapter=adapter, window_size=8)
    wide = run(video_pipe, list(video), style, motion_adapter=adapter, window_size=8, window_overlap=7)
    np.testing.assert_array_equal(single.frames, wide.frames)  # window >= length: the single-window run
    assert single.windows == [(0, 8)]
    twice = run(video_pipe, video, style, motion_adapter=adapter, window_size=4, window_overlap=1)
    assert twice.windows == [(0, 4), (3, 7), (4, 8)] and twice.frames.shape[0] == 8
    no_motion = run(video_pipe, video, style, window_size=None)
    assert no_motion.windows == [(0, 8)]
    # "auto": the adapter's longest window (4 here), overlap min(4, window // 2)
    short = tiny_motion_adapter(video_pipe.unet, motion_max_seq_length=4)
    auto = run(video_pipe, video[:6], style, motion_adapter=short)
    assert auto.windows == [(0, 4), (2, 6)]
    assert video_pipe.inversion_cache.stats["misses"] >= 1  # the style: inverted once, then reused
    hits = video_pipe.inversion_cache.stats["hits"]
    run(video_pipe, video, style, window_size=4, window_overlap=1)
    assert video_pipe.inversion_cache.stats["hits"] == hits + 3  # one per window, no new inversion


def test_pipeline_restored_after_call_and_failure(video_pipe, adapter, style, tmp_path):
    before = dict(video_pipe.unet.attn_processors)

    def boom(pipe, step, timestep, tensors):
        raise RuntimeError("boom")

    target = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        run(
            video_pipe,
            moving_video(4),
            style,
            motion_adapter=adapter,
            output_path=target,
            callback_on_step_end=boom,
        )
    assert list(tmp_path.iterdir()) == []  # no half-written output
    run(video_pipe, moving_video(4), style, motion_adapter=adapter, window_size=2, window_overlap=1)
    after = video_pipe.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    motion = video_pipe._motion_cache.get(video_pipe.unet, adapter)
    assert not any(
        "CrossFrame" in type(p).__name__ or "Injection" in type(p).__name__
        for p in motion.attn_processors.values()
    )


def test_bad_inputs_fail_before_model_work(video_pipe, tiny_sd, style, tmp_path):
    calls = []
    handle = video_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(VideoIOError, match="zero frames"):
            run(video_pipe, [], style)
        with pytest.raises(VideoIOError, match="frame 1 is"):
            run(video_pipe, [moving_video(1)[0], make_image(1, size=16)], style)
        (tmp_path / "junk.mp4").write_bytes(b"not a video")
        with pytest.raises(VideoIOError, match="cannot read"):
            run(video_pipe, tmp_path / "junk.mp4", style)
        (tmp_path / "empty.mp4").write_bytes(b"")
        with pytest.raises(VideoIOError, match="empty"):
            run(video_pipe, tmp_path / "empty.mp4", style)
        other = tiny_motion_adapter(tiny_sd.unet, block_out_channels=(8, 8, 16, 16), motion_norm_num_groups=8)
        with pytest.raises(MotionAdapterMismatch, match="block_out_channels"):
            run(video_pipe, moving_video(2), style, motion_adapter=other)
        short = tiny_motion_adapter(tiny_sd.unet, motion_max_seq_length=4)
        with pytest.raises(ValueError, match="motion_max_seq_length"):
            run(video_pipe, moving_video(2), style, motion_adapter=short, window_size=8)
        with pytest.raises(ValueError, match="window_overlap"):
            run(video_pipe, moving_video(2), style, window_size=4, window_overlap=4)
        with pytest.raises(ValueError, match="window_overlap: expected an integer or 'auto'"):
            run(video_pipe, moving_video(2), style, window_overlap="half")
        with pytest.raises(VideoIOError, match="does not exist"):
            run(video_pipe, moving_video(2), style, output_path=tmp_path / "nowhere" / "out.mp4")
        with pytest.raises(ValueError, match="window_size: expected None or an integer >= 1, got 4.5"):
            run(video_pipe, moving_video(2), style, window_size=4.5)
        with pytest.raises(ValueError, match="window_overlap: expected an integer >= 0, got 1.5"):
            run(video_pipe, moving_video(2), style, window_size=4, window_overlap=1.5)
        source = write_video(tmp_path / "source.gif", moving_video(2), fps=4)
        with pytest.raises(ValueError, match="is the input video"):
            run(video_pipe, source, style, output_path=tmp_path / "." / "source.gif")
        assert len(read_video(source)) == 2
    finally:
        handle.remove()
    assert calls == []


def test_style_video_pipeline_end_to_end(tiny_sd, style):
    from stylekit.models import build_tiny_sd
    from stylekit.pipelines import StyleVideoPipeline

    parts = build_tiny_sd()
    adapter = tiny_motion_adapter(parts["unet"])
    pipe = StyleVideoPipeline(
        parts["vae"], parts["text_encoder"], parts["tokenizer"], parts["unet"], adapter, parts["scheduler"]
    )
    pipe.set_progress_bar_config(disable=True)
    before = dict(pipe.unet.attn_processors)

    def generate(**kwargs):
        kwargs = {
            "num_frames": 4,
            "num_inference_steps": STEPS,
            "height": SIZE,
            "width": SIZE,
            "output_type": "np",
            **kwargs,
        }
        return pipe("a red star", generator=torch.Generator().manual_seed(0), **kwargs).frames

    styled = generate(style=style)
    assert styled.shape == (1, 4, SIZE, SIZE, 3) and np.isfinite(styled).all()
    plain = generate()
    assert not np.allclose(styled, plain, atol=1e-5)
    assert not np.allclose(generate(motion_scale=0.0), plain, atol=1e-5)  # the temporal layers act
    with pytest.raises(ValueError, match="motion_scale"):
        generate(motion_scale=float("nan"))
    np.testing.assert_array_equal(generate(style=style), styled)  # cached inversion, same result
    assert pipe.inversion_cache.stats["hits"] == 1 and pipe.inversion_cache.stats["misses"] == 1
    after = pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)

    class Zeroing:  # a conditioner whose on_step_end must run whatever tensors the caller's callback asks for
        calls = 0

        def prepare(self, pipe, **_):
            pass

        def attach(self, pipe):
            return contextlib.nullcontext()

        def on_step_begin(self, step, t, latents):
            pass

        def on_step_end(self, step, t, latents):
            Zeroing.calls += 1
            return latents * 0

    seen = []
    zeroed = generate(
        conditioners=[Zeroing()],
        callback_on_step_end=lambda p, i, t, tensors: seen.append(sorted(tensors)) or tensors,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
    )
    assert Zeroing.calls == STEPS and seen[0] == ["latents", "prompt_embeds"]
    np.testing.assert_array_equal(zeroed, generate(conditioners=[Zeroing()]))
    # refused before any UNet call: a non-DDIM schedule, and FreeNoise with a style image
    from diffusers import PNDMScheduler

    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    pndm = StyleVideoPipeline.from_pipe(pipe, scheduler=PNDMScheduler.from_config(pipe.scheduler.config))
    with pytest.raises(ValueError, match="PNDMScheduler samples timestep .* use a DDIM scheduler"):
        pndm("a red star", style=make_image(9, size=SIZE), num_frames=4, num_inference_steps=5)
    pipe.enable_free_noise(context_length=2, context_stride=1)
    try:
        with pytest.raises(ValueError, match="does not combine with FreeNoise"):
            generate(style=style)
    finally:
        pipe.disable_free_noise()
    hook.remove()
    assert calls == []
    with pytest.raises(MotionAdapterMismatch):
        StyleVideoPipeline(
            parts["vae"],
            parts["text_encoder"],
            parts["tokenizer"],
            parts["unet"],
            tiny_motion_adapter(parts["unet"], block_out_channels=(16, 16, 16, 16)),
            parts["scheduler"],
        )


def test_gray_tile_controlnet(video_pipe, adapter, style):
    from diffusers import ControlNetModel
    from PIL import Image

    from stylekit.pipelines.video_style_transfer import gray_tile

    tile = np.asarray(gray_tile(Image.fromarray(moving_video(1, size=64)[0]), 32, 32))
    assert (
        tile.shape == (32, 32, 3)
        and (tile[..., 0] == tile[..., 1]).all()
        and (tile[..., 1] == tile[..., 2]).all()
    )
    torch.manual_seed(0)
    controlnet = ControlNetModel.from_unet(video_pipe.unet).eval()
    with torch.no_grad():  # a fresh ControlNet outputs zeros (zero convolutions); make it act
        for conv in [*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block]:
            conv.weight.normal_(0, 0.05)
    video = moving_video(4)
    plain = run(video_pipe, video, style, motion_adapter=adapter)
    controlled = run(
        video_pipe, video, style, motion_adapter=adapter, controlnet=controlnet, control_guidance_end=0.5
    )
    assert controlled.frames.shape == plain.frames.shape and not np.allclose(
        controlled.frames, plain.frames, atol=1e-4
    )
    with pytest.raises(TypeError, match="ControlNetModel"):
        run(video_pipe, video, style, controlnet=adapter)


def test_motion_scale(video_pipe, adapter, style):
    """0 = the spatial UNet alone (the run without an adapter), 1 = as trained, between: a third result."""
    video = moving_video(4)

    def scaled(scale=None, motion_adapter=adapter):
        extra = {} if scale is None else {"motion_scale": scale}
        return run(
            video_pipe, video, style, motion_adapter=motion_adapter, window_size=4, window_overlap=0, **extra
        )

    plain, full = scaled(motion_adapter=None), scaled()
    np.testing.assert_array_equal(scaled(1.0).frames, full.frames)
    np.testing.assert_allclose(scaled(0.0).frames, plain.frames, atol=1e-5)
    half = scaled(0.5)
    assert not np.allclose(half.frames, full.frames, atol=1e-4)
    assert not np.allclose(half.frames, plain.frames, atol=1e-4)
    motion = video_pipe._motion_cache.get(video_pipe.unet, adapter)
    assert not any(m._forward_hooks for m in motion.modules() if type(m).__name__.endswith("3D"))
    with pytest.raises(ValueError, match="no motion adapter"):
        scaled(0.5, motion_adapter=None)
    with pytest.raises(ValueError, match="motion_scale"):
        scaled(-1.0)


def test_scaled_motion_modules_zero_equals_zeroed_temporal_layers(tiny_sd, adapter):
    """Scale 0 is exactly a motion UNet whose temporal layers add nothing (zero ``proj_out``); hooks are
    removed on exit, also when the call fails."""
    import copy

    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    from stylekit.video_models import motion_unet, scaled_motion_modules

    model = motion_unet(tiny_sd.unet, adapter)
    zeroed = copy.deepcopy(model)
    for module in zeroed.modules():
        if isinstance(module, AnimateDiffTransformer3D):
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    sample = torch.randn(1, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    hidden = torch.randn(3, 77, model.config.cross_attention_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(sample, 10, encoder_hidden_states=hidden).sample
        with scaled_motion_modules(model, 0.0):
            off = model(sample, 10, encoder_hidden_states=hidden).sample
        expected = zeroed(sample, 10, encoder_hidden_states=hidden).sample
        with pytest.raises(RuntimeError), scaled_motion_modules(model, 0.5):
            model(sample[:, :2], 10, encoder_hidden_states=hidden)  # 2 channels: the UNet fails
        again = model(sample, 10, encoder_hidden_states=hidden).sample
    torch.testing.assert_close(off, expected, rtol=0, atol=0)
    assert not torch.allclose(full, off, atol=1e-4)
    torch.testing.assert_close(again, full, rtol=0, atol=0)  # the hooks are gone
    with pytest.raises(ValueError, match="no motion modules"), scaled_motion_modules(tiny_sd.unet, 0.5):
        pass
