"""Tests of the synthetic style world (stylekit.data): geometry, determinism, factors, splits, video flow."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stylekit import data as world
from stylekit.data import (
    N_STYLES,
    PALETTES,
    SHAPES,
    SPLITS,
    STROKES,
    TEXTURES,
    ContentSpec,
    ObjectSpec,
    StyleSpec,
    caption,
    caption_vocabulary,
    caption_words,
    hard_negatives,
    positive_pairs,
    render,
    render_video,
    sample_content,
    sample_style,
    sample_video,
    sample_world,
    split_of,
    style_labels,
    style_set,
    subject_set,
)
from stylekit.data.render import STROKE_REACH


def idx(items, name: str) -> int:
    return [item.name for item in items].index(name)


# ---------------------------------------------------------------- independent analytic geometry (float64)


def _in_convex_regular(x, y, n, offset=-math.pi / 2):
    """Regular n-gon of circumradius 1, vertex at `offset`, via its edge half-planes."""
    inside = np.ones(x.shape, dtype=bool)
    apothem = math.cos(math.pi / n)
    for i in range(n):
        a = offset + math.pi / n + 2 * math.pi * i / n  # outward normal of edge i
        inside &= x * math.cos(a) + y * math.sin(a) <= apothem
    return inside


def _in_polygon_even_odd(x, y, verts):
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        (x1, y1), (x2, y2) = verts[i], verts[(i + 1) % n]
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < xi)
    return inside


def analytic_mask(obj: ObjectSpec, size: int) -> np.ndarray:
    """The documented shape at the documented pose, tested at pixel centres."""
    c = (np.arange(size) + 0.5) / size
    px, py = np.meshgrid(c, c)  # px varies along columns
    dx, dy = px - obj.cx, py - obj.cy
    cos, sin = math.cos(obj.rotation), math.sin(obj.rotation)
    x = (cos * dx + sin * dy) / obj.scale  # R(-rotation) (p - c) / scale
    y = (-sin * dx + cos * dy) / obj.scale
    r = np.hypot(x, y)
    name = SHAPES[obj.shape].name
    if name == "circle":
        return r <= 1
    if name == "ring":
        return (r <= 1) & (r >= 0.6)
    if name == "crescent":
        return (r <= 1) & (np.hypot(x - 0.4, y) >= 0.8)
    if name == "square":
        return (np.abs(x) <= 1 / math.sqrt(2)) & (np.abs(y) <= 1 / math.sqrt(2))
    if name == "diamond":
        return np.abs(x) / 0.6 + np.abs(y) <= 1
    if name in ("triangle", "pentagon", "hexagon"):
        return _in_convex_regular(x, y, {"triangle": 3, "pentagon": 5, "hexagon": 6}[name])
    if name == "cross":
        return ((np.abs(x) <= 0.32) & (np.abs(y) <= 0.94)) | ((np.abs(x) <= 0.94) & (np.abs(y) <= 0.32))
    if name == "star":
        verts = []
        for i in range(5):
            a = -math.pi / 2 + 2 * math.pi * i / 5
            verts.append((math.cos(a), math.sin(a)))
            verts.append((0.45 * math.cos(a + math.pi / 5), 0.45 * math.sin(a + math.pi / 5)))
        return _in_polygon_even_odd(x, y, verts)
    raise AssertionError(name)


def erode(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """3x3 binary erosion of a (..., H, W) mask, outside = False."""
    for _ in range(steps):
        p = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
        out = np.ones_like(mask)
        h, w = mask.shape[-2:]
        for dy in range(3):
            for dx in range(3):
                out &= p[..., dy : dy + h, dx : dx + w]
        mask = out
    return mask


def dilate(mask: np.ndarray, steps: int) -> np.ndarray:
    return ~erode(~mask, steps)


# ---------------------------------------------------------------- vocabularies and specs


def test_factor_vocabularies():
    assert len(SHAPES) >= 8 and len(PALETTES) >= 12 and len(TEXTURES) >= 8 and len(STROKES) >= 6
    for items in (SHAPES, PALETTES, TEXTURES, STROKES):
        assert len({i.name for i in items}) == len(items)
    # a single-object caption names fill 0 and the paper: together they identify the palette
    assert len({(p.fills[0].words, p.paper.words) for p in PALETTES}) == len(PALETTES)
    assert N_STYLES == len(PALETTES) * len(TEXTURES) * len(STROKES)
    for i in range(N_STYLES):
        assert StyleSpec.from_index(i).index == i


def test_spec_validation():
    with pytest.raises(ValueError, match="shape"):
        ObjectSpec(len(SHAPES), 0.5, 0.5, 0.2)
    with pytest.raises(ValueError, match="scale"):
        ObjectSpec(0, 0.5, 0.5, 0.0)
    with pytest.raises(ValueError, match="objects"):
        ContentSpec(())
    with pytest.raises(ValueError, match="texture"):
        StyleSpec(0, len(TEXTURES), 0)
    c, s = sample_content(np.random.default_rng(0)), sample_style(np.random.default_rng(0))
    with pytest.raises(ValueError, match="size"):
        render([c], [s], size=4)
    with pytest.raises(ValueError, match="same length"):
        render([c, c], [s], size=32)


def test_style_labels_multi_hot():
    s = StyleSpec(3, 5, 2)
    lab = style_labels(s)
    assert lab.shape == (26,) and lab.dtype == np.float32
    assert np.flatnonzero(lab).tolist() == [3, 12 + 5, 20 + 2]
    batch = style_labels([sample_style(np.random.default_rng(i)) for i in range(20)])
    assert batch.shape == (20, 26) and (batch.sum(1) == 3).all()
    assert (batch[:, :12].sum(1) == 1).all() and (batch[:, 12:20].sum(1) == 1).all()


# ---------------------------------------------------------------- rendering: shapes, determinism, factors


@pytest.mark.parametrize("size", [32, 77, 128])
def test_render_shapes_and_dtypes(size):
    w = sample_world(np.random.default_rng(1), 12, size=size)
    assert w.images.shape == (12, size, size, 3) and w.images.dtype == np.uint8
    assert w.masks.shape == (12, 3, size, size) and w.masks.dtype == bool
    for i, c in enumerate(w.contents):
        assert w.masks[i, : c.count].reshape(c.count, -1).any(1).all()
        assert not w.masks[i, c.count :].any()


def test_large_render():
    images, masks = render([sample_content(np.random.default_rng(2))], [StyleSpec(1, 4, 4, 9)], size=512)
    assert images.shape == (1, 512, 512, 3) and masks.shape == (1, 3, 512, 512)


def test_same_seed_same_pixels():
    a = sample_world(np.random.default_rng(123), 24)
    b = sample_world(np.random.default_rng(123), 24)
    assert a.contents == b.contents and a.styles == b.styles
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.masks, b.masks)
    c = sample_world(np.random.default_rng(124), 24)
    assert not np.array_equal(a.images, c.images)


def test_render_is_independent_of_batching():
    rng = np.random.default_rng(5)
    contents = [sample_content(rng) for _ in range(40)]
    styles = [sample_style(rng) for _ in range(40)]
    images, masks = render(contents, styles, size=48)
    for i in (0, 7, 39):
        one_img, one_mask = render([contents[i]], [styles[i]], size=48)
        np.testing.assert_array_equal(one_img[0], images[i])
        np.testing.assert_array_equal(one_mask[0], masks[i])
    rev_img, _ = render(contents[::-1], styles[::-1], size=48)
    np.testing.assert_array_equal(rev_img[::-1], images)


@pytest.mark.parametrize("shape", range(len(SHAPES)))
def test_masks_equal_analytic_shapes(shape):
    rng = np.random.default_rng(shape)
    size = 96
    objs = [
        ObjectSpec(
            shape,
            float(rng.uniform(0.3, 0.7)),
            float(rng.uniform(0.3, 0.7)),
            float(rng.uniform(0.1, 0.3)),
            float(rng.uniform(0, 2 * math.pi)),
        )
        for _ in range(6)
    ]
    objs.append(ObjectSpec(shape, 0.5, 0.5, 0.3, 0.0))
    contents = [ContentSpec((o,)) for o in objs]
    _, masks = render(contents, [StyleSpec(0, 0, 0)] * len(objs), size=size)
    for o, m in zip(objs, masks[:, 0], strict=True):
        expected = analytic_mask(o, size)
        assert expected.sum() > 50
        assert (m != expected).sum() <= 1, SHAPES[shape].name


def test_multi_object_masks_and_layout():
    rng = np.random.default_rng(9)
    for _ in range(30):
        c = sample_content(rng, count=3)
        _, masks = render([c], [StyleSpec(0, 0, 0)], size=64)
        for k, o in enumerate(c.objects):
            assert (masks[0, k] != analytic_mask(o, 64)).sum() <= 1
        # distinct grid cells: objects never overlap, and all lie inside the image
        assert masks[0].sum(0).max() == 1
        assert not masks[0][:, [0, -1], :].any() and not masks[0][:, :, [0, -1]].any()


def test_flat_fill_colours_and_paper():
    rng = np.random.default_rng(3)
    for p in range(len(PALETTES)):
        c = sample_content(rng, count=3)
        images, masks = render([c], [StyleSpec(p, idx(TEXTURES, "flat"), idx(STROKES, "none"))], size=64)
        for k in range(3):
            deep = erode(masks[0, k], 1)
            assert deep.any()
            assert (images[0][deep] == np.array(PALETTES[p].fills[k].rgb, dtype=np.uint8)).all()
        far = ~dilate(masks[0].any(0), 2)
        assert (images[0][far] == np.array(PALETTES[p].paper.rgb, dtype=np.uint8)).all()


@pytest.mark.parametrize("texture", range(len(TEXTURES)))
def test_paper_is_independent_of_content(texture):
    """Pixels out of reach of every object show the same paper whatever the content."""
    rng = np.random.default_rng(100 + texture)
    size = 64
    reach = math.ceil(STROKE_REACH * size) + 2
    style = StyleSpec(int(rng.integers(12)), texture, idx(STROKES, "thick"), seed=77)
    c1, c2 = sample_content(rng), sample_content(rng)
    images, masks = render([c1, c2], [style, style], size=size)
    free = ~dilate(masks[0].any(0), reach) & ~dilate(masks[1].any(0), reach)
    assert free.sum() > 200
    np.testing.assert_array_equal(images[0][free], images[1][free])
    if TEXTURES[texture].name == "flat":
        assert (images[0][free] == np.array(PALETTES[style.palette].paper.rgb, dtype=np.uint8)).all()
    else:
        assert images[0][free].std(0).max() > 3  # a real texture varies


def test_stroke_only_changes_pixels_near_the_contour():
    rng = np.random.default_rng(11)
    size = 64
    reach = math.ceil(STROKE_REACH * size) + 2
    for stroke in STROKES:
        c = sample_content(rng, count=1)
        base = StyleSpec(2, idx(TEXTURES, "stripes"), idx(STROKES, "none"), seed=5)
        styled = StyleSpec(2, base.texture, idx(STROKES, stroke.name), seed=5)
        images, masks = render([c, c], [base, styled], size=size)
        np.testing.assert_array_equal(masks[0], masks[1])
        changed = (images[0] != images[1]).any(-1)
        near = dilate(masks[0, 0], reach) & ~erode(masks[0, 0], reach)
        assert not (changed & ~near).any(), stroke.name
        assert changed.any() == (stroke.name != "none"), stroke.name


def test_every_style_factor_changes_the_image():
    c = sample_content(np.random.default_rng(4), count=2)
    base = StyleSpec(0, 1, 1, seed=3)
    ref = render([c], [base], size=64)[0][0]
    for field, n in (("palette", len(PALETTES)), ("texture", len(TEXTURES)), ("stroke", len(STROKES))):
        for v in range(n):
            if v != getattr(base, field):
                s = StyleSpec(**{**base.__dict__, field: v})
                assert not np.array_equal(render([c], [s], size=64)[0][0], ref), (field, v)
    # the nuisance seed changes the texture phase but not the masks
    img2, m2 = render([c, c], [base, StyleSpec(0, 1, 1, seed=4)], size=64)
    assert not np.array_equal(img2[0], img2[1]) and np.array_equal(m2[0], m2[1])


# ---------------------------------------------------------------- captions


def test_caption_example_and_vocabulary():
    star, ring = idx(SHAPES, "star"), idx(SHAPES, "ring")
    content = ContentSpec((ObjectSpec(star, 0.3, 0.3, 0.1), ObjectSpec(ring, 0.7, 0.7, 0.1)))
    style = StyleSpec(idx(PALETTES, "ember"), idx(TEXTURES, "stripes"), idx(STROKES, "thick"))
    assert caption(content, style) == "a red star and an orange ring on striped cream paper, thick outline"
    vocab = set(caption_vocabulary())
    assert all(w.isascii() and w.isalpha() and w.islower() for w in vocab)
    w = sample_world(np.random.default_rng(8), 300, size=8)
    for text in w.captions:
        assert set(caption_words(text)) <= vocab, text
    for s in STROKES:
        assert set(s.phrase.split()) <= vocab


# ---------------------------------------------------------------- pairs and sets


def test_positive_pairs():
    a, b = positive_pairs(np.random.default_rng(0), 16, size=32)
    assert len(a) == len(b) == 16
    for ca, cb, sa, sb in zip(a.contents, b.contents, a.styles, b.styles, strict=True):
        assert sa.key == sb.key and sa.seed != sb.seed
        assert ca.content_class != cb.content_class


@pytest.mark.parametrize("factor", [None, "palette", "texture", "stroke"])
def test_hard_negatives(factor):
    k = 3
    anchors, negs = hard_negatives(np.random.default_rng(1), 5, k=k, size=32, factor=factor)
    assert len(anchors) == 5 and len(negs) == 5 * k
    for i in range(5):
        keys = {negs.styles[i * k + j].key for j in range(k)}
        assert len(keys) == k and anchors.styles[i].key not in keys
        for j in range(k):
            n = i * k + j
            assert negs.contents[n] == anchors.contents[i] and negs.styles[n].seed == anchors.styles[i].seed
            np.testing.assert_array_equal(negs.masks[n], anchors.masks[i])
            if factor is not None:
                others = {"palette", "texture", "stroke"} - {factor}
                assert all(getattr(negs.styles[n], f) == getattr(anchors.styles[i], f) for f in others)
    with pytest.raises(ValueError, match="k="):
        hard_negatives(np.random.default_rng(1), 1, k=6, factor="stroke")


def test_style_and_subject_sets():
    s = style_set(np.random.default_rng(2), 8, style=(4, 2, 3), size=32)
    assert {st.key for st in s.styles} == {(4, 2, 3)} and len({st.seed for st in s.styles}) == 8
    assert len({c for c in s.contents}) == 8
    sub = subject_set(np.random.default_rng(3), 6, shape=idx(SHAPES, "star"), size=32)
    assert all(c.shapes == (idx(SHAPES, "star"),) for c in sub.contents)
    assert len({st.key for st in sub.styles}) == 1 and len({c.objects[0] for c in sub.contents}) == 6
    varied = subject_set(np.random.default_rng(3), 6, shape=0, vary_style=True, size=32)
    assert len({st.key for st in varied.styles}) > 1


# ---------------------------------------------------------------- splits


def _all_pairs():
    """One content per content class x every style index."""
    contents = []
    for shape in range(len(SHAPES)):
        for count in (1, 2, 3):
            contents.append(sample_content(np.random.default_rng(shape * 3 + count), shapes=(shape,) * count))
    return contents, [StyleSpec.from_index(i) for i in range(N_STYLES)]


def test_splits_are_fixed_and_disjoint():
    contents, styles = _all_pairs()
    assert sorted(c.content_class for c in contents) == list(range(30))
    # content_style: the test part holds ~10 % of combinations; every class and style occurs in train
    part = np.array([[split_of(c, s, "content_style") == "test" for s in styles] for c in contents])
    assert 0.08 < part.mean() < 0.12
    assert (~part).any(1).all() and (~part).any(0).all()
    # the part depends only on (content class, style key): other poses and seeds agree
    rng = np.random.default_rng(0)
    for _ in range(200):
        c, s = sample_content(rng), sample_style(rng)
        same_class = next(x for x in contents if x.content_class == c.content_class)
        expected = "test" if part[contents.index(same_class), s.index] else "train"
        assert split_of(c, s, "content_style") == expected
    # style split: held-out styles; each factor value occurs in both parts
    test_styles = world.held_out_styles("style")
    assert len(test_styles) == 63 and test_styles[:5] == [2, 18, 19, 32, 41]  # pinned: the split is fixed
    for field, n in (("palette", 12), ("texture", 8), ("stroke", 6)):
        in_test = {getattr(StyleSpec.from_index(i), field) for i in test_styles}
        in_train = {getattr(StyleSpec.from_index(i), field) for i in range(N_STYLES) if i not in test_styles}
        assert in_test == in_train == set(range(n)), field
    # factor split: held-out (palette, texture) pairs never occur in train
    factor_test = world.held_out_styles("factor")
    assert len(factor_test) == 72
    held = {(StyleSpec.from_index(i).palette, StyleSpec.from_index(i).texture) for i in factor_test}
    assert held == set(world.HELD_OUT_PALETTE_TEXTURE)
    assert (11, 2) in held and len({p for p, _ in held}) == 12


@pytest.mark.parametrize("split", list(SPLITS))
def test_samplers_respect_splits(split):
    rng = np.random.default_rng(6)
    for part in ("train", "test"):
        w = sample_world(rng, 40, size=8, split=split, part=part)
        assert all(split_of(c, s, split) == part for c, s in zip(w.contents, w.styles, strict=True))
        a, b = positive_pairs(rng, 6, size=8, split=split, part=part)
        anchors, negs = hard_negatives(rng, 3, k=2, size=8, split=split, part=part)
        for batch in (a, b, anchors, negs):
            assert all(
                split_of(c, s, split) == part for c, s in zip(batch.contents, batch.styles, strict=True)
            )
    train = sample_world(rng, 200, size=8, split=split, part="train")
    test = sample_world(rng, 200, size=8, split=split, part="test")
    if SPLITS[split].style_only:
        assert not {s.key for s in train.styles} & {s.key for s in test.styles}
    else:
        pairs = lambda w: {(c.content_class, s.key) for c, s in zip(w.contents, w.styles, strict=True)}  # noqa: E731
        assert not pairs(train) & pairs(test)
    with pytest.raises(ValueError, match="part"):
        sample_world(rng, 1, split=split, part="val")


# ---------------------------------------------------------------- video and flow


def _bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample img (H, W, C) at pixel coordinates (x, y) (pixel centres at integer + 0.5)."""
    h, w = img.shape[:2]
    x = np.clip(x - 0.5, 0, w - 1.001)
    y = np.clip(y - 0.5, 0, h - 1.001)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    im = img.astype(np.float64)
    top = im[y0, x0] * (1 - fx) + im[y0, x0 + 1] * fx
    bottom = im[y0 + 1, x0] * (1 - fx) + im[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def test_video_flow_warps_masks():
    rng = np.random.default_rng(21)
    for _ in range(4):
        v = sample_video(rng, n_frames=6, size=64)
        t_frames = v.frames.shape[0]
        assert v.frames.shape == (6, 64, 64, 3) and v.masks.shape == (6, 3, 64, 64)
        assert v.flow.shape == (5, 64, 64, 2) and v.flow.dtype == np.float32
        rows, cols = np.mgrid[0:64, 0:64]
        moving = 0
        for t in range(t_frames - 1):
            top = np.full((64, 64), -1)
            for k in range(v.contents[t].count):
                top[v.masks[t, k]] = k
            assert (v.flow[t][top < 0] == 0).all()  # static paper
            for k in range(v.contents[t].count):
                interior = erode(v.masks[t, k], 2) & (top == k)
                x2 = np.rint(cols + 0.5 + v.flow[t, ..., 0] - 0.5).astype(int)
                y2 = np.rint(rows + 0.5 + v.flow[t, ..., 1] - 0.5).astype(int)
                assert v.masks[t + 1, k][y2[interior], x2[interior]].all()
                moving += int((np.abs(v.flow[t][interior]) > 0.5).any())
        assert v.caption == caption(v.contents[0], v.style)
    assert moving > 0


def test_video_flow_is_exact_rigid_motion():
    """Textured object interiors of frame t reappear at p + flow in frame t + 1; zero flow does worse."""
    content = ContentSpec((ObjectSpec(idx(SHAPES, "square"), 0.35, 0.4, 0.25, 0.3),))
    style = StyleSpec(1, idx(TEXTURES, "stripes"), idx(STROKES, "none"), seed=3)
    motion = world.Motion(velocity=((0.05, 0.03),), spin=(0.12,))
    v = render_video(content, style, motion, n_frames=3, size=96)
    rows, cols = np.mgrid[0:96, 0:96]
    for t in range(2):
        interior = erode(v.masks[t, 0], 3) & erode(v.masks[t + 1, 0], 3)
        warped = _bilinear(v.frames[t + 1], cols + 0.5 + v.flow[t, ..., 0], rows + 0.5 + v.flow[t, ..., 1])
        err = np.abs(warped[interior] - v.frames[t][interior]).mean()
        err_static = np.abs(v.frames[t + 1][interior].astype(float) - v.frames[t][interior]).mean()
        assert err < 0.35 * err_static, (err, err_static)
        # analytic check of one pixel: the flow is the rigid motion of its centre
        i, j = np.argwhere(interior)[0]
        o = v.contents[t].objects[0]
        p = np.array([(j + 0.5) / 96 - o.cx, (i + 0.5) / 96 - o.cy])
        c, s = math.cos(0.12), math.sin(0.12)
        p2 = np.array([o.cx + 0.05 + c * p[0] - s * p[1], o.cy + 0.03 + s * p[0] + c * p[1]])
        expected = p2 * 96 - np.array([j + 0.5, i + 0.5])
        np.testing.assert_allclose(v.flow[t, i, j], expected, atol=1e-4)


def test_video_objects_stay_inside():
    rng = np.random.default_rng(4)
    for _ in range(5):
        v = sample_video(rng, n_frames=10, size=48)
        assert not v.masks[:, :, [0, -1], :].any() and not v.masks[:, :, :, [0, -1]].any()
        for t in range(10):
            for k, o in enumerate(v.contents[t].objects):
                assert (v.masks[t, k] != analytic_mask(o, 48)).sum() <= 1


def test_objects_partly_outside_and_resolution_independence():
    objs = [
        ObjectSpec(6, 0.02, 0.5, 0.3, 0.4),
        ObjectSpec(7, 1.1, -0.05, 0.25, 1.0),
        ObjectSpec(9, 0.5, 0.5, 0.35, 2.0),
    ]
    style = StyleSpec(3, idx(TEXTURES, "stripes"), idx(STROKES, "thick"), seed=1)
    areas = []
    for size in (32, 128, 200):
        _, masks = render([ContentSpec((o,)) for o in objs], [style] * 3, size=size)
        for o, m in zip(objs, masks[:, 0], strict=True):
            assert (m != analytic_mask(o, size)).sum() <= 1
        areas.append(masks[:, 0].mean((1, 2)))
    np.testing.assert_allclose(areas[0], areas[1], atol=0.02)
    np.testing.assert_allclose(areas[1], areas[2], atol=0.01)
