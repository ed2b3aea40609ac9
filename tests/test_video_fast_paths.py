"""The video pipeline's speed-ups change nothing: the fast processor swap installs and restores exactly what
``set_attn_processor`` would, and the pipeline's output equals the reference (pre-optimisation) path."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import make_image

import stylekit.pipelines.video_style_transfer as video_module
from stylekit.video_attention import CrossFrameProcessor, CrossFrameState, cross_frame_processors
from stylekit.video_models import motion_unet, tiny_motion_adapter

SIZE, STEPS, FRAMES = 32, 2, 4


@contextmanager
def reference_cross_frame_processors(unet, layers, state):
    """The original implementation: a full ``set_attn_processor`` install and restore."""
    saved = dict(unet.attn_processors)
    replaced = dict(saved)
    for name in layers:
        replaced[name] = CrossFrameProcessor(name, state, saved[name])
    unet.set_attn_processor(replaced)
    try:
        yield
    finally:
        unet.set_attn_processor(saved)


@pytest.fixture(scope="module")
def adapter(tiny_sd):
    return tiny_motion_adapter(tiny_sd.unet, motion_max_seq_length=8)


@pytest.fixture(scope="module")
def video_pipe(tiny_sd, adapter):
    from stylekit.pipelines import VideoStyleTransferPipeline

    pipe = VideoStyleTransferPipeline.from_pipe(tiny_sd, motion_adapter=adapter)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_fast_swap_installs_and_restores_like_set_attn_processor(tiny_sd, adapter):
    unet = motion_unet(tiny_sd.unet, adapter)
    before = dict(unet.attn_processors)
    layers = [name for name in before if name.endswith("attn1.processor") and "motion" not in name][::2]
    state = CrossFrameState()
    with reference_cross_frame_processors(unet, layers, state):
        expected = dict(unet.attn_processors)
    with cross_frame_processors(unet, layers, state):
        fast = dict(unet.attn_processors)
    assert fast.keys() == expected.keys()
    for name, processor in fast.items():
        assert type(processor) is type(expected[name])
        if name in layers:
            assert processor.layer == name and processor.fallback is before[name]
        else:
            assert processor is before[name]
    assert all(p is before[n] for n, p in unet.attn_processors.items())
    with pytest.raises(RuntimeError, match="boom"), cross_frame_processors(unet, layers, state):
        raise RuntimeError("boom")
    assert all(p is before[n] for n, p in unet.attn_processors.items())


@pytest.mark.parametrize("cross_frame", [True, "all"])
def test_pipeline_equals_reference_path(video_pipe, monkeypatch, cross_frame):
    base = make_image(3, size=SIZE + FRAMES)
    video = np.stack([base[t : t + SIZE, t : t + SIZE] for t in range(FRAMES)])
    style = make_image(7, size=SIZE)
    kwargs = {"num_inference_steps": STEPS, "height": SIZE, "width": SIZE, "output_type": "latent"}
    kwargs.update(cross_frame=cross_frame, window_size=FRAMES, window_overlap=1, cache=False)
    fast = video_pipe(video, style, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(video_module, "cross_frame_processors", reference_cross_frame_processors)
        # always store frame 0's K/V, as before (the fast path skips it for a single window)
        patch.setattr(
            CrossFrameState, "keep_first", property(lambda s: True, lambda s, v: None), raising=False
        )
        reference = video_pipe(video, style, **kwargs)
    assert torch.equal(fast.frames, reference.frames)
    # no cache: the style and every frame are inverted, then every frame is sampled, one row per step each
    assert fast.unet_evals == reference.unet_evals == STEPS * (FRAMES + 1) + STEPS * FRAMES
