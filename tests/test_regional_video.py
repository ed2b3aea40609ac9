"""Regional style in ``VideoStyleTransferPipeline``: masked styles per frame, the outside kept as each frame's
VAE reconstruction; sliding windows, cross-frame attention and a motion adapter; LoRA and style-token regions;
region token masks under cross_frame="all"; refusals before model work.
tiny-sd + a tiny MotionAdapter, 32 px, 2 steps, 2-6 frames."""

from __future__ import annotations

import numpy as np
import pytest
import test_regional_conditions as regional_tests
import test_video_pipelines as video_tests
import torch
from PIL import Image
from test_regional_conditions import assert_same, snapshot
from test_video_pipelines import SIZE, STEPS, moving_video, run

from stylekit import StyleCondition
from stylekit.attention.conditioner import encode_latents
from stylekit.images import to_tensor
from stylekit.pipelines.video_style_transfer import video_regions
from stylekit.regions import MaskSpec
from stylekit.tokens import AdapterCompatibilityError, StyleTokenAdapter

# The video tests' fixtures (tiny-sd video pipeline, tiny motion adapter, style image), reused.
video_pipe, adapter, style = video_tests.video_pipe, video_tests.adapter, video_tests.style


def reconstructions(pipe, video: np.ndarray) -> np.ndarray:
    """Each frame's VAE round trip, (F, H, W, 3) in [0, 1]."""
    with torch.no_grad():
        pixels = torch.stack([to_tensor(Image.fromarray(frame)) for frame in video])
        decoded = pipe.vae.decode(encode_latents(pipe.vae, pixels) / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="np")


def moving_squares(frames: int, size: int = SIZE) -> np.ndarray:
    """bool (F, H, W): a square moving right by one pixel per frame (frame-indexed masks)."""
    masks = np.zeros((frames, size, size), bool)
    for t in range(frames):
        masks[t, 6:22, 4 + t : 20 + t] = True
    return masks


@pytest.fixture(scope="module")
def other_style():
    from conftest import make_image

    return make_image(11, size=SIZE)


def test_outside_is_the_reconstruction_inside_changes(video_pipe, style):
    video = moving_video(4)
    masks = moving_squares(4)
    recon = reconstructions(video_pipe, video)
    plain = run(video_pipe, video, style, cache=False).frames
    out = run(video_pipe, video, StyleCondition(image=style, mask=masks), cache=False).frames
    assert out.shape == (4, SIZE, SIZE, 3)
    np.testing.assert_allclose(out[~masks], recon[~masks], atol=1e-5)  # outside: each frame's reconstruction
    inside = np.abs(out - recon)[masks].mean()
    assert inside > 0.5 * np.abs(plain - recon)[masks].mean() > 0  # inside: styled
    with pytest.warns(UserWarning, match="empty"):
        empty = run(video_pipe, video, StyleCondition(image=style, mask=np.zeros((SIZE, SIZE))), cache=False)
    np.testing.assert_allclose(empty.frames, recon, atol=1e-5)  # no region: the content is kept


def test_two_regions_two_styles(video_pipe, style, other_style):
    video = moving_video(3)
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    plain_a = run(video_pipe, video, style, cache=False).frames
    plain_b = run(video_pipe, video, other_style, cache=False).frames
    both = run(
        video_pipe,
        video,
        [StyleCondition(image=style, mask=left), StyleCondition(image=other_style, mask=~left)],
        cache=False,
    )
    out = both.frames
    core_left, core_right = np.s_[:, :, :10], np.s_[:, :, 22:]
    assert np.abs(out - plain_a)[core_left].mean() < np.abs(out - plain_b)[core_left].mean()
    assert np.abs(out - plain_b)[core_right].mean() < np.abs(out - plain_a)[core_right].mean()
    # one stream per style: 2 x 3 frames sampled per step; inversion: 3 frames + 2 styles per step
    assert both.unet_evals == 2 * 3 * STEPS + (3 + 2) * STEPS


