"""Factor vocabularies of the synthetic style world.

Content factors: :data:`SHAPES` (10 kinds). Style factors: :data:`PALETTES` (12), :data:`TEXTURES` (8)
and :data:`STROKES` (6). Every vocabulary is a tuple of frozen dataclasses; a factor value is referred to
by its index into the tuple (``StyleSpec.palette == 3`` means ``PALETTES[3]``). The order is part of the
public contract: labels, split rules and captions depend on it, so entries are only ever appended.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]

MAX_OBJECTS = 3
"""Most objects in one image; the object axis of masks is always this long (padded with ``False``)."""


@dataclass(frozen=True)
class Shape:
    """A content shape.

    Attributes:
        name: identifier (``"star"``).
        noun: the word used in captions.
    """

    name: str
    noun: str


@dataclass(frozen=True)
class Colour:
    """A named sRGB colour; ``words`` is the caption phrase (one or two lower-case words)."""

    words: str
    rgb: RGB


@dataclass(frozen=True)
class Palette:
    """A 6-colour palette.

    Attributes:
        name: identifier (``"ember"``).
        paper: background colour (named in captions).
        ink: second background colour that textures mix into the paper.
        fills: the fill colours of objects 0, 1, 2 (object ``k`` uses ``fills[k % 3]``; named in captions).
        stroke: outline colour.
    """

    name: str
    paper: Colour
    ink: RGB
    fills: tuple[Colour, Colour, Colour]
    stroke: RGB


@dataclass(frozen=True)
class Texture:
    """A texture class. ``adjective`` describes the paper in captions (``"striped"``)."""

    name: str
    adjective: str


@dataclass(frozen=True)
class Stroke:
    """An outline / edge treatment. ``phrase`` is appended to captions (``"thick outline"``)."""

    name: str
    phrase: str


SHAPES: tuple[Shape, ...] = (
    Shape("circle", "circle"),
    Shape("square", "square"),
    Shape("triangle", "triangle"),
    Shape("diamond", "diamond"),
    Shape("pentagon", "pentagon"),
    Shape("hexagon", "hexagon"),
    Shape("star", "star"),
    Shape("cross", "cross"),
    Shape("ring", "ring"),
    Shape("crescent", "crescent"),
)


def _c(words: str, r: int, g: int, b: int) -> Colour:
    return Colour(words, (r, g, b))


PALETTES: tuple[Palette, ...] = (
    Palette(
        "ember",
        _c("cream", 244, 236, 216),
        (214, 196, 160),
        (_c("red", 200, 40, 40), _c("orange", 238, 140, 30), _c("brown", 120, 70, 30)),
        (25, 20, 20),
    ),
    Palette(
        "ocean",
        _c("white", 250, 250, 250),
        (196, 218, 236),
        (_c("blue", 40, 90, 205), _c("teal", 20, 150, 150), _c("navy", 20, 30, 95)),
        (15, 25, 70),
    ),
    Palette(
        "forest",
        _c("beige", 226, 214, 184),
        (178, 176, 118),
        (_c("green", 40, 140, 60), _c("olive", 125, 125, 40), _c("brown", 110, 70, 35)),
        (40, 40, 40),
    ),
    Palette(
        "night",
        _c("black", 18, 18, 28),
        (60, 60, 85),
        (_c("yellow", 240, 220, 60), _c("cyan", 60, 220, 230), _c("white", 240, 240, 240)),
        (235, 235, 235),
    ),
    Palette(
        "candy",
        _c("pink", 250, 205, 222),
        (236, 168, 196),
        (_c("purple", 140, 60, 180), _c("mint", 130, 220, 185), _c("blue", 70, 110, 220)),
        (80, 20, 90),
    ),
    Palette(
        "mono",
        _c("white", 248, 248, 248),
        (200, 200, 200),
        (_c("gray", 128, 128, 128), _c("silver", 192, 192, 192), _c("charcoal", 64, 64, 64)),
        (0, 0, 0),
    ),
    Palette(
        "sunset",
        _c("peach", 252, 214, 178),
        (244, 170, 140),
        (_c("magenta", 205, 30, 125), _c("orange", 240, 120, 30), _c("purple", 110, 40, 150)),
        (100, 20, 40),
    ),
    Palette(
        "desert",
        _c("tan", 222, 190, 140),
        (190, 150, 100),
        (_c("maroon", 130, 30, 45), _c("gold", 220, 170, 40), _c("brown", 100, 60, 30)),
        (60, 35, 20),
    ),
    Palette(
        "ice",
        _c("pale blue", 204, 230, 250),
        (160, 200, 235),
        (_c("navy", 25, 40, 110), _c("white", 250, 250, 250), _c("blue", 60, 120, 210)),
        (10, 20, 60),
    ),
    Palette(
        "neon",
        _c("charcoal", 45, 45, 52),
        (80, 80, 92),
        (_c("lime", 150, 240, 40), _c("magenta", 240, 40, 200), _c("cyan", 40, 230, 240)),
        (245, 245, 245),
    ),
    Palette(
        "retro",
        _c("mint", 200, 236, 214),
        (150, 210, 180),
        (_c("red", 215, 50, 45), _c("teal", 20, 130, 130), _c("yellow", 240, 200, 40)),
        (20, 20, 20),
    ),
    Palette(
        "pastel",
        _c("lavender", 226, 214, 246),
        (196, 180, 232),
        (_c("pink", 240, 140, 180), _c("mint", 150, 225, 195), _c("peach", 250, 190, 150)),
        (110, 100, 130),
    ),
)

TEXTURES: tuple[Texture, ...] = (
    Texture("flat", "plain"),
    Texture("stripes", "striped"),
    Texture("checker", "checkered"),
    Texture("halftone", "dotted"),
    Texture("noise", "mottled"),
    Texture("hatching", "crosshatched"),
    Texture("brush", "brushed"),
    Texture("waves", "wavy"),
)

STROKES: tuple[Stroke, ...] = (
    Stroke("none", "no outline"),
    Stroke("thin", "thin outline"),
    Stroke("thick", "thick outline"),
    Stroke("dashed", "dashed outline"),
    Stroke("wobbly", "wobbly outline"),
    Stroke("soft", "soft edges"),
)

N_SHAPES = len(SHAPES)
N_PALETTES = len(PALETTES)
N_TEXTURES = len(TEXTURES)
N_STROKES = len(STROKES)
N_STYLES = N_PALETTES * N_TEXTURES * N_STROKES
"""Number of composite styles (palette, texture, stroke): 12 * 8 * 6 = 576."""
N_STYLE_LABELS = N_PALETTES + N_TEXTURES + N_STROKES
"""Length of the multi-hot style label: 12 + 8 + 6 = 26."""
N_CONTENT_CLASSES = N_SHAPES * MAX_OBJECTS
"""Number of content classes (primary shape, count): 10 * 3 = 30."""


def shape_index(name: str) -> int:
    """Index of the shape called ``name`` in :data:`SHAPES` (``ValueError`` if unknown)."""
    return _index(SHAPES, name, "shape")


def palette_index(name: str) -> int:
    """Index of the palette called ``name`` in :data:`PALETTES` (``ValueError`` if unknown)."""
    return _index(PALETTES, name, "palette")


def texture_index(name: str) -> int:
    """Index of the texture called ``name`` in :data:`TEXTURES` (``ValueError`` if unknown)."""
    return _index(TEXTURES, name, "texture")


def stroke_index(name: str) -> int:
    """Index of the stroke called ``name`` in :data:`STROKES` (``ValueError`` if unknown)."""
    return _index(STROKES, name, "stroke")


def _index(items: tuple, name: str, what: str) -> int:
    for i, item in enumerate(items):
        if item.name == name:
            return i
    names = ", ".join(item.name for item in items)
    raise ValueError(f"unknown {what} {name!r}; expected one of: {names}")
