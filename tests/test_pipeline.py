"""StyleID pipeline invariants on the tiny presets (CPU, offline)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit import StyleCondition
from stylekit.attention.conditioner import encode_latents
from stylekit.images import to_tensor
from stylekit.inversion import ddim_invert
from stylekit.pipelines import StyleInjectionPipeline, StyleInjectionPipelineOutput

STEPS = 8


def reconstruct(pipe, image: np.ndarray, steps: int = STEPS) -> np.ndarray:
    """Plain DDIM reconstruction, written with the stock scheduler loop: invert, then sample unchanged."""
    pixels = to_tensor(Image.fromarray(image))[None]
    with torch.no_grad():
        latents = encode_latents(pipe.vae, pixels)
        size = image.shape[0]
        conditioning = pipe.unet_conditioning(1, torch.float32, size, size)
        result = ddim_invert(
            lambda z, t: pipe.unet(z, t, **conditioning).sample, pipe.scheduler, latents, steps
        )
        z = result.start_latent
        pipe.scheduler.set_timesteps(steps)
        for t in pipe.scheduler.timesteps:
            z = pipe.scheduler.step(pipe.unet(z, t, **conditioning).sample, t, z).prev_sample
        decoded = pipe.vae.decode(z / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(decoded, output_type="np")


def run(pipe, content, style, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("output_type", "np")
    kwargs.setdefault("cache", False)
    return pipe(content_image=content, style=style, **kwargs)


@pytest.mark.parametrize("preset", ["tiny_sd", "tiny_sd_v"])
def test_all_parts_off_equals_plain_reconstruction(request, preset, images):
    pipe = request.getfixturevalue(preset)
    content, style = images[0], images[1]
    off = run(pipe, content, style, attention_injection=False, query_preservation=False, adain=False).images
    # other batch shapes (content and style rows together): float kernels differ by ~1e-4 on some CPUs
    np.testing.assert_allclose(off, reconstruct(pipe, content), atol=2e-4)
    styled = run(pipe, content, style).images
    assert np.abs(styled - off).mean() > 0.01  # the comparison can fail: StyleID does change the image


def test_style_equal_to_content_returns_the_reconstruction(tiny_sd, images):
    content = images[0]
    reference = reconstruct(tiny_sd, content)
    same = run(tiny_sd, content, content, temperature=1.0).images
    other = run(tiny_sd, content, images[1], temperature=1.0).images
    # Features come from the inversion trajectory, the reconstruction follows the sampling one: they
    # differ by the inversion error only. Stated tolerance: 5 % of the pixel range at most, 0.5 % mean.
    assert np.abs(same - reference).max() < 0.05
    assert np.abs(same - reference).mean() < 0.005
    assert np.abs(other - reference).mean() > 4 * np.abs(same - reference).mean()


def latent_round_trip_error(pipe, image: np.ndarray, steps: int) -> float:
    """||reconstructed latent - latent|| / ||latent|| after DDIM inversion and DDIM sampling."""
    pixels = to_tensor(Image.fromarray(image))[None]
    with torch.no_grad():
        latents = encode_latents(pipe.vae, pixels)
        conditioning = pipe.unet_conditioning(1, torch.float32, 64, 64)

        def model(z, t):
            return pipe.unet(z, t, **conditioning).sample

        result = ddim_invert(model, pipe.scheduler, latents, steps)
        z = result.start_latent
        pipe.scheduler.set_timesteps(steps)
        for t in result.sampling_timesteps:
            z = pipe.scheduler.step(model(z, t), t, z).prev_sample
    return float((z - latents).norm() / latents.norm())


def test_inversion_round_trip_error_is_bounded(tiny_sd, tiny_sd_v, images):
    """Latent-space DDIM round trip on the tiny presets: relative error measured, bounded, and
    shrinking with more steps. (Random weights: the bound checks the mechanics, not quality.)"""
    for pipe, bound in ((tiny_sd, 0.2), (tiny_sd_v, 0.1)):
        coarse, fine = (latent_round_trip_error(pipe, images[0], steps) for steps in (10, 50))
        assert fine < bound and fine < coarse, (coarse, fine)


def test_batch_equals_single_runs_and_is_deterministic(tiny_sd, images):
    contents, styles = images[:2], images[2:4]
    batch = run(tiny_sd, contents, styles, generator=torch.Generator().manual_seed(0))
    assert isinstance(batch, StyleInjectionPipelineOutput)
    assert batch.pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for index, (c, s) in enumerate(batch.pairs):
        single = run(tiny_sd, contents[c], styles[s], generator=torch.Generator().manual_seed(0)).images[0]
        np.testing.assert_allclose(batch.images[index], single, atol=2e-4)  # batched float kernels
    again = run(tiny_sd, contents, styles, generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_array_equal(batch.images, again)


def test_processors_restored_after_call_and_after_failure(tiny_sd, images):
    before = dict(tiny_sd.unet.attn_processors)
    run(tiny_sd, images[0], images[1])
    assert dict(tiny_sd.unet.attn_processors) == before
    hooks_before = len(tiny_sd.unet._forward_pre_hooks), len(tiny_sd.unet._forward_hooks)

    def explode(pipe, step, timestep, kwargs):
        raise RuntimeError("boom")

    for strategy in ("features", "trajectory"):
        with pytest.raises(RuntimeError, match="boom"):
            run(tiny_sd, images[0], images[1], callback_on_step_end=explode, cache_strategy=strategy)
        assert dict(tiny_sd.unet.attn_processors) == before
        assert (len(tiny_sd.unet._forward_pre_hooks), len(tiny_sd.unet._forward_hooks)) == hooks_before


def test_a_call_from_another_thread_is_refused_while_one_runs(tiny_sd, images):
    import threading

    inside, release = threading.Event(), threading.Event()

    def wait(pipe, step, timestep, kwargs):
        inside.set()
        release.wait(timeout=60)
        return kwargs

    before = dict(tiny_sd.unet.attn_processors)
    alone = run(tiny_sd, images[0], images[1]).images
    results = {}
    worker = threading.Thread(
        target=lambda: results.update(
            out=run(tiny_sd, images[0], images[1], callback_on_step_end=wait).images
        )
    )
    worker.start()
    try:
        assert inside.wait(timeout=60)
        with pytest.raises(RuntimeError, match="another thread is running a call on this UNet"):
            run(tiny_sd, images[2], images[1])
        sibling = StyleInjectionPipeline.from_pipe(tiny_sd)  # shares the UNet
        with pytest.raises(RuntimeError, match="another thread is running a call on this UNet"):
            run(sibling, images[2], images[1])
    finally:
        release.set()
        worker.join(timeout=120)
    np.testing.assert_array_equal(results["out"], alone)  # the running call was not disturbed
    assert dict(tiny_sd.unet.attn_processors) == before
    free_again = run(tiny_sd, images[0], images[1]).images
    np.testing.assert_array_equal(free_again, alone)

    def nested(pipe, step, timestep, kwargs):
        run(pipe, images[0], images[1])

    with pytest.raises(RuntimeError, match="a nested call .* is not supported"):
        run(tiny_sd, images[0], images[1], callback_on_step_end=nested)
    assert dict(tiny_sd.unet.attn_processors) == before
    assert not any("lock" in name for name in tiny_sd.__dict__)  # nothing unpicklable left on the pipeline


def test_untargeted_processors_are_kept(tiny_sd, images):
    """A custom processor on an untargeted layer (stand-in for IP-Adapter/LoRA) is used during the call."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    calls = []

    class Recording(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, *args, **kwargs):
            calls.append(1)
            return super().__call__(attn, hidden_states, *args, **kwargs)

    name = "up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
    saved = dict(tiny_sd.unet.attn_processors)
    custom = Recording()
    tiny_sd.unet.set_attn_processor({**saved, name: custom})
    try:
        run(tiny_sd, images[0], images[1])
        assert calls and tiny_sd.unet.attn_processors[name] is custom
    finally:
        tiny_sd.unet.set_attn_processor(saved)