def test_full_mask_equals_unmasked_transfer(video_pipe, adapter, style):
    video = moving_video(4)
    settings = {"motion_adapter": adapter, "window_size": 8}
    plain = run(video_pipe, video, style, **settings).frames
    full = run(video_pipe, video, StyleCondition(image=style, mask=np.ones((SIZE, SIZE))), **settings).frames
    np.testing.assert_array_equal(full, plain)


def test_masks_with_sliding_windows_and_motion_adapter(video_pipe, adapter, style):
    video = moving_video(6)
    masks = moving_squares(6)
    before = dict(video_pipe.unet.attn_processors)
    settings = {"motion_adapter": adapter, "window_size": 4, "window_overlap": 2}
    result = run(video_pipe, video, StyleCondition(image=style, mask=MaskSpec(list(masks))), **settings)
    assert result.windows == [(0, 4), (2, 6)] and result.frames.shape == (6, SIZE, SIZE, 3)
    recon = reconstructions(video_pipe, video)
    out = result.frames
    np.testing.assert_allclose(out[~masks], recon[~masks], atol=1e-5)
    assert np.abs(out - recon)[masks].mean() > 1e-2
    after = video_pipe.unet.attn_processors
    assert all(after[k] is before[k] for k in before)
    # every window equals the windowed unmasked run where the mask covers everything (same settings)
    plain = run(video_pipe, video, style, **settings).frames
    full = run(video_pipe, video, StyleCondition(image=style, mask=np.ones((6, SIZE, SIZE))), **settings)
    np.testing.assert_allclose(full.frames, plain, atol=1e-5)


def test_bad_masks_are_refused_before_model_work(video_pipe, style):
    calls = []
    handle = video_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="got masks for 3 frames, but the video has 8 frames"):
            run(video_pipe, moving_video(8), StyleCondition(image=style, mask=moving_squares(3)))
        with pytest.raises(ValueError, match="different aspect ratio"):
            run(video_pipe, moving_video(2), StyleCondition(image=style, mask=np.ones((SIZE, 2 * SIZE))))
        with pytest.raises(ValueError, match=r"style\[1\]: video style transfer needs"):
            run(video_pipe, moving_video(2), [style, StyleCondition(text="ink")])
    finally:
        handle.remove()
    assert calls == [], "model work started before the masks were refused"


def test_frame_masks_follow_max_frames():
    masks = moving_squares(8)
    regional = video_regions([StyleCondition(image=np.zeros((4, 4, 3)), mask=masks)], 4, 8, (SIZE, SIZE))
    assert len(regional.sources[0]) == 4 and np.array_equal(regional.sources[0][3], masks[3])
    assert video_regions([StyleCondition(image=np.zeros((4, 4, 3)))], 4, 4, (SIZE, SIZE)) is None


def test_cli_mask_folder(video_pipe, tmp_path, capsys):
    from stylekit.video_cli import main
    from stylekit.video_io import read_video, write_video

    video, masks = moving_video(3), moving_squares(3)
    write_video(tmp_path / "in", video, fps=5)  # a folder of PNG frames: lossless
    (tmp_path / "masks").mkdir()
    for t, mask in enumerate(masks):
        Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "masks" / f"m{t}.png")
    Image.fromarray(moving_video(1)[0][::-1]).save(tmp_path / "style.png")
    args = [str(tmp_path / "in"), "--style", str(tmp_path / "style.png"), "--model", "tiny-sd"]
    common = ["--steps", str(STEPS), "--size", str(SIZE), "--window", "2", "--overlap", "1", "--quiet"]
    assert main([*args, "--mask", str(tmp_path / "masks"), "-o", str(tmp_path / "out"), *common]) == 0
    out = read_video(tmp_path / "out").frames.astype(np.float32) / 255
    recon = reconstructions(video_pipe, read_video(tmp_path / "in").frames)
    assert out.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(out[~masks], recon[~masks], atol=1 / 255 + 1e-5)  # uint8 rounding only
    assert np.abs(out - recon)[masks].mean() > 1e-2
    (tmp_path / "masks" / "m2.png").unlink()
    capsys.readouterr()
    assert main([*args, "--mask", str(tmp_path / "masks"), "-o", str(tmp_path / "bad.mp4"), *common]) == 2
    assert "got masks for 2 frames, but the video has 3 frames" in capsys.readouterr().err
    assert not (tmp_path / "bad.mp4").exists()


