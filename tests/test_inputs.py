"""Bad input gets a clear error naming the argument before any model work; unusual input is converted."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit import StyleCondition
from stylekit.images import MAX_INPUT_SIDE, InputImageError, load_image


@pytest.fixture
def no_model_work(tiny_sd):
    """Fail the test if the UNet or VAE run; yields the pipeline."""
    calls = []
    handles = [
        module.register_forward_pre_hook(lambda *a: calls.append(1))
        for module in (tiny_sd.unet, tiny_sd.vae.encoder, tiny_sd.vae.decoder, tiny_sd.text_encoder)
    ]
    yield tiny_sd
    for handle in handles:
        handle.remove()
    assert not calls, "model work started before the input was refused"


def _call(pipe, content, style, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(content_image=content, style=style, cache=False, **kwargs)


def test_missing_non_image_truncated_and_empty_files(no_model_work, images, tmp_path):
    missing = tmp_path / "missing.png"
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    good = tmp_path / "good.png"
    Image.fromarray(images[0]).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cases = [
        (missing, "content_image\\[0\\]: file not found"),
        (text, "content_image\\[0\\]: not an image file"),
        (truncated, "content_image\\[0\\]: .*truncated or corrupt"),
        (empty, "content_image\\[0\\]: not an image file"),
        (tmp_path, "expected an image file, got a folder"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 5), np.uint8), "expected an HxW"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN"),
        (np.full((8, 8, 3), 200.0, np.float32), "in \\[0, 1\\], got \\[200, 200\\] \\(values 0..255\\?"),
        (np.full((8, 8, 3), -0.5, np.float32), "in \\[0, 1\\], got \\[-0.5, -0.5\\]$"),
        (42, "expected a path, PIL image"),
    ]
    for bad, message in cases:
        with pytest.raises(InputImageError, match=message):
            _call(no_model_work, bad, images[1])
    with pytest.raises(InputImageError, match="style\\[1\\].image: file not found"):
        _call(no_model_work, images[0], [images[1], missing])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"gamma": 1.2}, "gamma must be in \\[0, 1\\], got 1.2"),
        ({"gamma": -0.5}, "gamma"),
        ({"temperature": 0}, "temperature must be > 0"),
        ({"temperature": -1.0}, "temperature"),
        ({"gamma": "0.5"}, "gamma must be a finite number, got '0.5'"),
        ({"temperature": float("nan")}, "temperature must be a finite number"),
        ({"num_inference_steps": 0}, "num_inference_steps: expected an integer >= 1"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"layers": "up_blocks.9"}, "layers: 'up_blocks.9' is neither a preset"),
        ({"layers": "styleid-xl"}, "preset for SDXL models"),
        ({"layers": {"up": {"block_0": True}}}, "no attention in up.block_0"),
        ({"output_type": "jpeg"}, "output_type"),
        ({"cache_strategy": "everything"}, "cache_strategy"),
        ({"height": 4}, "height: expected at least 8"),
        ({"callback_on_step_end_tensor_inputs": ["noise"]}, "unknown names"),
    ],
)
def test_bad_arguments(no_model_work, images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _call(no_model_work, images[0], images[1], **kwargs)


def test_bad_style_conditions(no_model_work, images):
    with pytest.raises(ValueError, match="at least one of image, embedding, text or lora"):
        StyleCondition()
    with pytest.raises(ValueError, match="embedding: contains NaN"):
        StyleCondition(embedding=torch.full((8,), float("nan")))
    with pytest.raises(TypeError, match="embedding: expected a tensor or array, got list"):
        StyleCondition(embedding=[0.1] * 8)
    for weight in (2.0, True, "0.5"):
        with pytest.raises(ValueError, match="weight"):
            StyleCondition(image=images[0], weight=weight)
    with pytest.raises(ValueError, match="steps"):
        StyleCondition(image=images[0], steps=(0.8, 0.2))
    with pytest.raises(ValueError, match="style\\[0\\]: StyleID needs StyleCondition.image"):
        _call(no_model_work, images[0], StyleCondition(text="watercolour"))
    with pytest.raises(ValueError, match="content_image: expected at least one image"):
        _call(no_model_work, [], images[1])


def test_sdxl_refuses_the_sd_preset(tiny_sdxl, images):
    with pytest.raises(ValueError, match="preset for SD models"):
        _call(tiny_sdxl, images[0], images[1], layers="styleid")


def test_unusual_modes_are_converted(tiny_sd, images, tmp_path):
    base = Image.fromarray(images[0])
    sixteen = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257).convert("I;16")
    variants = {
        "rgba": base.convert("RGBA"),
        "la": base.convert("LA"),
        "p": base.convert("P"),
        "l": base.convert("L"),
        "i16": sixteen,
        "cmyk": base.convert("CMYK"),
    }
    for name, image in variants.items():
        loaded = load_image(image, name)
        assert loaded.mode == "RGB" and loaded.size == base.size, name
    path = tmp_path / "sixteen.png"
    sixteen.save(path)
    assert np.asarray(load_image(path)).max() == 255
    # Transparent pixels are composited on white.
    transparent = np.zeros((4, 4, 4), np.uint8)
    assert np.asarray(load_image(transparent)).min() == 255
    out = _call(tiny_sd, variants["rgba"], variants["i16"])
    assert out.images.shape == (1, 64, 64, 3)


def test_odd_sizes_and_oversized_images(tiny_sd, images):
    odd = images[0][:61, :47]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = _call(tiny_sd, odd, images[1], height=100, width=72)
    assert out.images.shape == (1, 96, 72, 3)
    assert any("height=100 is not a multiple of 8; using 96" in str(w.message) for w in caught)
    huge = np.zeros((MAX_INPUT_SIDE + 100, 16, 3), np.uint8)
    with pytest.warns(UserWarning, match="exceeds the 4096px limit; downscaled"):
        loaded = load_image(huge, "content_image[0]")
    assert max(loaded.size) == MAX_INPUT_SIDE