def test_live_reference_equals_cached_features(tiny_sd, tiny_sdxl, images):
    for pipe in (tiny_sd, tiny_sdxl):
        cached = run(pipe, images[:2], images[2], cache_strategy="features").images
        live = run(pipe, images[:2], images[2], cache_strategy="trajectory").images
        np.testing.assert_allclose(live, cached, atol=2e-4)  # live: style rows share the batch


def test_sdxl_end_to_end(tiny_sdxl, images):
    out = run(tiny_sdxl, images[0], [images[1], images[2]], output_type="pil")
    assert len(out.images) == 2 and out.images[0].size == (64, 64)
    off = run(
        tiny_sdxl, images[0], images[1], attention_injection=False, query_preservation=False, adain=False
    )
    styled = run(tiny_sdxl, images[0], images[1])
    assert np.abs(styled.images - off.images).mean() > 0.005


def test_official_preset_timing_and_counts(tiny_sd, images):
    out = run(tiny_sd, images[0], images[1], layers="styleid-official")
    assert out.unet_evals == 2 * STEPS + (STEPS - 1)
    default = run(tiny_sd, images[0], images[1])
    assert default.unet_evals == 3 * STEPS
    assert np.abs(out.images - default.images).mean() > 1e-4


def test_step_range_and_callback(tiny_sd, images):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append(int(timestep))
        return kwargs

    full = run(tiny_sd, images[0], StyleCondition(image=images[1]), callback_on_step_end=callback).images
    assert len(seen) == STEPS and seen == sorted(seen, reverse=True)
    late = run(tiny_sd, images[0], StyleCondition(image=images[1], steps=(0.5, 1.0)), adain=False).images
    off = run(
        tiny_sd, images[0], images[1], attention_injection=False, query_preservation=False, adain=False
    ).images
    no_adain = run(tiny_sd, images[0], images[1], adain=False).images
    assert 1e-4 < np.abs(late - off).mean() and 1e-4 < np.abs(late - no_adain).mean()
    assert full.shape == (1, 64, 64, 3)


