"""Model presets: offline, seeded, loadable by stock diffusers."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stylekit import load_pipeline
from stylekit.models import PRESETS, model_fingerprint
from stylekit.tokenizer import build_clip_tokenizer


def test_tokenizer_is_built_offline_and_knows_words():
    tokenizer = build_clip_tokenizer(["striped", "star"])
    ids = tokenizer("a Striped star!")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["<|startoftext|>", "a</w>", "striped</w>", "star</w>", "!</w>", "<|endoftext|>"]
    padded = tokenizer("", padding="max_length", max_length=77)["input_ids"]
    assert len(padded) == 77 and padded[0] == tokenizer.bos_token_id
    assert "é" in tokenizer.decode(tokenizer("café")["input_ids"])  # any text tokenizes (byte fallback)


def test_presets_are_seeded_and_typed(tiny_sd):
    again = load_pipeline("tiny-sd")
    for a, b in zip(tiny_sd.unet.parameters(), again.unet.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert type(tiny_sd).__name__ == "StyleInjectionPipeline"
    assert type(load_pipeline("tiny-sdxl", kind="text-to-image")).__name__ == "StableDiffusionXLPipeline"
    assert load_pipeline("tiny-sd-v").scheduler.config.prediction_type == "v_prediction"
    assert {"tiny-sd", "tiny-sd-v", "tiny-sdxl", "mini"} <= set(PRESETS)


def test_unknown_kind_and_fingerprint(tiny_sd):
    with pytest.raises(ValueError, match="kind='video-magic' is not known"):
        load_pipeline("tiny-sd", kind="video-magic")
    before = model_fingerprint(tiny_sd.unet)
    saved = tiny_sd.unet.conv_out.bias.detach().clone()
    with torch.no_grad():
        tiny_sd.unet.conv_out.bias.add_(1.0)
    try:
        assert model_fingerprint(tiny_sd.unet) != before
    finally:
        with torch.no_grad():
            tiny_sd.unet.conv_out.bias.copy_(saved)
    assert model_fingerprint(tiny_sd.unet) == before
    # edits through .data bump no version counter (diffusers' fuse_lora writes weights this way)
    weight = tiny_sd.unet.conv_out.weight
    saved = weight.data.clone()
    try:
        weight.data = weight.data * 1.5
        assert model_fingerprint(tiny_sd.unet) != before
        weight.data = saved.clone()
        assert model_fingerprint(tiny_sd.unet) == before
        weight.data.add_(0.5)
        assert model_fingerprint(tiny_sd.unet) != before
    finally:
        weight.data = saved
    assert model_fingerprint(tiny_sd.unet) == before


@pytest.mark.parametrize(
    "preset,stock", [("tiny-sd", "StableDiffusionPipeline"), ("tiny-sdxl", "StableDiffusionXLPipeline")]
)
def test_saved_preset_loads_in_stock_diffusers_and_generates(preset, stock, tmp_path):
    import diffusers

    pipe = load_pipeline(preset, kind="text-to-image")
    pipe.save_pretrained(tmp_path)
    loaded = getattr(diffusers, stock).from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    image = loaded("a red star", num_inference_steps=2, height=64, width=64, output_type="np").images
    assert image.shape == (1, 64, 64, 3) and np.isfinite(image).all()
    # and as a style-injection pipeline, by architecture
    assert type(load_pipeline(str(tmp_path))).__name__.startswith("StyleInjection")


def test_a_folder_with_mixed_stored_dtypes_loads_in_one_dtype(tmp_path):
    """A folder whose components are stored in different dtypes (the bundled mini keeps some in fp16)
    loads with every component in the UNet's dtype when no dtype is asked for."""
    pipe = load_pipeline("tiny-sd")
    pipe.text_encoder.to(torch.float16)
    pipe.save_pretrained(tmp_path / "mixed")
    for kind in ("style-injection", "text-to-image"):
        loaded = load_pipeline(str(tmp_path / "mixed"), kind=kind)
        assert loaded.unet.dtype == loaded.text_encoder.dtype == loaded.vae.dtype == torch.float32
    half = load_pipeline(str(tmp_path / "mixed"), dtype=torch.float16)
    assert half.unet.dtype == half.text_encoder.dtype == torch.float16
    # a dtype's name works the same for a folder (it was ignored: fp32) and a preset (it was a TypeError)
    for source in (str(tmp_path / "mixed"), "tiny-sd"):
        assert load_pipeline(source, dtype="float16").unet.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype: expected a floating torch.dtype"):
        load_pipeline("tiny-sd", dtype="int8")
    # clear errors for a folder that is not a pipeline, a missing component, an uncached hub id offline
    import shutil

    shutil.rmtree(tmp_path / "mixed" / "vae")
    with pytest.raises(FileNotFoundError, match="lists 'vae' but .*vae is missing"):
        load_pipeline(str(tmp_path / "mixed"))
    with pytest.raises(FileNotFoundError, match="not a diffusers pipeline folder"):
        load_pipeline(str(tmp_path))
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        with pytest.raises(FileNotFoundError, match="the hub is offline"):
            load_pipeline("someorg/not-a-cached-model")
