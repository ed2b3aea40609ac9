"""Signed distance functions of the unit shapes.

Every shape lives in the unit disc of its local frame (``x`` right, ``y`` down, "up" is ``-y``): it fits in
the circle of radius 1, so an object of ``scale`` s covers at most a disc of radius ``s`` (image units).
The SDF is negative inside, positive outside and zero on the boundary; its sign is exact (masks are
``sdf <= 0``) and so are the distances (outlines and antialiasing rely on them).

Definitions (unit frame):

- circle: disc of radius 1.
- square: axis-aligned square of half-side ``1/sqrt(2)`` (circumradius 1).
- triangle, pentagon, hexagon: regular polygons of circumradius 1 with a vertex pointing up (angle -pi/2).
- diamond: rhombus with vertices ``(0, -1), (0.6, 0), (0, 1), (-0.6, 0)``.
- star: 5 outer vertices at radius 1 (first one up) alternating with 5 inner vertices at radius 0.45.
- cross: plus sign of two bars of half-width 0.32 and half-length 0.94.
- ring: annulus with radii 0.6 and 1.
- crescent: disc of radius 1 minus the disc of radius 0.8 centred at ``(0.4, 0)``.
"""

from __future__ import annotations

import math

import numpy as np

from .factors import SHAPES

STAR_INNER = 0.45
CROSS_HALF_WIDTH = 0.32
CROSS_HALF_LENGTH = 0.94
RING_INNER = 0.6
CRESCENT_CUT = (0.4, 0.0, 0.8)
"""``(cx, cy, r)`` of the disc cut out of the unit disc to make the crescent."""
DIAMOND_HALF_WIDTH = 0.6


def regular_polygon(n: int, offset: float = -math.pi / 2, radius: float = 1.0) -> np.ndarray:
    """Vertices ``(n, 2)`` float64 of a regular n-gon, the first at angle ``offset``, counter-clockwise in math
    terms (clockwise on screen)."""
    a = offset + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(a), radius * np.sin(a)], axis=1)


def _star() -> np.ndarray:
    outer = regular_polygon(5)
    inner = regular_polygon(5, offset=-math.pi / 2 + math.pi / 5, radius=STAR_INNER)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _cross() -> np.ndarray:
    w, h = CROSS_HALF_WIDTH, CROSS_HALF_LENGTH
    return np.array(
        [
            (-w, -h),
            (w, -h),
            (w, -w),
            (h, -w),
            (h, w),
            (w, w),
            (w, h),
            (-w, h),
            (-w, w),
            (-h, w),
            (-h, -w),
            (-w, -w),
        ]
    )


POLYGONS: dict[str, np.ndarray] = {
    "square": regular_polygon(4, offset=-math.pi / 4),
    "triangle": regular_polygon(3),
    "diamond": np.array([(0.0, -1.0), (DIAMOND_HALF_WIDTH, 0.0), (0.0, 1.0), (-DIAMOND_HALF_WIDTH, 0.0)]),
    "pentagon": regular_polygon(5),
    "hexagon": regular_polygon(6),
    "star": _star(),
    "cross": _cross(),
}
"""Vertex arrays ``(n, 2)`` of the polygonal shapes in the unit frame."""


def sd_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (I. Quilez's ``sdPolygon``), elementwise.

    Args:
        x, y: float32 arrays of any (equal) shape: query points in the unit frame.
        vertices: ``(n, 2)`` polygon vertices.

    Returns:
        float32 array like ``x``: negative inside.
    """
    vx = vertices[:, 0].astype(np.float32)
    vy = vertices[:, 1].astype(np.float32)
    n = len(vx)
    d = (x - vx[0]) ** 2 + (y - vy[0]) ** 2
    inside = np.zeros(x.shape, dtype=bool)
    for i in range(n):
        j = i - 1
        ex, ey = vx[j] - vx[i], vy[j] - vy[i]
        wx, wy = x - vx[i], y - vy[i]
        t = np.clip((wx * ex + wy * ey) * (1.0 / (ex * ex + ey * ey)), 0.0, 1.0)
        bx = wx - ex * t
        by = wy - ey * t
        np.minimum(d, bx * bx + by * by, out=d)
        c1 = y >= vy[i]
        c2 = y < vy[j]
        c3 = ex * wy > ey * wx
        inside ^= (c1 == c2) & (c2 == c3)
    dist = np.sqrt(d)
    return np.where(inside, -dist, dist)


def _sd_moon(x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Exact SDF of the crescent (I. Quilez's ``sdMoon``: unit disc minus the disc ``CRESCENT_CUT``)."""
    d, _, rb = CRESCENT_CUT
    ay = np.abs(y)
    a = (1.0 - rb * rb + d * d) / (2.0 * d)  # the horn tips are at (a, +-b)
    b = math.sqrt(max(1.0 - a * a, 0.0))
    body = np.maximum(r - 1.0, rb - np.sqrt((x - d) ** 2 + ay * ay))
    horn = np.sqrt((x - a) ** 2 + (ay - b) ** 2)
    return np.where(d * (x * b - ay * a) > d * d * np.maximum(b - ay, 0.0), horn, body).astype(np.float32)


def shape_sdf(shape: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (unit-frame units) to shape ``shape`` (index into ``SHAPES``) at points ``(x, y)``.

    Args:
        shape: shape index.
        x, y: float32 arrays of equal shape (any rank), unit-frame coordinates.

    Returns:
        float32 array like ``x``; ``<= 0`` exactly on the shape.
    """
    name = SHAPES[shape].name
    if name in POLYGONS:
        return sd_polygon(x, y, POLYGONS[name])
    r = np.sqrt(x * x + y * y)
    if name == "circle":
        return r - 1.0
    if name == "ring":
        mid = (1.0 + RING_INNER) / 2
        return np.abs(r - mid) - (1.0 - RING_INNER) / 2
    if name == "crescent":
        return _sd_moon(x, y, r)
    raise AssertionError(f"no SDF for shape {name!r}")  # pragma: no cover - guarded by the SHAPES tests
