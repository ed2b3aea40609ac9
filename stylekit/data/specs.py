"""Content and style specifications and their samplers.

Coordinates are normalised to the image side: ``x`` runs right and ``y`` runs down, both in ``[0, 1]``;
pixel ``(row i, column j)`` of an ``S x S`` render has its centre at ``((j + 0.5) / S, (i + 0.5) / S)``.
So one spec renders the same scene at any size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .factors import (
    MAX_OBJECTS,
    N_PALETTES,
    N_SHAPES,
    N_STROKES,
    N_STYLE_LABELS,
    N_STYLES,
    N_TEXTURES,
    PALETTES,
    SHAPES,
    STROKES,
    TEXTURES,
)

SINGLE_SCALE = (0.20, 0.32)
"""Range of ``ObjectSpec.scale`` for a lone object."""
MULTI_SCALE = (0.09, 0.15)
"""Range of ``ObjectSpec.scale`` when there are 2 or 3 objects (one per cell of a 3 x 3 grid)."""
GRID = 3
"""Objects of multi-object scenes sit in distinct cells of a ``GRID x GRID`` grid, so they never overlap."""


@dataclass(frozen=True)
class ObjectSpec:
    """One object: a shape at a pose.

    Attributes:
        shape: index into :data:`~stylekit.data.factors.SHAPES`.
        cx, cy: centre in normalised image coordinates (``[0, 1]`` is the image, ``y`` down; ``[-1, 2]``
            accepted, parts outside the image are clipped).
        scale: radius of the shape's bounding circle, as a fraction of the image side (``(0, 1)``).
        rotation: angle in radians; positive turns the shape clockwise on screen (``y`` points down).
            A point ``q`` of the unit shape lands at ``c + scale * R(rotation) q`` with
            ``R(a) = [[cos a, -sin a], [sin a, cos a]]``.
    """

    shape: int
    cx: float
    cy: float
    scale: float
    rotation: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.shape < N_SHAPES:
            raise ValueError(f"shape must be in [0, {N_SHAPES}), got {self.shape}")
        if not 0.0 < self.scale < 1.0:
            raise ValueError(f"scale must be in (0, 1), got {self.scale}")
        for name in ("cx", "cy"):
            if not -1.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-1, 2] (image units), got {getattr(self, name)}")
        if not math.isfinite(self.rotation):
            raise ValueError(f"rotation must be finite, got {self.rotation}")


@dataclass(frozen=True)
class ContentSpec:
    """What is in the picture: 1..3 objects, drawn in order (later ones on top).

    ``content_class`` = ``objects[0].shape * 3 + (count - 1)`` in ``[0, 30)``: the labelled content id
    (primary shape, count) used by splits and probes.
    """

    objects: tuple[ObjectSpec, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a ContentSpec holds 1..{MAX_OBJECTS} objects, got {len(self.objects)}")
        if not all(isinstance(o, ObjectSpec) for o in self.objects):
            raise TypeError("ContentSpec.objects must be ObjectSpec instances")

    @property
    def count(self) -> int:
        """Number of objects (1..3)."""
        return len(self.objects)

    @property
    def shapes(self) -> tuple[int, ...]:
        """Shape index of each object, in drawing order."""
        return tuple(o.shape for o in self.objects)

    @property
    def content_class(self) -> int:
        """Labelled content id ``primary_shape * 3 + count - 1`` in ``[0, 30)``."""
        return self.objects[0].shape * MAX_OBJECTS + self.count - 1


@dataclass(frozen=True)
class StyleSpec:
    """How the picture is drawn.

    Attributes:
        palette, texture, stroke: indices into the factor vocabularies; together the composite style.
        seed: nuisance seed (texture phase/angle/period jitter, dash phase, outline wobble). Two specs that
            differ only in ``seed`` are the same style; hard negatives keep the seed and change the style.
    """

    palette: int
    texture: int
    stroke: int
    seed: int = 0

    def __post_init__(self) -> None:
        for name, n in (("palette", N_PALETTES), ("texture", N_TEXTURES), ("stroke", N_STROKES)):
            value = getattr(self, name)
            if not 0 <= value < n:
                raise ValueError(f"{name} must be in [0, {n}), got {value}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"seed must be in [0, 2**32), got {self.seed}")

    @property
    def key(self) -> tuple[int, int, int]:
        """The composite style ``(palette, texture, stroke)`` without the nuisance seed."""
        return (self.palette, self.texture, self.stroke)

    @property
    def index(self) -> int:
        """Composite style id ``(palette * 8 + texture) * 6 + stroke`` in ``[0, 576)``."""
        return (self.palette * N_TEXTURES + self.texture) * N_STROKES + self.stroke

    @staticmethod
    def from_index(index: int, seed: int = 0) -> StyleSpec:
        """Inverse of :attr:`index`."""
        if not 0 <= index < N_STYLES:
            raise ValueError(f"style index must be in [0, {N_STYLES}), got {index}")
        pt, stroke = divmod(index, N_STROKES)
        palette, texture = divmod(pt, N_TEXTURES)
        return StyleSpec(palette, texture, stroke, seed)

    def describe(self) -> str:
        """Factor names, e.g. ``"ember/stripes/thick"``."""
        return f"{PALETTES[self.palette].name}/{TEXTURES[self.texture].name}/{STROKES[self.stroke].name}"


def sample_content(
    rng: np.random.Generator,
    count: int | None = None,
    shapes: tuple[int, ...] | None = None,
) -> ContentSpec:
    """Sample a scene layout.

    Args:
        rng: the random source.
        count: number of objects (1..3); uniform if None.
        shapes: shape index per object (length ``count``, or sets ``count``); uniform if None.

    Returns:
        A ContentSpec. A lone object has ``scale`` in :data:`SINGLE_SCALE`, anywhere fully inside the image.
        Two or three objects take distinct cells of the 3 x 3 grid, ``scale`` in :data:`MULTI_SCALE`, and
        stay inside their cell (margin 0.01), so objects never overlap. Rotation is uniform in ``[0, 2 pi)``.
    """
    if shapes is not None:
        shapes = tuple(int(s) for s in shapes)
        if count is not None and count != len(shapes):
            raise ValueError(f"count={count} disagrees with len(shapes)={len(shapes)}")
        count = len(shapes)
    if count is None:
        count = int(rng.integers(1, MAX_OBJECTS + 1))
    if not 1 <= count <= MAX_OBJECTS:
        raise ValueError(f"count must be in 1..{MAX_OBJECTS}, got {count}")
    if shapes is None:
        shapes = tuple(int(s) for s in rng.integers(0, N_SHAPES, size=count))
    objects = []
    if count == 1:
        scale = float(rng.uniform(*SINGLE_SCALE))
        lo, hi = scale + 0.01, 1.0 - scale - 0.01
        cx, cy = (float(v) for v in rng.uniform(lo, hi, size=2))
        objects.append(ObjectSpec(shapes[0], cx, cy, scale, float(rng.uniform(0, 2 * math.pi))))
    else:
        cells = rng.choice(GRID * GRID, size=count, replace=False)
        half = 0.5 / GRID
        for shape, cell in zip(shapes, cells, strict=True):
            scale = float(rng.uniform(*MULTI_SCALE))
            slack = half - scale - 0.01
            row, col = divmod(int(cell), GRID)
            cx = (col + 0.5) / GRID + float(rng.uniform(-slack, slack))
            cy = (row + 0.5) / GRID + float(rng.uniform(-slack, slack))
            objects.append(ObjectSpec(shape, cx, cy, scale, float(rng.uniform(0, 2 * math.pi))))
    return ContentSpec(tuple(objects))


def sample_style(rng: np.random.Generator, key: tuple[int, int, int] | None = None) -> StyleSpec:
    """Sample a style: uniform composite style (unless ``key`` fixes it) and a fresh nuisance seed.

    Use :func:`stylekit.data.sampling.sample_styles` to restrict to one part of a split.
    """
    seed = int(rng.integers(0, 2**32))
    if key is None:
        return StyleSpec.from_index(int(rng.integers(0, N_STYLES)), seed)
    return StyleSpec(*key, seed=seed)


def style_labels(style: StyleSpec | tuple[StyleSpec, ...] | list[StyleSpec]) -> np.ndarray:
    """Multi-hot style label(s).

    Returns:
        float32 array of shape ``(26,)`` for one style or ``(B, 26)`` for a sequence; entries 0..11 are the
        palette one-hot, 12..19 the texture one-hot, 20..25 the stroke one-hot (exactly three ones per row).
    """
    single = isinstance(style, StyleSpec)
    styles = [style] if single else list(style)
    out = np.zeros((len(styles), N_STYLE_LABELS), dtype=np.float32)
    for i, s in enumerate(styles):
        out[i, s.palette] = 1.0
        out[i, N_PALETTES + s.texture] = 1.0
        out[i, N_PALETTES + N_TEXTURES + s.stroke] = 1.0
    return out[0] if single else out


def style_label_names() -> list[str]:
    """Names of the 26 label entries, e.g. ``"palette:ember"``, ``"texture:flat"``, ``"stroke:none"``."""
    return (
        [f"palette:{p.name}" for p in PALETTES]
        + [f"texture:{t.name}" for t in TEXTURES]
        + [f"stroke:{s.name}" for s in STROKES]
    )


def shape_names(content: ContentSpec) -> tuple[str, ...]:
    """Shape names of the objects of ``content``, in drawing order."""
    return tuple(SHAPES[o.shape].name for o in content.objects)
