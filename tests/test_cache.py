"""Inversion cache: hits skip inversion, every key field matters, corrupt entries are recovered."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch

from stylekit.cache import CacheKey, InversionCache

STEPS = 6


def run(pipe, content, style, cache, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    return pipe(content_image=content, style=style, cache=cache, output_type="np", **kwargs)


def test_hits_skip_inversion_counts(tiny_sd, images):
    cache = InversionCache()
    cold = run(tiny_sd, images[0], images[1], cache)
    assert cold.unet_evals == 3 * STEPS
    style_cached = run(tiny_sd, images[2], images[1], cache)
    assert style_cached.unet_evals == 2 * STEPS
    both = run(tiny_sd, images[0], images[1], cache)
    assert both.unet_evals == STEPS
    np.testing.assert_array_equal(both.images, cold.images)
    assert cache.stats["hits"] == 3 and cache.stats["misses"] == 3


def test_trajectory_strategy_counts(tiny_sd, images):
    cache = InversionCache()
    cold = run(tiny_sd, images[0], images[1], cache, cache_strategy="trajectory")
    # inversion 2N + sampling N steps of (content ref + style ref + stylized) rows
    assert cold.unet_evals == 2 * STEPS + 3 * STEPS
    warm = run(tiny_sd, images[0], images[1], cache, cache_strategy="trajectory")
    assert warm.unet_evals == 3 * STEPS
    np.testing.assert_allclose(warm.images, cold.images, atol=1e-6)


@pytest.mark.parametrize(
    "change",
    [
        {"num_inference_steps": STEPS + 1},
        {"layers": "styleid-diffusers"},
        {"height": 128, "width": 128},
        {"cache_strategy": "trajectory"},
        {"layers": "styleid-official"},
    ],
)
def test_any_key_field_change_misses(tiny_sd, images, change):
    cache = InversionCache()
    run(tiny_sd, images[0], images[1], cache)
    misses = cache.stats["misses"]
    run(tiny_sd, images[0], images[1], cache, **change)
    assert cache.stats["misses"] == misses + 2


def test_new_image_or_new_weights_miss(tiny_sd, images):
    cache = InversionCache()
    run(tiny_sd, images[0], images[1], cache)
    changed = images[0].copy()
    changed[0, 0, 0] ^= 1  # one bit of one pixel
    run(tiny_sd, changed, images[1], cache)
    assert cache.stats["misses"] == 3
    from stylekit import load_pipeline

    other = load_pipeline("tiny-sd")
    other.set_progress_bar_config(disable=True)
    with torch.no_grad():
        other.unet.conv_in.weight.mul_(1.01)
    run(other, images[0], images[1], cache)
    assert cache.stats["misses"] == 5
    # the text encoder too: the empty prompt's embedding conditions every inverted step (an edit reused the
    # cached inversions and the pipeline's memo of that embedding)
    before = run(other, images[0], images[1], cache).images
    with torch.no_grad():
        for param in other.text_encoder.parameters():
            param.mul_(1.5)
    edited = run(other, images[0], images[1], cache)
    assert cache.stats["misses"] == 7
    np.testing.assert_array_equal(edited.images, run(other, images[0], images[1], False).images)
    assert np.abs(edited.images - before).max() > 1e-3


def test_key_digest_covers_every_field():
    key = CacheKey(
        "a" * 64, "m", "s", 50, ("l",), "torch.float32", (64, 64), "style", "features", "corrected"
    )
    for field in dataclasses.fields(CacheKey):
        value = getattr(key, field.name)
        if isinstance(value, str):
            other = value + "x"
        elif isinstance(value, int):
            other = value + 1
        else:
            other = (*value, value[0])
        assert dataclasses.replace(key, **{field.name: other}).digest != key.digest, field.name


def test_disk_cache_survives_a_new_process_object_and_recovers_corruption(tiny_sd, images, tmp_path):
    first = run(tiny_sd, images[0], images[1], InversionCache(tmp_path))
    files = sorted(tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and not list(tmp_path.glob("*.tmp"))
    fresh = InversionCache(tmp_path)
    again = run(tiny_sd, images[0], images[1], fresh)
    assert again.unet_evals == STEPS and fresh.stats["disk_hits"] == 2
    np.testing.assert_array_equal(again.images, first.images)

    # Truncate one entry and flip a byte in the data section of the other.
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    corrupted = bytearray(files[1].read_bytes())
    corrupted[-10] ^= 0xFF
    files[1].write_bytes(bytes(corrupted))
    recovering = InversionCache(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recovered = run(tiny_sd, images[0], images[1], recovering)
    assert recovering.stats["recovered"] == 2
    assert sum("corrupt entry" in str(w.message) for w in caught) == 2
    assert recovered.unet_evals == 3 * STEPS
    np.testing.assert_array_equal(recovered.images, first.images)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2  # rewritten
    for entry in tmp_path.glob("*.safetensors"):  # a folder where an entry belongs is dropped too
        entry.unlink()
        entry.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(
            run(tiny_sd, images[0], images[1], InversionCache(tmp_path)).images, first.images
        )


def test_memory_bound_evicts_least_recently_used():
    cache = InversionCache(max_memory_bytes=3 * 400)
    keys = [
        CacheKey(str(i), "m", "s", 1, (), "f", (1, 1), "content", "features", "corrected") for i in range(4)
    ]
    for key in keys:
        cache.put(key, {"x": torch.zeros(100)})  # 400 bytes each
    assert cache.get(keys[0]) is None and cache.get(keys[3]) is not None


def test_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    import stylekit.cache as cache_module

    cache = InversionCache(tmp_path)
    key = CacheKey("x", "m", "s", 1, (), "f", (1, 1), "content", "features", "corrected")

    def failing_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "save_file", failing_save)
    with pytest.raises(KeyboardInterrupt):
        cache.put(key, {"x": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []
