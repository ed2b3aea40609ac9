"""Vectorised numpy renderer of the synthetic style world.

Image formation, per image (colours in float32 ``[0, 255]``, rounded to uint8 at the end):

1. Paper: ``paper + (ink - paper) * t`` with ``t`` the texture field in image coordinates.
2. Objects, in order (later on top), each evaluated only on a square patch around it:

   - fill: ``fill + (alt - fill) * t`` with ``fill = palette.fills[k % 3]``,
     ``alt = 0.6 * fill + 0.4 * paper`` and ``t`` the texture field in the object's frame (image units,
     rotated and moved with the object);
   - coverage ``clip(0.5 - d, 0, 1)`` with ``d`` the signed distance to the shape in pixels (half-pixel
     antialiasing); ``soft`` instead ramps (smoothstep) from 0 on the contour to 1 at depth
     ``min(0.04 S, 0.3 r)`` pixels inside (``r`` the object radius in pixels);
   - outline (thin, thick, dashed, wobbly): a band of width :data:`STROKE_WIDTH` centred on the contour,
     painted in ``palette.stroke`` over the fill; ``dashed`` is cut into dashes of period 0.06 along the
     contour, ``wobbly`` moves the band's centre off the contour by
     ``0.6 * width * (0.6 sin(3 a + p1) + 0.4 sin(5 a + p2))`` (``a`` the polar angle in the object frame).

Masks are exact: ``masks[b, k, i, j]`` is True iff the centre of pixel ``(i, j)`` lies in object ``k``'s
shape (signed distance ``<= 0``), whether or not a later object covers it (amodal masks). Every pixel
further than ``STROKE_REACH * S + 1`` pixels from all masks shows the paper alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .factors import MAX_OBJECTS, PALETTES, STROKES, TEXTURES
from .geometry import shape_sdf
from .specs import ContentSpec, StyleSpec
from .textures import N_PARAMS, layer_uniforms, texture_field

MIN_SIZE = 8
MAX_SIZE = 1024

STROKE_WIDTH = {"thin": 0.02, "thick": 0.05, "dashed": 0.035, "wobbly": 0.035}
"""Outline widths in image units (capped at half the object radius); the band is centred on the contour."""
WOBBLE = 0.6
"""The wobbly band's centre moves off the contour by up to ``WOBBLE`` times its width."""
STROKE_REACH = 0.05
"""Upper bound (image units) on how far an outline reaches outside its object's mask."""
DASH_PERIOD = 0.06
SOFT_WIDTH = 0.04
TEXTURE_SHADE = 0.4
"""Objects' texture colour: ``(1 - TEXTURE_SHADE) * fill + TEXTURE_SHADE * paper``."""

TEXTURES_FLAT = next(i for i, t in enumerate(TEXTURES) if t.name == "flat")
_OUTLINED = [i for i, st in enumerate(STROKES) if st.name in STROKE_WIDTH]
_BUCKET_RATIO = 1.25  # objects whose patch half-sizes differ by less than this share one vectorised pass
_PIXEL_BUDGET = 1 << 20  # pixels per chunk of images (256 images at 64 x 64): amortises per-group overhead

_PAPER = np.array([p.paper.rgb for p in PALETTES], dtype=np.float32)
_INK = np.array([p.ink for p in PALETTES], dtype=np.float32)
_FILLS = np.array([[f.rgb for f in p.fills] for p in PALETTES], dtype=np.float32)
_STROKE = np.array([p.stroke for p in PALETTES], dtype=np.float32)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got {size!r}")
    return int(size)


