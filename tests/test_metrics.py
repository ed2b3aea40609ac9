"""Invariants of the weight-free quality metrics (stylekit.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stylekit.data import ContentSpec, ObjectSpec, StyleSpec, render_samples, sample_scenes, sample_world
from stylekit.metrics import (
    colour_histogram,
    content_iou,
    content_targets,
    edge_ssim,
    gram_distance,
    gram_network,
    harmonic_mean,
    mask_iou,
    palette_distance,
    segment_objects,
    ssim,
    style_score,
    style_score_components,
    style_targets,
    train_probe,
)


@pytest.fixture(scope="module")
def world():
    return sample_world(np.random.default_rng(3), 24, size=64)


def _scene(stroke: int = 0, texture: int = 0, palette: int = 0, shapes=(0,), size: int = 64):
    if len(shapes) == 1:
        objects = (ObjectSpec(shapes[0], 0.5, 0.5, 0.28, 0.3),)
    else:
        cells = [(1 / 6, 1 / 6), (5 / 6, 1 / 6), (1 / 2, 5 / 6)]
        objects = tuple(ObjectSpec(s, cx, cy, 0.13, 0.4) for s, (cx, cy) in zip(shapes, cells, strict=False))
    return render_samples([ContentSpec(objects)], [StyleSpec(palette, texture, stroke, seed=7)], size)


def test_style_score_identity_and_style(world):
    content, style = world.images[0], world.images[1]
    assert style_score(content, content, style) == 0.0
    assert style_score(style, content, style) == 1.0
    floats = world.float_images()
    comp = style_score_components(floats[:8], floats[:8], floats[8:16])
    assert np.all(comp["style"] == 0.0) and np.all(comp["palette"] == 0.0) and np.all(comp["gram"] == 0.0)
    comp = style_score_components(floats[8:16], floats[:8], floats[8:16])
    assert np.all(comp["style"] == 1.0)


def test_style_score_monotonic(world):
    f = world.float_images()
    rng = np.random.default_rng(1)
    order = rng.random(f[0].shape[:2])
    for i in range(0, 8, 2):
        c, s = f[i], f[i + 1]
        # a growing random share of the pixels taken from the style image: the colour histogram is the
        # mixture, so both metrics must rise strictly
        mixed = [np.where((order < m)[..., None], s, c) for m in (0.0, 0.25, 0.5, 0.75, 1.0)]
        scores = [style_score(x, c, s) for x in mixed]
        assert scores[0] == 0.0 and scores[-1] == 1.0
        assert all(a < b for a, b in zip(scores[:-1], scores[1:], strict=True)), scores
        # a pixel blend creates colours neither image has: never decreasing, not necessarily rising
        blends = [style_score((1 - m) * c + m * s, c, s) for m in (0.0, 0.25, 0.5, 0.75, 1.0)]
        assert all(a <= b for a, b in zip(blends[:-1], blends[1:], strict=True)), blends


def test_style_score_does_not_reward_moving_away(world):
    """Noise or an unrelated image moved away from the content but not toward the style: about 0."""
    f = world.float_images()
    rng = np.random.default_rng(0)
    noise = [style_score(rng.random(f[0].shape).astype(np.float32), f[i], f[i + 1]) for i in range(0, 8, 2)]
    unrelated = [style_score(f[i + 2], f[i], f[i + 1]) for i in range(10, 20, 3)]
    assert max(noise) < 0.2 and np.mean(unrelated) < 0.25, (noise, unrelated)


def test_style_score_ignores_content_only_changes():
    """A different content in the content's own style is not a move toward another style."""
    a = _scene(stroke=0, texture=1, palette=0, shapes=(0,)).float_images()[0]
    b = _scene(stroke=0, texture=1, palette=0, shapes=(3, 5)).float_images()[0]
    other = _scene(stroke=2, texture=4, palette=3, shapes=(6,)).float_images()[0]
    assert style_score(b, a, other) < 0.2


def test_palette_and_gram_distances(world):
    a, b = world.images[0], world.images[1]
    assert palette_distance(a, a) == 0.0 and gram_distance(a, a) == 0.0
    assert 0.0 < palette_distance(a, b) <= 1.0
    assert palette_distance(a, b) == pytest.approx(palette_distance(b, a))
    assert gram_distance(a, b) > 0.0
    hist = colour_histogram(a)
    assert hist.shape == (512,) and float(hist.sum()) == pytest.approx(1.0)
    assert gram_network() is gram_network()  # built once
    # uint8 and float inputs agree
    assert palette_distance(a, b) == pytest.approx(
        palette_distance(a / 255.0, b.astype(np.float32) / 255.0), abs=1e-6
    )


