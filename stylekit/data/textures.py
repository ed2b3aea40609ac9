"""Procedural texture fields (vectorised numpy, deterministic).

A texture field maps texture-space points (image units: 1.0 = image side) to a mixing weight in ``[0, 1]``:
0 keeps the base colour, 1 gives the texture's second colour. Each layer (the paper, or one object) has its
own nuisance parameters (angle / period jitter, phase, noise seed) drawn by hashing ``(style seed, layer)``,
so one ``StyleSpec`` always yields the same texture and the same style with another seed yields a shifted,
slightly rotated instance of the same texture class.

Classes (nominal angle and period, jitter in brackets):

- flat: constant 0.
- stripes: bands at 45 deg (+-12), period 0.09 (+-15 %), half duty.
- checker: checkerboard at 0 deg (+-10), period 0.14 (two squares of 0.07).
- halftone: dots of radius 0.3 period on a 45 deg (+-10) grid of period 0.075.
- noise: 3-octave value-noise fBm, base frequency 5 per image side.
- hatching: two families of thin lines at 20 deg and 110 deg (+-10), period 0.07.
- brush: 2-octave anisotropic value noise, streaks along 15 deg (+-25).
- waves: wavy bands (crests at -45 deg +-12, period 0.11) warped by a sine of amplitude 0.25 period.
"""

from __future__ import annotations

import numpy as np

from .factors import TEXTURES

N_PARAMS = 6
"""Uniform nuisance numbers drawn per layer."""

_TAU = np.float32(2 * np.pi)
_DEG = np.pi / 180


def _mix32(h: np.ndarray) -> np.ndarray:
    """``lowbias32`` integer finaliser on uint32 arrays (wraps modulo 2**32)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x7FEB352D)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(0x846CA68B)
    return h ^ (h >> np.uint32(16))


def layer_uniforms(seeds: np.ndarray, layers: np.ndarray, n: int = N_PARAMS) -> np.ndarray:
    """Deterministic uniforms for each (style seed, layer).

    Args:
        seeds: ``(M,)`` integer style seeds in ``[0, 2**32)``.
        layers: ``(M,)`` layer ids (0 = paper, ``k + 1`` = object ``k``).
        n: how many numbers per layer.

    Returns:
        float64 ``(M, n)`` in ``[0, 1)``.
    """
    s = np.asarray(seeds, dtype=np.uint64).astype(np.uint32).reshape(-1, 1)
    layer = np.asarray(layers, dtype=np.uint32).reshape(-1, 1)
    j = np.arange(n, dtype=np.uint32).reshape(1, -1)
    h = _mix32(s ^ _mix32(layer * np.uint32(0x9E3779B9) + j * np.uint32(0x85EBCA6B) + np.uint32(0x632BE5AB)))
    return h.astype(np.float64) / 2.0**32


def _lattice(ix: np.ndarray, iy: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Hashed lattice values in ``[0, 1)`` (float32) at integer points ``(ix, iy)`` (int64), per seed."""
    hx = _mix32(ix.astype(np.uint32) * np.uint32(0x27D4EB2F) + seed)
    return _mix32(hx ^ (iy.astype(np.uint32) * np.uint32(0x165667B1))).astype(np.float32) * np.float32(
        2.0**-32
    )


