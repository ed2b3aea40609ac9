"""Regional style: masks in any form, one style per region, the outside kept as the content's
reconstruction, frame-indexed masks; SD and SDXL tiny pipelines."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit import StyleCondition
from stylekit.attention.conditioner import encode_latents
from stylekit.attention.injection import token_mask
from stylekit.data import render_video, sample_content, sample_motion, sample_style, sample_world
from stylekit.images import to_tensor
from stylekit.regions import (
    Polygon,
    RegionalStyle,
    feather_mask,
    fit_mask,
    load_mask,
    load_masks,
    mask_array,
)


# ----------------------------------------------------------------------------------------------- masks
def test_mask_array_reads_every_mode(tmp_path):
    square = np.zeros((8, 12), bool)
    square[2:6, 3:9] = True
    u8 = square.astype(np.uint8) * 255
    u16 = square.astype(np.uint16) * 65535
    rgba = np.zeros((8, 12, 4), np.uint8)
    rgba[..., 3] = u8  # the alpha channel is the mask when it is not opaque
    Image.fromarray(u8).save(tmp_path / "mask.png")
    sources = [
        square,
        u8,
        u16,
        square.astype(np.float32),
        square.astype(np.int64),  # numpy's default integers: 0/1 ...
        square.astype(np.int64) * 255,  # ... and 0/255 (were read as empty: scaled by int64's maximum)
        torch.from_numpy(square),
        Image.fromarray(u8),
        Image.fromarray(u16),
        Image.fromarray(rgba),
        Image.fromarray(np.stack([u8] * 3, -1)),
        tmp_path / "mask.png",
        str(tmp_path / "mask.png"),
        Polygon(((3, 2), (9, 2), (9, 6), (3, 6)), size=(12, 8)),
    ]
    for source in sources:
        np.testing.assert_array_equal(mask_array(source), square, err_msg=type(source).__name__)
    grey = np.full((4, 4), 100, np.uint8)
    assert not mask_array(grey).any() and mask_array(grey, threshold=0.3).all()  # 100/255 = 0.39


def test_bad_masks_are_refused():
    with pytest.raises(ValueError, match="mask: expected a 2-D"):
        mask_array(np.zeros((2, 3, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        mask_array(np.full((4, 4), np.nan))
    with pytest.raises(TypeError, match="expected a path, PIL image"):
        mask_array(3.5)
    with pytest.raises(FileNotFoundError, match="no such mask file"):
        mask_array("missing.png")
    with pytest.raises(ValueError, match="threshold"):
        mask_array(np.ones((4, 4)), threshold=0)
    with pytest.raises(ValueError, match="at least 3"):
        Polygon(((0, 0), (1, 1)))


def test_fit_feather_and_frames():
    half = np.zeros((32, 32), bool)
    half[:, 16:] = True
    fitted = fit_mask(half, 64, 64)  # another size: resized like the content
    assert fitted.shape == (64, 64) and fitted[:, :32].sum() == 0 and fitted[:, 32:].all()
    wide = fit_mask(np.ones((10, 20)), 16, 16)  # cover + centre crop, as fit_to_size does for images
    assert wide.shape == (16, 16) and wide.all()
    soft = feather_mask(fitted, 3)
    assert soft[:, :32].sum() == 0 and soft.max() == 1 and 0 < soft[0, 32] < 1  # inward: outside untouched
    assert torch.equal(load_mask(half, 64, 64, feather=3), soft)
    triangle = fit_mask(Polygon(((0, 0), (1, 0), (0, 1))), 20, 20)  # fractions of the output
    assert triangle[1, 1] == 1 and triangle[18, 18] == 0
    frames = load_masks(np.stack([half, ~half, half]), 3, 16, 16)
    assert (
        frames.shape == (3, 16, 16)
        and torch.equal(frames[0], frames[2])
        and not torch.equal(frames[0], frames[1])
    )
    assert load_masks(half, 4, 16, 16).shape == (4, 16, 16)  # one mask for every frame
    with pytest.raises(ValueError, match="masks for 3 frames, but there are 5 frames"):
        load_masks([half, half, half], 5, 16, 16)


def test_token_mask_follows_each_level():
    masks = torch.zeros(2, 8, 8)
    masks[0, :, 4:] = 1
    assert token_mask(masks, 64).shape == (2, 64, 1)
    level = token_mask(masks, 16)[0, :, 0].view(4, 4)
    assert torch.equal(level[:, 2:], torch.ones(4, 2)) and level[:, :2].sum() == 0
    assert token_mask(torch.ones(1, 5, 5), 9).shape == (1, 9, 1)  # odd sizes round up (5 -> 3)
    with pytest.raises(ValueError, match="cannot map"):
        token_mask(masks, 10)


# ----------------------------------------------------------------------------------------------- pipelines
def run(pipe, content, style, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "np")
    return pipe(content_image=content, style=style, cache=False, **kwargs)


def reconstruction(pipe, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        latents = encode_latents(pipe.vae, to_tensor(Image.fromarray(image))[None])
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="np")[0]


@pytest.fixture(scope="module")
def world():
    """A world image with large objects, its exact object mask, and two style images."""
    for seed in range(50):
        sample = sample_world(np.random.default_rng(seed), 3, size=64)
        mask = sample.masks[0].any(0)
        if 0.25 < mask.mean() < 0.6:
            return sample.images[0], mask, sample.images[1], sample.images[2]
    raise AssertionError("no suitable world image")


def test_full_empty_and_exact_world_masks(tiny_sd, world):
    content, mask, style, _ = world
    plain = run(tiny_sd, content, style).images
    full = run(tiny_sd, content, StyleCondition(image=style, mask=np.ones((16, 16)))).images
    np.testing.assert_array_equal(full, plain)  # a mask over everything is whole-image transfer
    recon = reconstruction(tiny_sd, content)
    with pytest.warns(UserWarning, match="empty"):
        empty = run(tiny_sd, content, StyleCondition(image=style, mask=np.zeros((64, 64)))).images
    np.testing.assert_allclose(empty[0], recon, atol=1e-5)  # no region: the content's reconstruction
    result = run(tiny_sd, content, StyleCondition(image=style, mask=mask))
    out = result.images[0]
    assert result.pairs == [(0, -1)] and out.shape == (64, 64, 3)
    np.testing.assert_allclose(out[~mask], recon[~mask], atol=1e-5)  # outside: the content
    inside_change = np.abs(out - recon)[mask].mean()
    assert inside_change > 0.5 * np.abs(plain[0] - recon)[mask].mean() > 0  # inside: styled


def test_two_regions_two_styles_and_weights(tiny_sd, world):
    content, _, style_a, style_b = world
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    plain_a = run(tiny_sd, content, style_a).images[0]
    plain_b = run(tiny_sd, content, style_b).images[0]
    both = run(
        tiny_sd,
        content,
        [StyleCondition(image=style_a, mask=left), StyleCondition(image=style_b, mask=~left)],
    )
    out = both.images[0]
    core_left, core_right = (slice(None), slice(4, 24)), (slice(None), slice(40, 60))
    assert (
        np.abs(out[core_left] - plain_a[core_left]).mean()
        < np.abs(out[core_left] - plain_b[core_left]).mean()
    )
    assert (
        np.abs(out[core_right] - plain_b[core_right]).mean()
        < np.abs(out[core_right] - plain_a[core_right]).mean()
    )
    assert both.unet_evals == 2 * 3 + 3 * 3  # sampling: 2 rows x 3 steps; inversion: 3 images x 3 steps
    # Overlap blends by weight: a weight-0 region contributes nothing.
    alone = run(tiny_sd, content, StyleCondition(image=style_a, mask=left)).images[0]
    muted = run(
        tiny_sd,
        content,
        [StyleCondition(image=style_a, mask=left), StyleCondition(image=style_b, weight=0.0)],
    ).images[0]
    np.testing.assert_allclose(muted, alone, atol=1e-5)
    ones = np.ones((64, 64))
    blended = run(tiny_sd, content, [StyleCondition(image=s, mask=ones) for s in (style_a, style_b)]).images[
        0
    ]
    assert np.abs(blended - plain_a).mean() > 1e-4 and np.abs(blended - plain_b).mean() > 1e-4


def test_frame_indexed_masks_on_a_world_video_and_refusals(tiny_sd, world):
    _, _, style, _ = world
    rng = np.random.default_rng(5)
    content = sample_content(rng, count=2)
    video = render_video(content, sample_style(rng), sample_motion(rng, content, 3), n_frames=3, size=64)
    frames, masks = list(video.frames), video.masks[:, 0]  # exact per-frame masks of object 0: (3, 64, 64)
    result = run(tiny_sd, frames, StyleCondition(image=style, mask=masks))
    assert result.images.shape == (3, 64, 64, 3) and result.pairs == [(0, -1), (1, -1), (2, -1)]
    for frame, region, out in zip(frames, masks, result.images, strict=True):
        np.testing.assert_allclose(out[~region], reconstruction(tiny_sd, frame)[~region], atol=1e-5)
    calls = []
    handle = tiny_sd.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(ValueError, match="masks for 3 frames, but there are 2 content images"):
            run(tiny_sd, frames[:2], StyleCondition(image=style, mask=masks))
        with pytest.raises(ValueError, match="different aspect ratio"):
            run(tiny_sd, frames[0], StyleCondition(image=style, mask=np.ones((32, 64))))
        with pytest.raises(ValueError, match="weights: expected numbers in"):
            RegionalStyle([masks[0]], [1.5])
    finally:
        handle.remove()
    assert not calls, "model work started before the masks were refused"


def test_restores_controller_and_processors(tiny_sd, world):
    content, mask, style, _ = world
    before = dict(tiny_sd.unet.attn_processors)
    run(tiny_sd, content, StyleCondition(image=style, mask=mask))
    assert dict(tiny_sd.unet.attn_processors) == before


def test_sdxl_regions(tiny_sdxl, world):
    content, mask, style, _ = world
    plain = run(tiny_sdxl, content, style).images
    full = run(tiny_sdxl, content, StyleCondition(image=style, mask=np.ones((64, 64)))).images
    np.testing.assert_array_equal(full, plain)
    out = run(tiny_sdxl, content, StyleCondition(image=style, mask=mask)).images[0]
    recon = reconstruction(tiny_sdxl, content)
    np.testing.assert_allclose(out[~mask], recon[~mask], atol=1e-4)
    assert np.abs(out - recon)[mask].mean() > 0.3 * np.abs(plain[0] - recon)[mask].mean() > 0


def test_no_warning_for_ordinary_masks(world):
    _, mask, _, _ = world
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RegionalStyle([mask, None])


def test_composes_with_per_row_style_tokens(tiny_sd, world):
    """Another conditioner in the same call: style tokens per row (each region's style) stay confined to
    the regions by the latent blend and the composite."""
    from stylekit.extractors import load_default
    from stylekit.tokens import StyleTokenAdapter, StyleTokens

    content, mask, style_a, style_b = world
    extractor = load_default()
    torch.manual_seed(0)
    adapter = StyleTokenAdapter.for_unet(
        tiny_sd.unet, extractor.embed_dim, tiny_sd.text_encoder, extractor.config_hash()
    )
    with torch.no_grad():
        for linear in adapter.to_v_ip.values():
            linear.weight.normal_(0.0, 0.5)
    regions = [
        StyleCondition(image=style_a, mask=mask),
        StyleCondition(image=style_b, mask=~mask & (np.arange(64) < 32)),
    ]
    without = run(tiny_sd, content, regions).images[0]
    tokens = StyleTokens(adapter, None, per_row=True, extractor=extractor)
    styled = run(tiny_sd, content, regions, conditioners=[tokens]).images[0]
    union = mask | (~mask & (np.arange(64) < 32))
    recon = reconstruction(tiny_sd, content)
    np.testing.assert_allclose(styled[~union], recon[~union], atol=1e-5)
    assert np.abs(styled - without)[union].mean() > 1e-4  # the tokens act, inside the regions only


def test_region_context_runs_the_whole_image_first(tiny_sd, world):
    """``region_context``: the first steps are exactly the whole-image transfer; from then on the region is
    confined (the outside latents are the content's trajectory); the outside pixels stay the content."""
    content, mask, style, _ = world
    steps = 4

    def latents_per_step(**kwargs):
        seen: list[torch.Tensor] = []

        def keep(pipe, step, timestep, tensors):
            seen.append(tensors["latents"].clone())
            return tensors

        result = run(tiny_sd, content, num_inference_steps=steps, callback_on_step_end=keep, **kwargs)
        return seen, result.images[0]

    plain, _ = latents_per_step(style=style)
    confined, _ = latents_per_step(style=StyleCondition(image=style, mask=mask))
    half, half_out = latents_per_step(style=StyleCondition(image=style, mask=mask), region_context=0.5)
    torch.testing.assert_close(half[0], plain[0], rtol=0, atol=0)  # step 0: whole-image transfer
    assert not torch.equal(confined[0], plain[0])  # context 0 confines from the first step
    size = tuple(half[1].shape[-2:])
    coverage = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(mask)[None].float(), size)
    corner = torch.nn.functional.max_pool2d(coverage, 3, 1, 1)[0] == 0  # outside the region grown by 1 cell
    assert corner.any()
    torch.testing.assert_close(half[1][..., corner], confined[1][..., corner])  # blended from step 1 on
    recon = reconstruction(tiny_sd, content)
    np.testing.assert_allclose(half_out[~mask], recon[~mask], atol=1e-5)
    with pytest.raises(ValueError, match="region context"):
        run(tiny_sd, content, StyleCondition(image=style, mask=mask), region_context=1.5)
    # Below 1 the last step still blends (0.9 x 4 steps rounds to 4, yet only context 1 merges in pixels).
    condition = StyleCondition(image=style, mask=mask)
    nearly, _ = latents_per_step(style=condition, region_context=0.9)
    merged, _ = latents_per_step(style=condition, region_context=1.0)
    torch.testing.assert_close(nearly[1], merged[1], rtol=0, atol=0)  # whole-image steps 0-1
    assert not torch.equal(nearly[2], merged[2])  # blended at the end of step 2 (the last 1 - 3/4)
    with pytest.raises(ValueError, match="needs composite=True"):
        RegionalStyle([mask], composite=False, context=1.0)


def test_region_context_one_merges_whole_image_transfers_in_pixels(tiny_sd, world):
    """``region_context=1``: each style's whole-image transfer, merged in pixels by the masks over the
    content's reconstruction (exact: inside each region its own whole-image output, outside the content)."""
    content, mask, style_a, style_b = world
    plain_a = run(tiny_sd, content, style_a).images[0]
    plain_b = run(tiny_sd, content, style_b).images[0]
    recon = reconstruction(tiny_sd, content)
    one = run(tiny_sd, content, StyleCondition(image=style_a, mask=mask), region_context=1.0).images[0]
    np.testing.assert_allclose(one[mask], plain_a[mask], atol=1e-5)
    np.testing.assert_allclose(one[~mask], recon[~mask], atol=1e-5)
    left = np.zeros((64, 64), bool)
    left[:, :32] = True
    two = run(
        tiny_sd,
        content,
        [StyleCondition(image=style_a, mask=left), StyleCondition(image=style_b, mask=~left)],
        region_context=1.0,
    )
    np.testing.assert_allclose(two.images[0][:, :32], plain_a[:, :32], atol=1e-5)
    np.testing.assert_allclose(two.images[0][:, 32:], plain_b[:, 32:], atol=1e-5)
    latent = run(
        tiny_sd, content, StyleCondition(image=style_a, mask=mask), region_context=1.0, output_type="latent"
    ).images
    assert latent.shape[0] == 1  # one latent per content (the latent merge)