def test_content_iou_is_one_on_typical_scenes():
    for palette in (0, 1, 2, 4, 6):
        for shapes in ((0,), (1, 6), (2, 3, 8)):
            scene = _scene(stroke=0, texture=0, palette=palette, shapes=shapes)
            assert content_iou(scene.images[0], scene.masks[0]) == 1.0, (palette, shapes)


def test_segmentation_across_world_styles():
    """Textured paper and outlines: the content images read well on average (the benchmark drops the
    few it cannot read)."""
    rng = np.random.default_rng(11)
    sample = render_samples(*sample_scenes(rng, 60), size=64)
    ious = [content_iou(im, m) for im, m in zip(sample.images, sample.masks, strict=True)]
    assert np.median(ious) > 0.9 and np.mean(ious) > 0.8
    thick = _scene(stroke=2, texture=1, palette=0, shapes=(0,))
    assert content_iou(thick.images[0], thick.masks[0]) > 0.9
    assert content_iou(thick.images[0], thick.masks[0]) > mask_iou(
        segment_objects(thick.images[0], outlines=False), thick.masks[0]
    )


def test_content_iou_drops_when_objects_move():
    scene = _scene(shapes=(1,))
    image = scene.images[0]
    ious = [content_iou(np.roll(image, shift, axis=1), scene.masks[0]) for shift in (0, 2, 5, 10)]
    assert ious[0] == 1.0
    assert all(a > b for a, b in zip(ious[:-1], ious[1:], strict=True)), ious
    blank = np.broadcast_to(image[:1, :1], image.shape).copy()
    assert content_iou(blank, scene.masks[0]) == 0.0


def test_edge_ssim(world):
    a = world.float_images()[0]
    assert edge_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    shifted = [edge_ssim(np.roll(a, s, axis=0), a) for s in (1, 3)]
    assert 1.0 > shifted[0] > shifted[1]
    flat = np.full_like(a, 0.5)
    assert edge_ssim(flat, a) < 0.5
    x = torch.rand(2, 1, 16, 16)
    assert torch.allclose(ssim(x, x), torch.ones(2))


def test_harmonic_mean():
    assert harmonic_mean(0.0, 1.0) == 0.0
    assert harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert harmonic_mean(1.0, 0.25) == pytest.approx(0.4)


def test_probes_beat_chance_and_are_deterministic():
    rng = np.random.default_rng(5)
    contents, styles = sample_scenes(rng, 200, "content_style", "test")
    real = render_samples(contents, styles, 32)
    style = train_probe("style", steps=60, batch_size=32, size=32, seed=0)
    acc = style.accuracy(real.images, style_targets(styles))
    assert acc["palette"] > 0.5  # chance 1/12
    content = train_probe("content", steps=60, batch_size=32, size=32, seed=0)
    acc = content.accuracy(real.images, content_targets(contents))
    assert acc["count"] > 0.5  # chance 1/3
    # probes resize their inputs
    assert content.predict(render_samples(contents[:4], styles[:4], 64).images)["count"].shape == (4,)
    a = train_probe("style", steps=3, batch_size=8, size=32, seed=1)
    b = train_probe("style", steps=3, batch_size=8, size=32, seed=1)
    for p, q in zip(a.net.state_dict().values(), b.net.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError):
        train_probe("shape")


def test_region_style_score(world):
    """``masks``: the score of the region alone. A region holding the style image's pixels scores 1 and
    one holding the content's scores 0, whatever the rest of the image holds; an all-ones mask equals the
    whole-image score on the palette; empty or misshaped masks are refused."""
    f = world.float_images()
    c, s = f[0], f[1]
    region = np.zeros(c.shape[:2], bool)
    region[16:48, 16:48] = True
    pasted = np.where(region[..., None], s, c)  # the style image's pixels inside, the content outside
    whole = style_score_components([pasted], [c], [s])["style"][0]
    inside = style_score_components([pasted], [c], [s], masks=region[None])
    assert inside["palette"][0] > 0.6 > whole  # the region alone is much closer to the style
    untouched = style_score_components([np.where(region[..., None], c, s)], [c], [s], masks=region[None])
    # The region holds the content's pixels: its palette did not move; the Gram sees a little across the
    # border (the CNN's receptive field).
    assert untouched["palette"][0] == 0.0 and untouched["gram"][0] < 0.1
    full = np.ones(c.shape[:2], bool)[None]
    np.testing.assert_allclose(
        style_score_components([pasted], [c], [s], masks=full)["palette"],
        style_score_components([pasted], [c], [s])["palette"],
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="non-empty masks"):
        style_score_components([c], [c], [s], masks=np.zeros((1, 64, 64), bool))
    with pytest.raises(ValueError, match="non-empty masks"):
        style_score_components([c], [c], [s], masks=np.ones((1, 32, 32), bool))
