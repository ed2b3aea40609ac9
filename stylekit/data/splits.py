"""Fixed train/test splits of the style world.

Three independent partitions (each one splits every (content, style) pair into ``"train"`` or ``"test"``):

- ``"content_style"`` — held-out (content class, composite style) combinations: test iff
  ``hash01(content_class, style_index, 1) < 0.1``. Every content class and every style occurs in train;
  the test part asks for new combinations of known contents and styles.
- ``"style"`` — held-out composite styles: test iff ``hash01(style_index, 2) < 0.125``
  (:func:`held_out_styles` lists them). Every palette, texture and stroke value occurs in both parts.
- ``"factor"`` — held-out factor combinations: test iff ``(palette, texture)`` is in
  :data:`HELD_OUT_PALETTE_TEXTURE`, i.e. ``texture == (3 * palette + 1) % 8``: each palette is never seen
  with one texture in train, 12 of 96 palette/texture pairs (72 of 576 styles).

``hash01(*ints)`` folds each integer ``v`` into ``h`` (start ``0x811C9DC5``) with
``h = lowbias32(h ^ lowbias32(v + 0x9E3779B9))`` (32-bit arithmetic) and returns ``h / 2**32``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .factors import N_PALETTES, N_STYLES, N_TEXTURES
from .specs import ContentSpec, StyleSpec

PARTS = ("train", "test")

HELD_OUT_PALETTE_TEXTURE: frozenset[tuple[int, int]] = frozenset(
    (p, (3 * p + 1) % N_TEXTURES) for p in range(N_PALETTES)
)
"""(palette, texture) pairs that only occur in the test part of the ``"factor"`` split."""

_M32 = 0xFFFFFFFF


def _lowbias32(h: int) -> int:
    h &= _M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & _M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & _M32
    return h ^ (h >> 16)


def hash01(*values: int) -> float:
    """Deterministic hash of non-negative integers to ``[0, 1)`` (definition in the module docstring)."""
    h = 0x811C9DC5
    for v in values:
        h = _lowbias32(h ^ _lowbias32(int(v) + 0x9E3779B9))
    return h / 2.0**32


@dataclass(frozen=True)
class Split:
    """One fixed partition of (content, style) pairs.

    Attributes:
        name: key in :data:`SPLITS`.
        description: what is held out.
        style_only: True when the part depends on the style alone (``content`` may then be None).
    """

    name: str
    description: str
    style_only: bool

    def is_test(self, content: ContentSpec | None, style: StyleSpec) -> bool:
        """Whether ``(content, style)`` belongs to the test part."""
        if self.name == "content_style":
            if content is None:
                raise ValueError("the 'content_style' split needs a content to decide the part")
            return hash01(content.content_class, style.index, 1) < 0.1
        if self.name == "style":
            return hash01(style.index, 2) < 0.125
        if self.name == "factor":
            return (style.palette, style.texture) in HELD_OUT_PALETTE_TEXTURE
        raise AssertionError(self.name)  # pragma: no cover

    def part(self, content: ContentSpec | None, style: StyleSpec) -> str:
        """``"test"`` or ``"train"``."""
        return "test" if self.is_test(content, style) else "train"


SPLITS: dict[str, Split] = {
    "content_style": Split("content_style", "held-out (content class, composite style) combinations", False),
    "style": Split("style", "held-out composite styles", True),
    "factor": Split("factor", "held-out (palette, texture) combinations", True),
}


def get_split(split: str) -> Split:
    """The :class:`Split` called ``split`` (``ValueError`` naming the choices if unknown)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of: {', '.join(SPLITS)}")
    return SPLITS[split]


def check_part(part: str) -> str:
    """Validate a part name (``"train"`` or ``"test"``)."""
    if part not in PARTS:
        raise ValueError(f"part must be 'train' or 'test', got {part!r}")
    return part


def split_of(content: ContentSpec | None, style: StyleSpec, split: str = "content_style") -> str:
    """Part (``"train"`` / ``"test"``) of ``(content, style)`` in split ``split``.

    ``content`` may be None for the style-only splits ``"style"`` and ``"factor"``.
    """
    return get_split(split).part(content, style)


def held_out_styles(split: str) -> list[int]:
    """Composite style indices in the test part of a style-only split, sorted."""
    s = get_split(split)
    if not s.style_only:
        raise ValueError(f"split {split!r} does not depend on the style alone")
    return [i for i in range(N_STYLES) if s.is_test(None, StyleSpec.from_index(i))]


def in_part(content: ContentSpec | None, style: StyleSpec, split: str | None, part: str) -> bool:
    """True when ``split`` is None or ``(content, style)`` lies in ``part`` of it."""
    if split is None:
        return True
    return split_of(content, style, split) == part