def value_noise(x: np.ndarray, y: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Smooth value noise: hashed values on the integer lattice, smoothstep-interpolated.

    The value at lattice point ``(i, j)`` depends only on ``(i, j, seed)``, so the field is the same function
    of the coordinates however the points are batched.

    Args:
        x, y: float32 ``(M, H, W)`` lattice coordinates.
        seed: uint32 ``(M, 1, 1)`` per-layer seeds.

    Returns:
        float32 ``(M, H, W)`` in ``[0, 1]``.
    """
    m = x.shape[0]
    fx0 = np.floor(x)
    fy0 = np.floor(y)
    fx = x - fx0
    fy = y - fy0
    # per-layer table of the lattice values the points touch, then four gathers
    x_lo = fx0.reshape(m, -1).min(1).astype(np.int64)
    y_lo = fy0.reshape(m, -1).min(1).astype(np.int64)
    gx = int((fx0.reshape(m, -1).max(1) - x_lo).max()) + 2
    gy = int((fy0.reshape(m, -1).max(1) - y_lo).max()) + 2
    tix = x_lo[:, None, None] + np.arange(gx)[None, None, :]
    tiy = y_lo[:, None, None] + np.arange(gy)[None, :, None]
    table = _lattice(tix, tiy, np.asarray(seed, dtype=np.uint32).reshape(m, 1, 1)).reshape(-1)
    base = np.arange(m, dtype=np.int64)[:, None, None] * (gx * gy)
    flat = (fy0.astype(np.int64) - y_lo[:, None, None]) * gx
    flat += fx0.astype(np.int64) - x_lo[:, None, None]
    flat += base
    v00 = table.take(flat)
    v10 = table.take(flat + 1)
    flat += gx
    v01 = table.take(flat)
    v11 = table.take(flat + 1)
    sx = fx * fx * (3.0 - 2.0 * fx)
    sy = fy * fy * (3.0 - 2.0 * fy)
    top = v00 + (v10 - v00) * sx
    bottom = v01 + (v11 - v01) * sx
    return top + (bottom - top) * sy


def _rotate(x: np.ndarray, y: np.ndarray, angle: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.cos(angle).astype(np.float32)[:, None, None]
    s = np.sin(angle).astype(np.float32)[:, None, None]
    return x * c + y * s, y * c - x * s


def _per(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


def _band(phase: np.ndarray, sharpness: float = 1.8) -> np.ndarray:
    return np.clip(0.5 + sharpness * np.sin(phase), 0.0, 1.0)


def texture_field(kind: int, x: np.ndarray, y: np.ndarray, u: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Evaluate texture class ``kind`` for ``M`` layers.

    Args:
        kind: index into :data:`~stylekit.data.factors.TEXTURES`.
        x, y: float32 ``(M, H, W)`` texture-space coordinates (image units).
        u: float64 ``(M, N_PARAMS)`` per-layer uniforms from :func:`layer_uniforms`.
        seed: ``(M,)`` uint32 per-layer noise seeds.

    Returns:
        float32 ``(M, H, W)`` mixing weights in ``[0, 1]``.
    """
    name = TEXTURES[kind].name
    j = 2 * u - 1  # jitter in [-1, 1)
    if name == "flat":
        return np.zeros(x.shape, dtype=np.float32)
    if name == "stripes":
        a, _ = _rotate(x, y, (45 + 12 * j[:, 0]) * _DEG)
        period = 0.09 * (1 + 0.15 * j[:, 1])
        return _band(a * _per(2 * np.pi / period) + _per(2 * np.pi * u[:, 2]))
    if name == "checker":
        a, b = _rotate(x, y, (10 * j[:, 0]) * _DEG)
        k = _per(2 * np.pi / (0.14 * (1 + 0.1 * j[:, 1])))
        sa = np.sin(a * k + _per(2 * np.pi * u[:, 2]))
        sb = np.sin(b * k + _per(2 * np.pi * u[:, 3]))
        return np.clip(0.5 + 4.0 * sa * sb, 0.0, 1.0)
    if name == "halftone":
        a, b = _rotate(x, y, (45 + 10 * j[:, 0]) * _DEG)
        inv = _per(1.0 / (0.075 * (1 + 0.1 * j[:, 1])))
        fa = a * inv + _per(u[:, 2])
        fb = b * inv + _per(u[:, 3])
        fa -= np.floor(fa) + 0.5
        fb -= np.floor(fb) + 0.5
        d = np.sqrt(fa * fa + fb * fb)
        radius = _per(0.3 + 0.05 * j[:, 4])
        return np.clip((radius - d) * 8.0 + 0.5, 0.0, 1.0)
    if name == "noise":
        seeds = np.asarray(seed, dtype=np.uint32)[:, None, None]
        freq = _per(5.0 * (1 + 0.1 * j[:, 0]))
        ox, oy = _per(97 * u[:, 1]), _per(97 * u[:, 2])
        total = np.zeros(x.shape, dtype=np.float32)
        for octave, amp in enumerate((0.55, 0.3, 0.15)):
            f = freq * (2**octave)
            total += amp * value_noise(x * f + ox, y * f + oy, seeds + np.uint32(octave))
        return np.clip(0.5 + 2.4 * (total - 0.5), 0.0, 1.0)
    if name == "hatching":
        a, b = _rotate(x, y, (20 + 10 * j[:, 0]) * _DEG)
        inv = _per(1.0 / (0.07 * (1 + 0.1 * j[:, 1])))
        fa = a * inv + _per(u[:, 2])
        fb = b * inv + _per(u[:, 3])
        la = np.abs(fa - np.floor(fa) - 0.5)
        lb = np.abs(fb - np.floor(fb) - 0.5)
        return np.clip((0.16 - np.minimum(la, lb)) * 10.0 + 0.5, 0.0, 1.0)
    if name == "brush":
        a, b = _rotate(x, y, (15 + 25 * j[:, 0]) * _DEG)
        seeds = np.asarray(seed, dtype=np.uint32)[:, None, None]
        ox, oy = _per(97 * u[:, 1]), _per(97 * u[:, 2])
        n1 = value_noise(a * 1.5 + ox, b * 18.0 + oy, seeds)
        n2 = value_noise(a * 3.0 + oy, b * 36.0 + ox, seeds + np.uint32(7))
        return np.clip(0.5 + 2.6 * (0.65 * n1 + 0.35 * n2 - 0.5), 0.0, 1.0)
    if name == "waves":
        a, b = _rotate(x, y, (-45 + 12 * j[:, 0]) * _DEG)
        k = _per(2 * np.pi / (0.11 * (1 + 0.12 * j[:, 1])))
        warp = 0.25 * 2 * np.pi * np.sin(b * _per(2 * np.pi * (3 + u[:, 3])) + _per(2 * np.pi * u[:, 4]))
        return _band(a * k + warp + _per(2 * np.pi * u[:, 2]))
    raise AssertionError(f"no field for texture {name!r}")  # pragma: no cover