# ------------------------------------------------------------------------------- LoRA / token regions
# The image pipeline's regional fixtures (random LoRA files, a "trained" style-token adapter), reused: the
# video pipeline shares tiny_sd's UNet.
loras, token_adapter = regional_tests.loras, regional_tests.token_adapter


def test_lora_and_token_regions_in_a_video(video_pipe, loras, token_adapter, style):
    video = moving_video(3)
    masks = moving_squares(3)
    recon = reconstructions(video_pipe, video)
    before = snapshot(video_pipe)
    lora = run(video_pipe, video, StyleCondition(lora=loras["a"], mask=masks), cache=False).frames
    np.testing.assert_allclose(lora[~masks], recon[~masks], atol=1e-5)  # outside: each frame's reconstruction
    assert np.abs(lora - recon)[masks].mean() > 0.02  # inside: the LoRA's rendering
    embedding = torch.randn(16, generator=torch.Generator().manual_seed(3))
    region = StyleCondition(embedding=embedding, mask=masks)
    tokens = run(video_pipe, video, region, style_token_adapter=token_adapter, cache=False).frames
    np.testing.assert_allclose(tokens[~masks], recon[~masks], atol=1e-5)
    # An untrained adapter (zero value projections) leaves the stream the frames' DDIM reconstruction.
    untrained = StyleTokenAdapter.for_unet(video_pipe.unet, 16, video_pipe.text_encoder)
    base = run(video_pipe, video, region, style_token_adapter=untrained, cache=False).frames
    assert np.abs(tokens - base)[masks].mean() > 1e-3
    np.testing.assert_allclose(base[~masks], recon[~masks], atol=1e-5)

    def boom(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    both = [StyleCondition(lora=loras["a"], embedding=embedding, mask=masks)]
    with pytest.raises(RuntimeError, match="boom"):  # a failing call restores the UNet too
        run(video_pipe, video, both, style_token_adapter=token_adapter, callback_on_step_end=boom)
    assert_same(before, snapshot(video_pipe))
    assert not getattr(video_pipe.unet, "peft_config", None)


def test_styleid_and_lora_regions_with_windows_and_cross_frame_all(video_pipe, loras, style):
    """One call, three checks: a StyleID and a LoRA region side by side, sliding windows (the adapters
    carried into every window), cross_frame="all" (token masks on the anchored injection)."""
    video = moving_video(3)
    left = np.zeros((SIZE, SIZE), bool)
    left[:, : SIZE // 2] = True
    middle = np.zeros_like(left)
    middle[6:26, 6:26] = True
    styleid_region, lora_region = left & middle, ~left & middle
    recon = reconstructions(video_pipe, video)
    before = snapshot(video_pipe)
    regions = [
        StyleCondition(image=style, mask=styleid_region),
        StyleCondition(lora=loras["a"], mask=lora_region),
    ]
    settings = {"cross_frame": "all", "window_size": 2, "window_overlap": 1, "cache": False}
    result = run(video_pipe, video, regions, **settings)
    out = result.frames
    assert result.windows == [(0, 2), (1, 3)] and out.shape == (3, SIZE, SIZE, 3)
    np.testing.assert_allclose(out[:, ~middle], recon[:, ~middle], atol=1e-5)
    for region in (styleid_region, lora_region):
        assert np.abs(out - recon)[:, region].mean() > 1e-2
    assert_same(before, snapshot(video_pipe))
    assert not getattr(video_pipe.unet, "peft_config", None)


def test_adain_skips_image_free_streams(video_pipe, loras, style):
    """A LoRA stream starts from the frames' own inverted latents: with the StyleID region muted (weight 0),
    the output is the LoRA stream alone, whatever the AdaIN mode and the image its slot borrows."""
    video = moving_video(2)
    everywhere = np.ones((SIZE, SIZE))
    alone = run(video_pipe, video, StyleCondition(lora=loras["a"], mask=everywhere), cache=False).frames
    for adain in (True, "frame"):
        beside = run(
            video_pipe,
            video,
            [StyleCondition(image=style, weight=0.0), StyleCondition(lora=loras["a"], mask=everywhere)],
            adain=adain,
            cache=False,
        ).frames
        np.testing.assert_allclose(beside, alone, atol=1e-4)


def test_lora_and_token_regions_with_a_motion_adapter(video_pipe, adapter, loras, token_adapter, style):
    """With a motion adapter the motion UNet samples every stream as one video: the per-row LoRA / tokens
    must follow the rows through its (videos, C, frames, h, w) batch. A LoRA stream beside a muted StyleID
    stream equals the LoRA stream alone (so the LoRA rows are the right ones), outside the regions stays
    the reconstruction, the motion layers act, and both UNets are restored."""
    from types import SimpleNamespace

    video, masks = moving_video(3), moving_squares(3)
    everywhere = np.ones((SIZE, SIZE))
    recon = reconstructions(video_pipe, video)
    motion = {"motion_adapter": adapter, "cache": False}
    run(video_pipe, video, style, **motion)  # builds the cached motion UNet before the snapshots
    motion_unet = SimpleNamespace(unet=video_pipe._motion_cache.get(video_pipe.unet, adapter))
    before = snapshot(video_pipe), snapshot(motion_unet)
    alone = run(video_pipe, video, StyleCondition(lora=loras["a"], mask=everywhere), **motion).frames
    beside = run(
        video_pipe,
        video,
        [StyleCondition(image=style, weight=0.0), StyleCondition(lora=loras["a"], mask=everywhere)],
        **motion,
    ).frames
    np.testing.assert_allclose(beside, alone, atol=1e-4)
    no_motion = run(video_pipe, video, StyleCondition(lora=loras["a"], mask=everywhere), cache=False).frames
    assert np.abs(alone - no_motion).mean() > 1e-3  # the temporal layers act on the LoRA stream
    lora = run(video_pipe, video, StyleCondition(lora=loras["a"], mask=masks), **motion).frames
    np.testing.assert_allclose(lora[~masks], recon[~masks], atol=1e-5)
    assert np.abs(lora - recon)[masks].mean() > 0.02
    embedding = torch.randn(16, generator=torch.Generator().manual_seed(3))
    region = StyleCondition(embedding=embedding, mask=masks)
    tokens = run(video_pipe, video, region, style_token_adapter=token_adapter, **motion).frames
    untrained = StyleTokenAdapter.for_unet(video_pipe.unet, 16, video_pipe.text_encoder)
    base = run(video_pipe, video, region, style_token_adapter=untrained, **motion).frames
    np.testing.assert_allclose(tokens[~masks], recon[~masks], atol=1e-5)
    assert np.abs(tokens - base)[masks].mean() > 1e-3  # the tokens act through the motion UNet
    both = StyleCondition(lora=loras["a"], embedding=embedding, mask=masks)  # LoRA on the token rows too
    mixed = run(video_pipe, video, both, style_token_adapter=token_adapter, **motion).frames
    np.testing.assert_allclose(mixed[~masks], recon[~masks], atol=1e-5)
    assert min(np.abs(mixed - lora)[masks].mean(), np.abs(mixed - tokens)[masks].mean()) > 1e-3
    assert_same(before[0], snapshot(video_pipe))
    assert_same(before[1], snapshot(motion_unet))
    assert not getattr(motion_unet.unet, "peft_config", None)


def test_image_free_regions_refused_before_model_work(video_pipe, adapter, loras, token_adapter, style):
    video, masks = moving_video(2), moving_squares(2)
    before = snapshot(video_pipe)
    calls = []
    handle = video_pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match=r"style\[0\]: video style transfer needs StyleCondition.image"):
            run(video_pipe, video, StyleCondition(lora=loras["a"]))  # no mask anywhere: plain StyleID
        with pytest.raises(ValueError, match=r"style\[1\]\.lora: cannot read"):
            run(video_pipe, video, [style, StyleCondition(lora=loras["garbage"], mask=masks)])
        with pytest.raises(ValueError, match=r"style\[0\]\.lora: .*another architecture"):
            run(video_pipe, video, StyleCondition(lora=loras["wide"], mask=masks))
        with pytest.raises(AdapterCompatibilityError, match=r"style\[0\]\.embedding has shape \(12,\)"):
            run(
                video_pipe,
                video,
                StyleCondition(embedding=torch.ones(12), mask=masks),
                style_token_adapter=token_adapter,
            )
        with pytest.raises(ValueError, match="styleid-official"):
            run(video_pipe, video, StyleCondition(lora=loras["a"], mask=masks), layers="styleid-official")
        with pytest.raises(ValueError, match="got masks for 3 frames, but the video has 2 frames"):
            run(video_pipe, video, StyleCondition(lora=loras["a"], mask=moving_squares(3)))
    finally:
        handle.remove()
    assert calls == [], "model work started before the input was refused"
    assert_same(before, snapshot(video_pipe))


# ------------------------------------------------------------------------------- cross_frame="all"
def test_anchored_injection_applies_the_region_token_masks():
    """On its mask's tokens a row gets the anchored injection; elsewhere the plain cross-frame attention."""
    from types import SimpleNamespace

    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from stylekit.attention.injection import StyleInjectionProcessor
    from stylekit.video_attention import AnchoredInjectionProcessor, CrossFrameProcessor, CrossFrameState

    torch.manual_seed(0)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    videos, frames, side = 2, 3, 4
    hidden = torch.randn(videos * frames, side * side, 8)
    style_k, style_v = torch.randn(2, side * side, 8), torch.randn(2, side * side, 8)

    def injected(layer, q, k, v):  # query preservation-like query, the row's style K/V
        per_row = torch.arange(len(q)) // frames
        return 0.5 * q, style_k[per_row], style_v[per_row]

    ctrl = SimpleNamespace(
        mode="inject",
        injecting=True,
        injected=injected,
        token_masks=None,
        settings=SimpleNamespace(backend="math"),
    )
    state = CrossFrameState(("first", "previous"))
    state.frames = frames
    anchored = AnchoredInjectionProcessor(StyleInjectionProcessor("layer", ctrl, AttnProcessor2_0()), state)
    cross = CrossFrameProcessor("layer", state, AttnProcessor2_0())
    masks = torch.zeros(videos * frames, side, side)
    masks[:, :, :2] = 1.0  # left half of every row's tokens
    masks[1] = 0.0  # one row entirely outside: no injection there
    styled, plain = anchored(attn, hidden), cross(attn, hidden)
    ctrl.token_masks = masks
    restricted = anchored(attn, hidden)
    inside = masks.flatten(1).bool()
    torch.testing.assert_close(restricted[inside], styled[inside])
    torch.testing.assert_close(restricted[~inside], plain[~inside])
    assert (styled - plain)[~inside].abs().max() > 1e-3  # the restriction changed something


def test_region_context_one_in_a_windowed_video(video_pipe, adapter, style):
    """``region_context=1`` in video: inside the masks each frame is the unmasked transfer's frame, outside the
    frame's reconstruction (sliding windows and the motion adapter included)."""
    video = moving_video(6)
    masks = moving_squares(6)
    settings = {"motion_adapter": adapter, "window_size": 4, "window_overlap": 2, "cache": False}
    plain = run(video_pipe, video, style, **settings).frames
    out = run(
        video_pipe, video, StyleCondition(image=style, mask=masks), region_context=1.0, **settings
    ).frames
    np.testing.assert_allclose(out[masks], plain[masks], atol=1e-5)
    np.testing.assert_allclose(out[~masks], reconstructions(video_pipe, video)[~masks], atol=1e-5)
