"""Rendered batches, pair and set sampling.

Every sampler takes an ``np.random.Generator`` (the only source of randomness) and optionally a split name
and part: then every returned (content, style) pair lies in that part of that split (see
:mod:`stylekit.data.splits`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .captions import caption
from .factors import N_PALETTES, N_SHAPES, N_STROKES, N_STYLES, N_TEXTURES
from .render import render
from .specs import ContentSpec, StyleSpec, sample_content, sample_style, style_labels
from .splits import check_part, get_split, in_part

_MAX_TRIES = 10_000


@dataclass(frozen=True)
class WorldSample:
    """A rendered batch with its ground truth.

    Attributes:
        images: uint8 ``(B, S, S, 3)`` RGB in ``[0, 255]``.
        masks: bool ``(B, 3, S, S)`` exact per-object masks (False for absent objects).
        contents: the ``B`` content specs.
        styles: the ``B`` style specs.
    """

    images: np.ndarray
    masks: np.ndarray
    contents: tuple[ContentSpec, ...]
    styles: tuple[StyleSpec, ...]

    def __len__(self) -> int:
        return len(self.contents)

    @property
    def captions(self) -> list[str]:
        """One caption per image (:func:`stylekit.data.captions.caption`)."""
        return [caption(c, s) for c, s in zip(self.contents, self.styles, strict=True)]

    @property
    def style_labels(self) -> np.ndarray:
        """float32 ``(B, 26)`` multi-hot style labels."""
        return style_labels(self.styles)

    @property
    def style_indices(self) -> np.ndarray:
        """int64 ``(B,)`` composite style ids in ``[0, 576)``."""
        return np.array([s.index for s in self.styles], dtype=np.int64)

    @property
    def content_classes(self) -> np.ndarray:
        """int64 ``(B,)`` content classes in ``[0, 30)``."""
        return np.array([c.content_class for c in self.contents], dtype=np.int64)

    def float_images(self) -> np.ndarray:
        """float32 ``(B, S, S, 3)`` images in ``[0, 1]``."""
        return self.images.astype(np.float32) / 255.0


def render_samples(
    contents: Sequence[ContentSpec], styles: Sequence[StyleSpec], size: int = 64
) -> WorldSample:
    """Render specs into a :class:`WorldSample` (see :func:`stylekit.data.render.render`)."""
    images, masks = render(contents, styles, size)
    return WorldSample(images, masks, tuple(contents), tuple(styles))


def _check_n(n: int, name: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return int(n)


def _check(split: str | None, part: str) -> None:
    if split is not None:
        get_split(split)
    check_part(part)


def _retry(draw: Callable[[], tuple], ok: Callable[..., bool], what: str) -> tuple:
    for _ in range(_MAX_TRIES):
        out = draw()
        if ok(*out):
            return out
    raise RuntimeError(f"could not sample {what} in {_MAX_TRIES} tries")  # pragma: no cover


def sample_styles(
    rng: np.random.Generator, n: int, split: str | None = None, part: str = "train"
) -> list[StyleSpec]:
    """``n`` uniform styles (fresh seeds) in ``part`` of a style-only split (or any style if ``split`` is None).

    Raises:
        ValueError: for the ``"content_style"`` split, whose part depends on the content too.
    """
    n = _check_n(n)
    _check(split, part)
    if split is not None and not get_split(split).style_only:
        raise ValueError(f"split {split!r} depends on the content; sample scenes with sample_world instead")
    return [
        _retry(lambda: (sample_style(rng),), lambda s: in_part(None, s, split, part), "a style")[0]
        for _ in range(n)
    ]


def sample_scenes(
    rng: np.random.Generator, n: int, split: str | None = None, part: str = "train"
) -> tuple[list[ContentSpec], list[StyleSpec]]:
    """``n`` independent (content, style) specs, uniform within ``part`` of ``split``."""
    n = _check_n(n)
    _check(split, part)
    pairs = [
        _retry(
            lambda: (sample_content(rng), sample_style(rng)),
            lambda c, s: in_part(c, s, split, part),
            "a scene",
        )
        for _ in range(n)
    ]
    return [c for c, _ in pairs], [s for _, s in pairs]


def sample_world(
    rng: np.random.Generator, n: int, size: int = 64, split: str | None = None, part: str = "train"
) -> WorldSample:
    """Render ``n`` independent scenes (see :func:`sample_scenes`)."""
    contents, styles = sample_scenes(rng, n, split, part)
    return render_samples(contents, styles, size)


def positive_pairs(
    rng: np.random.Generator, n: int, size: int = 64, split: str | None = None, part: str = "train"
) -> tuple[WorldSample, WorldSample]:
    """Pairs of the same style with different content.

    Returns:
        ``(a, b)`` of length ``n`` each: ``a.styles[i].key == b.styles[i].key`` (seeds differ) and
        ``a.contents[i].content_class != b.contents[i].content_class``.
    """
    ca, sa = sample_scenes(rng, n, split, part)
    cb, sb = [], []
    for c, s in zip(ca, sa, strict=True):
        c2, s2 = _retry(
            lambda s=s: (sample_content(rng), sample_style(rng, s.key)),
            lambda c2, s2, c=c: c2.content_class != c.content_class and in_part(c2, s2, split, part),
            "a positive",
        )
        cb.append(c2)
        sb.append(s2)
    return render_samples(ca, sa, size), render_samples(cb, sb, size)


def _other_style(style: StyleSpec, rng: np.random.Generator, factor: str | None) -> StyleSpec:
    if factor is None:
        index = int(rng.integers(0, N_STYLES - 1))
        index += index >= style.index
        return StyleSpec.from_index(index, style.seed)
    sizes = {"palette": N_PALETTES, "texture": N_TEXTURES, "stroke": N_STROKES}
    value = int(rng.integers(0, sizes[factor] - 1))
    value += value >= getattr(style, factor)
    key = dict(palette=style.palette, texture=style.texture, stroke=style.stroke, seed=style.seed)
    key[factor] = value
    return StyleSpec(**key)


def hard_negatives(
    rng: np.random.Generator,
    n: int,
    k: int = 4,
    size: int = 64,
    factor: str | None = None,
    split: str | None = None,
    part: str = "train",
) -> tuple[WorldSample, WorldSample]:
    """Anchors and, for each, ``k`` renders of the same content and seed in other styles.

    Args:
        n: number of anchors.
        k: negatives per anchor (distinct styles, all different from the anchor's).
        factor: None to change the whole composite style; ``"palette"``, ``"texture"`` or ``"stroke"`` to
            change only that factor (the hardest negatives; ``k`` must not exceed its other values).

    Returns:
        ``(anchors, negatives)``: ``len(anchors) == n``, ``len(negatives) == n * k``, negative ``i * k + j``
        has ``contents[i]`` and ``styles[i].seed`` of anchor ``i`` and a different style key.
    """
    k = _check_n(k, "k")
    if factor not in (None, "palette", "texture", "stroke"):
        raise ValueError(f"factor must be None, 'palette', 'texture' or 'stroke', got {factor!r}")
    limit = {None: N_STYLES, "palette": N_PALETTES, "texture": N_TEXTURES, "stroke": N_STROKES}[factor] - 1
    if k > limit:
        raise ValueError(f"k={k} exceeds the {limit} other values available for factor={factor!r}")
    contents, styles = sample_scenes(rng, n, split, part)
    neg_c: list[ContentSpec] = []
    neg_s: list[StyleSpec] = []
    for c, s in zip(contents, styles, strict=True):
        seen = {s.key}
        for _ in range(k):
            (other,) = _retry(
                lambda s=s: (_other_style(s, rng, factor),),
                lambda o, c=c, seen=seen: o.key not in seen and in_part(c, o, split, part),
                "a hard negative",
            )
            seen.add(other.key)
            neg_c.append(c)
            neg_s.append(other)
    return render_samples(contents, styles, size), render_samples(neg_c, neg_s, size)


def style_set(
    rng: np.random.Generator,
    n: int,
    style: StyleSpec | tuple[int, int, int] | None = None,
    size: int = 64,
    split: str | None = None,
    part: str = "train",
) -> WorldSample:
    """``n`` images of one style (e.g. to train a style LoRA): fixed style key, new content and seed each.

    Args:
        style: the style (its key is used) or ``(palette, texture, stroke)``; sampled within the part if None.
    """
    n = _check_n(n)
    _check(split, part)
    if style is None:
        _, (first,) = sample_scenes(rng, 1, split, part)
        key = first.key
    else:
        key = style.key if isinstance(style, StyleSpec) else tuple(int(v) for v in style)
        StyleSpec(*key)  # validates
    contents, styles = [], []
    for _ in range(n):
        c, s = _retry(
            lambda: (sample_content(rng), sample_style(rng, key)),
            lambda c, s: in_part(c, s, split, part),
            f"a content for style {key}",
        )
        contents.append(c)
        styles.append(s)
    return render_samples(contents, styles, size)


def subject_set(
    rng: np.random.Generator,
    n: int,
    shape: int | None = None,
    style: StyleSpec | tuple[int, int, int] | None = None,
    size: int = 64,
    vary_style: bool = False,
    split: str | None = None,
    part: str = "train",
) -> WorldSample:
    """``n`` images of one subject (e.g. to train a content LoRA): a lone object of one shape in new poses.

    Args:
        shape: the subject's shape index; uniform if None.
        style: the style of every image (key used, new seed each) unless ``vary_style``; sampled if None.
        vary_style: draw a new style for every image instead (the subject then is the only constant).
    """
    n = _check_n(n)
    _check(split, part)
    if shape is None:
        shape = int(rng.integers(0, N_SHAPES))
    if not 0 <= shape < N_SHAPES:
        raise ValueError(f"shape must be in [0, {N_SHAPES}), got {shape}")
    if vary_style and style is not None:
        raise ValueError("pass either style or vary_style=True, not both")
    key: tuple[int, ...] | None = None
    if style is not None:
        key = style.key if isinstance(style, StyleSpec) else tuple(int(v) for v in style)
        StyleSpec(*key)
    elif not vary_style:
        first = _retry(
            lambda: (sample_content(rng, shapes=(shape,)), sample_style(rng)),
            lambda c, s: in_part(c, s, split, part),
            "a subject style",
        )
        key = first[1].key
    contents, styles = [], []
    for _ in range(n):
        c, s = _retry(
            lambda: (sample_content(rng, shapes=(shape,)), sample_style(rng, None if vary_style else key)),
            lambda c, s: in_part(c, s, split, part),
            f"a pose of shape {shape}",
        )
        contents.append(c)
        styles.append(s)
    return render_samples(contents, styles, size)