def test_from_pipe_and_stock_loading(tiny_sd, tmp_path, images):
    from diffusers import StableDiffusionPipeline

    tiny_sd.save_pretrained(tmp_path / "tiny")
    stock = StableDiffusionPipeline.from_pretrained(tmp_path / "tiny", safety_checker=None)
    assert type(stock) is StableDiffusionPipeline
    stock.set_progress_bar_config(disable=True)
    reused = StyleInjectionPipeline.from_pipe(stock)
    assert reused.unet is stock.unet
    reused.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(
        run(reused, images[0], images[1]).images, run(tiny_sd, images[0], images[1]).images, atol=1e-6
    )
    loaded = StyleInjectionPipeline.from_pretrained(tmp_path / "tiny")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(
        run(loaded, images[0], images[1]).images, run(tiny_sd, images[0], images[1]).images, atol=1e-6
    )


def test_composes_with_a_region_mask(tiny_sd, images):
    """Two conditioners in one call: StyleID + RegionMask. An all-ones mask is plain StyleID; an
    all-zeros mask returns the content's VAE reconstruction; a half mask changes only its half."""
    from stylekit.attention.conditioner import encode_latents
    from stylekit.regions import RegionMask

    plain = run(tiny_sd, images[0], images[1]).images
    everywhere = run(tiny_sd, images[0], images[1], conditioners=[RegionMask(np.ones((64, 64)))]).images
    np.testing.assert_allclose(everywhere, plain, atol=1e-6)
    nowhere = run(tiny_sd, images[0], images[1], conditioners=[RegionMask(np.zeros((64, 64)))]).images
    with torch.no_grad():
        latents = encode_latents(tiny_sd.vae, to_tensor(Image.fromarray(images[0]))[None])
        vae_only = tiny_sd.image_processor.postprocess(
            tiny_sd.vae.decode(latents / tiny_sd.vae.config.scaling_factor).sample, output_type="np"
        )
    np.testing.assert_allclose(nowhere, vae_only, atol=1e-5)
    half = np.zeros((32, 32))
    half[:, 16:] = 1  # any mask size: resized to the latents (8 x 8 here)
    mixed = run(tiny_sd, images[0], images[1], conditioners=[RegionMask(half)], output_type="latent").images
    plain_latents = run(tiny_sd, images[0], images[1], output_type="latent").images
    torch.testing.assert_close(mixed[..., :4], latents[..., :4])  # outside: exactly the content
    assert (mixed[..., 4:] - latents[..., 4:]).abs().mean() > 0.3 * (plain_latents - latents).abs().mean()
    with pytest.raises(ValueError, match="RegionMask.mask: a 64x32 mask does not fit a 64x64 content image"):
        run(tiny_sd, images[0], images[1], conditioners=[RegionMask(np.ones((32, 64)))])  # drawn elsewhere
    wide = Image.fromarray(np.concatenate([images[0], images[0][:, :32]], axis=1))  # 96x64 content
    run(tiny_sd, wide, images[1], conditioners=[RegionMask(np.ones((64, 96)))])  # its own mask fits