def render(
    contents: Sequence[ContentSpec], styles: Sequence[StyleSpec], size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """Render a batch of (content, style) pairs.

    Args:
        contents: ``B`` content specs.
        styles: ``B`` style specs (``styles[i]`` draws ``contents[i]``).
        size: square image side in pixels (8..1024; 32..512 is the intended range).

    Returns:
        ``images``: uint8 ``(B, size, size, 3)`` RGB in ``[0, 255]``;
        ``masks``: bool ``(B, 3, size, size)``, the exact (amodal) mask of each object, False for absent ones.
    """
    size = _check_size(size)
    contents = list(contents)
    styles = list(styles)
    if len(contents) != len(styles):
        raise ValueError(
            f"contents and styles must have the same length, got {len(contents)} and {len(styles)}"
        )
    for i, (c, s) in enumerate(zip(contents, styles, strict=True)):
        if not isinstance(c, ContentSpec):
            raise TypeError(f"contents[{i}] must be a ContentSpec, got {type(c).__name__}")
        if not isinstance(s, StyleSpec):
            raise TypeError(f"styles[{i}] must be a StyleSpec, got {type(s).__name__}")
    n = len(contents)
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    masks = np.zeros((n, MAX_OBJECTS, size, size), dtype=bool)
    chunk = max(1, _PIXEL_BUDGET // (size * size))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        canvas = _render_chunk(contents[start:stop], styles[start:stop], size, masks[start:stop])
        np.add(canvas, 0.5, out=canvas)
        np.clip(canvas, 0, 255, out=canvas)
        images[start:stop] = canvas
    return images, masks


def _render_chunk(
    contents: list[ContentSpec], styles: list[StyleSpec], size: int, masks: np.ndarray
) -> np.ndarray:
    """Render one chunk; writes the masks into ``masks`` (``(b, 3, S, S)``, zeroed) and returns float32
    ``(b, S, S, 3)`` colours in ``[0, 255]``."""
    b = len(contents)
    palette = np.array([s.palette for s in styles])
    texture = np.array([s.texture for s in styles])
    stroke = np.array([s.stroke for s in styles])
    seed = np.array([s.seed for s in styles], dtype=np.uint64)
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size

    # paper: one texture weight map for the whole chunk (0 where flat), then one colour pass
    weight = np.zeros((b, size, size), dtype=np.float32)
    textured = np.flatnonzero(texture != TEXTURES_FLAT)
    if textured.size:
        u = layer_uniforms(seed[textured], np.zeros(textured.size), N_PARAMS + 1)
        noise_seed = (u[:, N_PARAMS] * 2.0**32).astype(np.uint32)
        for kind in np.unique(texture[textured]):
            sel = np.flatnonzero(texture[textured] == kind)
            m = len(sel)
            x = np.broadcast_to(centres[None, None, :], (m, size, size))
            y = np.broadcast_to(centres[None, :, None], (m, size, size))
            weight[textured[sel]] = texture_field(int(kind), x, y, u[sel], noise_seed[sel])
    paper = _PAPER[palette][:, None, None, :]
    canvas = np.multiply(weight[..., None], _INK[palette][:, None, None, :] - paper)
    canvas += paper

    # object table: (image, k, shape, cx, cy, scale, rotation, count)
    rows = [
        (i, k, o.shape, o.cx, o.cy, o.scale, o.rotation, len(c.objects))
        for i, c in enumerate(contents)
        for k, o in enumerate(c.objects)
    ]
    obj = np.array(rows, dtype=np.float64)
    ok = obj[:, 1].astype(np.int64)
    outlined = np.isin(stroke, _OUTLINED)[obj[:, 0].astype(np.int64)]
    half = np.ceil((obj[:, 5] + np.where(outlined, STROKE_REACH, 0.0)) * size + 2).astype(np.int64)
    canvas_flat = canvas.reshape(-1, 3)
    masks_flat = masks.reshape(-1)
    # objects of one layer k at a time (at most one per image), bucketed by patch size
    for k in range(MAX_OBJECTS):
        layer = np.flatnonzero(ok == k)
        layer = layer[np.argsort(half[layer], kind="stable")]
        while layer.size:
            n_bucket = int(np.searchsorted(half[layer], half[layer[0]] * _BUCKET_RATIO, side="right"))
            sel = layer[:n_bucket]
            layer = layer[n_bucket:]
            h = int(half[sel].max())
            _draw_objects(canvas_flat, masks_flat, obj[sel], h, size, palette, texture, stroke, seed)
    return canvas


def _draw_objects(
    canvas: np.ndarray,
    masks: np.ndarray,
    obj: np.ndarray,
    half: int,
    size: int,
    palette: np.ndarray,
    texture: np.ndarray,
    stroke: np.ndarray,
    seed: np.ndarray,
) -> None:
    """Draw ``N`` objects (rows of the object table, at most one per image) in place.

    ``canvas`` is the chunk's float32 colours flattened to ``(b * S * S, 3)``; ``masks`` its bool masks
    flattened to ``(b * 3 * S * S,)``. Each object is evaluated on a ``P x P`` patch of pixels that holds
    every pixel it can touch (``P = min(2 * half, S)``), shifted (not cut) where it would leave the image.
    """
    ib = obj[:, 0].astype(np.int64)
    k = obj[:, 1].astype(np.int64)
    shape = obj[:, 2].astype(np.int64)
    cx, cy, scale, rot = obj[:, 3], obj[:, 4], obj[:, 5], obj[:, 6]
    p = min(2 * half, size)
    ar = np.arange(p)
    x0 = np.clip(np.floor(cx * size).astype(np.int64) - half, 0, size - p)
    y0 = np.clip(np.floor(cy * size).astype(np.int64) - half, 0, size - p)
    cols = x0[:, None] + ar[None, :]  # (N, P) pixel columns
    rows = y0[:, None] + ar[None, :]
    dx = ((cols + 0.5) / size - cx[:, None]).astype(np.float32)[:, None, :]
    dy = ((rows + 0.5) / size - cy[:, None]).astype(np.float32)[:, :, None]
    cos = np.cos(rot).astype(np.float32)[:, None, None]
    sin = np.sin(rot).astype(np.float32)[:, None, None]
    inv_s = (1.0 / scale).astype(np.float32)[:, None, None]
    ex = cos * dx + sin * dy  # object frame, image units (N, P, P)
    ey = cos * dy - sin * dx
    lx = ex * inv_s  # unit frame
    ly = ey * inv_s

    sdf = np.empty(lx.shape, dtype=np.float32)
    for s in np.unique(shape):
        sel = np.flatnonzero(shape == s)
        sdf[sel] = shape_sdf(int(s), lx[sel], ly[sel])
    radius_px = (scale * size).astype(np.float32)
    d = sdf * radius_px[:, None, None]  # signed distance in pixels

    pal = palette[ib]
    tex = texture[ib]
    stk = stroke[ib]
    seeds = seed[ib]
    fill = _FILLS[pal, k % 3]
    paper = _PAPER[pal]
    alt = (1 - TEXTURE_SHADE) * fill + TEXTURE_SHADE * paper
    u = layer_uniforms(seeds, k + 1, N_PARAMS + 3)
    nseed = (u[:, N_PARAMS] * 2.0**32).astype(np.uint32)
    t = np.zeros(lx.shape, dtype=np.float32)
    for kind in np.unique(tex):
        if kind != TEXTURES_FLAT:
            sel = np.flatnonzero(tex == kind)
            t[sel] = texture_field(int(kind), ex[sel], ey[sel], u[sel], nseed[sel])

    alpha = np.clip(0.5 - d, 0.0, 1.0)
    band = np.zeros(lx.shape, dtype=np.float32)
    for kind in np.unique(stk):
        name = STROKES[kind].name
        if name == "none":
            continue
        sel = np.flatnonzero(stk == kind)
        rad = radius_px[sel][:, None, None]
        if name == "soft":
            width = np.minimum(np.float32(SOFT_WIDTH * size), 0.3 * rad)
            ramp = np.clip(-d[sel] / width, 0.0, 1.0)
            alpha[sel] = ramp * ramp * (3 - 2 * ramp)
            continue
        half_width = np.minimum(np.float32(STROKE_WIDTH[name] * size), 0.5 * rad) * 0.5
        dist = d[sel]
        if name in ("dashed", "wobbly"):
            angle = np.arctan2(ly[sel], lx[sel])
            phase = (u[sel, N_PARAMS + 1 :] * (2 * math.pi)).astype(np.float32)[:, :, None, None]
            if name == "wobbly":
                wob = 0.6 * np.sin(3 * angle + phase[:, 0]) + 0.4 * np.sin(5 * angle + phase[:, 1])
                dist = dist - (WOBBLE * 2) * half_width * wob
        bsel = np.clip(half_width + 0.5 - np.abs(dist), 0.0, 1.0)
        if name == "dashed":
            n_dash = np.maximum(3, np.round(2 * math.pi * scale[sel] / DASH_PERIOD)).astype(np.float32)
            bsel *= np.clip(0.5 + 3.0 * np.sin(n_dash[:, None, None] * angle + phase[:, 0]), 0.0, 1.0)
        band[sel] = bsel

    # fill colour shaded by the texture, laid over the canvas with coverage alpha; then the stroke on top
    pix = (ib[:, None, None] * size + rows[:, :, None]) * size + cols[:, None, :]  # (N, P, P) flat pixel ids
    region = canvas.take(pix, axis=0)
    colour = fill[:, None, None, :] + (alt - fill)[:, None, None, :] * t[..., None]
    colour -= region
    colour *= alpha[..., None]
    region += colour
    outlined = np.flatnonzero(np.isin(stk, _OUTLINED))
    if outlined.size:
        sub = region[outlined]
        sub += (_STROKE[pal[outlined]][:, None, None, :] - sub) * band[outlined][..., None]
        region[outlined] = sub
    canvas[pix] = region
    mpix = pix + ((ib * (MAX_OBJECTS - 1) + k) * size * size)[:, None, None]  # flat ids into (b, 3, S, S)
    masks[mpix] = sdf <= 0
