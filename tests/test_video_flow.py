"""Optical flow of the source video and flow-guided temporal fusion (tiny-sd, 32 px, 2 steps)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image

from stylekit.video_io import read_video
from stylekit.video_metrics import warp_error

pytest.importorskip("cv2")

from stylekit.video_flow import TemporalFusion, consistency_mask, estimate_flow, warp  # noqa: E402

SIZE = 32
STEPS = 2


def texture(size: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB texture (uint8 (size, size, 3)): trackable at every pixel."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (size // 4, size // 4, 3)).astype(np.float32)
    import cv2

    return np.clip(cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)


def translating(frames: int, size: int, step: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Frames of a texture moving by ``step = (dx, dy)`` pixels per frame (uint8 (T, S, S, 3))."""
    dx, dy = step
    pad = max(abs(dx), abs(dy)) * frames
    big = texture(size + 2 * pad, seed)
    return np.stack(
        [big[pad - t * dy : pad - t * dy + size, pad - t * dx : pad - t * dx + size] for t in range(frames)]
    )


def test_flow_recovers_translation_and_masks_uncovered_border():
    dx, dy = 3, -2
    first, second = translating(2, 64, (dx, dy))
    forward = estimate_flow(first, second)
    backward = estimate_flow(second, first)
    inner = (slice(10, -10), slice(10, -10))
    epe = np.linalg.norm(forward[inner] - np.array([dx, dy]), axis=-1).mean()
    assert epe < 0.5, epe
    assert np.linalg.norm(backward[inner] + np.array([dx, dy]), axis=-1).mean() < 0.5
    mask = consistency_mask(forward, backward)
    assert mask[inner].mean() > 0.95
    # frame 2's content entering from the left (dx > 0) and bottom (dy < 0) was not in frame 1
    assert mask[:, :dx].mean() < 0.1
    assert mask[dy:, :].mean() < 0.1
    assert mask[:dy, dx:].mean() > 0.9
    # warping frame 1 along the backward flow reproduces frame 2 inside
    warped = warp(first.astype(np.float32) / 255, backward)
    inside = np.abs(warped - second / 255.0)[inner].mean()
    assert inside < 0.25 * np.abs(first / 255.0 - second / 255.0)[inner].mean()
    assert inside < 0.02


def test_bad_inputs():
    with pytest.raises(ValueError, match="temporal_fusion"):
        TemporalFusion(1.5)
    with pytest.raises(ValueError, match="shapes"):
        estimate_flow(texture(16), texture(32))
    frames = translating(3, 16, (1, 0)).astype(np.float32) / 255
    assert TemporalFusion(0.0)(frames, translating(3, 16, (1, 0))) is frames


@pytest.fixture(scope="module")
def video_pipe(tiny_sd):
    from stylekit.pipelines import VideoStyleTransferPipeline

    pipe = VideoStyleTransferPipeline.from_pipe(tiny_sd)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, video, **kwargs):
    style = make_image(7, size=SIZE)
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np", **kwargs}
    return pipe(video, style, **kwargs).frames


def test_fusion_lowers_warp_error_across_windows_and_zero_is_identical(video_pipe, tmp_path):
    step = (1, 1)
    video = translating(8, SIZE, step, seed=1)
    flow = np.broadcast_to(np.array(step, dtype=np.float32), (7, SIZE, SIZE, 2)).copy()
    masks = np.zeros((8, 0, SIZE, SIZE), dtype=bool)
    windows = {"window_size": 4, "window_overlap": 1}
    plain = run(video_pipe, video, **windows)
    assert np.array_equal(plain, run(video_pipe, video, temporal_fusion=0.0, **windows))
    fused = run(video_pipe, video, temporal_fusion=0.8, output_path=tmp_path / "out", **windows)
    streamed = read_video(tmp_path / "out").frames  # written window by window, fused
    assert np.array_equal(streamed, np.round(np.clip(fused, 0, 1) * 255).astype(np.uint8))
    assert not np.array_equal(plain[1:], fused[1:])
    assert np.array_equal(plain[0], fused[0])  # frame 0 has no past
    assert warp_error(fused, flow, masks) < 0.7 * warp_error(plain, flow, masks)


def test_fusion_keeps_the_outside_of_regions_exact(video_pipe):
    from stylekit import StyleCondition

    video = translating(4, SIZE, (1, 0), seed=2)
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[:, :12] = 255
    style = StyleCondition(image=make_image(7, size=SIZE), mask=mask)
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "np"}
    plain = video_pipe(video, style, **kwargs).frames
    fused = video_pipe(video, style, temporal_fusion=1.0, **kwargs).frames
    assert np.array_equal(plain[:, :, 20:], fused[:, :, 20:])
    assert not np.array_equal(plain[1:, :, :12], fused[1:, :, :12])


def test_bad_temporal_fusion_refused_before_model_work(video_pipe):
    calls = []
    handle = video_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for bad in (-0.1, 1.5, True, "strong", float("nan")):
            with pytest.raises(ValueError, match="temporal_fusion"):
                run(video_pipe, translating(2, SIZE, (1, 0)), temporal_fusion=bad)
        with pytest.raises(ValueError, match="temporal_fusion"):
            run(video_pipe, translating(2, SIZE, (1, 0)), temporal_fusion=0.5, output_type="latent")
    finally:
        handle.remove()
    assert calls == []


def test_cli_refuses_bad_temporal_fusion(tmp_path, capsys):
    from stylekit.video_cli import main

    assert main([str(tmp_path / "in.mp4"), "--style", "s.png", "-o", "o.mp4", "--temporal-fusion", "2"]) == 2
    assert "temporal_fusion" in capsys.readouterr().err
