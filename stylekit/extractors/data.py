"""Training batches from the synthetic world: every content drawn in every style of the batch.

A *grid batch* takes ``n_styles`` distinct styles and ``n_contents`` contents (each with its own nuisance
seed) and renders all ``n_styles x n_contents`` combinations. For an image, the images of its row (same
style, other contents, other seeds) are its positives and the images of its column (same content and seed,
other styles) are its hard negatives -- exactly :func:`stylekit.data.positive_pairs` and
:func:`stylekit.data.hard_negatives`, but sharing renders. A batch is a pure function of
``(seed, step)``, so a resumed or multi-process run sees the same data as one uninterrupted process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stylekit.data import N_STYLES, StyleSpec, render_samples, sample_content, sample_styles, style_labels


@dataclass
class GridBatch:
    """One training batch (row-major: image ``i`` has style ``i // n_contents``, content ``i % n_contents``).

    Attributes:
        pixels: ``(B, 3, S, S)`` float32 in ``[0, 1]``.
        style_ids: ``(B,)`` composite style indices; style_labels: ``(B, 26)`` multi-hot.
        content_ids: ``(B,)`` content classes; content_groups: ``(B,)`` which content of the grid (0..n_contents-1).
    """

    pixels: torch.Tensor
    style_ids: torch.Tensor
    style_labels: torch.Tensor
    content_ids: torch.Tensor
    content_groups: torch.Tensor

    def slice(self, start: int, stop: int) -> GridBatch:
        """Rows ``start:stop`` (a process's share of the global batch)."""
        return GridBatch(*(getattr(self, f)[start:stop] for f in self.__dataclass_fields__))


def train_style_count(split: str | None) -> int:
    """Composite styles in the train part of ``split`` (all of them for None or a split that also depends on
    the content)."""
    from stylekit.data.splits import get_split, held_out_styles

    if split is None or not get_split(split).style_only:
        return N_STYLES
    return N_STYLES - len(held_out_styles(split))


def grid_batch(
    seed: int,
    step: int,
    n_styles: int,
    n_contents: int,
    size: int = 64,
    crop: int | None = None,
    split: str | None = "style",
    rows: tuple[int, int] | None = None,
) -> GridBatch:
    """Render the grid batch of ``step`` (deterministic in ``(seed, step)``).

    Args:
        n_styles: distinct composite styles (from the train part of ``split``).
        n_contents: contents per style (the same contents in every style).
        size: render size; crop: random ``crop x crop`` window per image (a style-preserving view: it moves
            the content but keeps scale, orientation and colour, which are style factors here), or None.
        rows: render only images ``rows[0]:rows[1]`` of the global batch (a process's share); the sampled
            specs and crop offsets are those of the whole batch, so the shares tile it exactly.
    """
    rng = np.random.default_rng([int(seed), int(step)])
    styles: list[StyleSpec] = []
    seen: set[int] = set()
    available = train_style_count(split)
    while len(styles) < n_styles:
        (style,) = sample_styles(rng, 1, split=split, part="train") if split else sample_styles(rng, 1)
        if style.index not in seen or len(seen) >= available:  # repeats only once every style is drawn
            seen.add(style.index)
            styles.append(style)
    contents = [sample_content(rng) for _ in range(n_contents)]
    seeds = rng.integers(0, 2**32, size=n_contents)
    total = n_styles * n_contents
    crop_size = crop or size
    offsets = rng.integers(0, size - crop_size + 1, size=(total, 2))
    lo, hi = rows if rows is not None else (0, total)
    idx = range(lo, hi)
    specs_c = [contents[i % n_contents] for i in idx]
    specs_s = [StyleSpec(*styles[i // n_contents].key, seed=int(seeds[i % n_contents])) for i in idx]
    images = render_samples(specs_c, specs_s, size).images
    if crop_size != size:
        images = np.stack(
            [
                im[y : y + crop_size, x : x + crop_size]
                for im, (y, x) in zip(images, offsets[lo:hi], strict=True)
            ]
        )
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return GridBatch(
        pixels=pixels,
        style_ids=torch.tensor([s.index for s in specs_s], dtype=torch.long),
        style_labels=torch.from_numpy(style_labels(specs_s)),
        content_ids=torch.tensor([c.content_class for c in specs_c], dtype=torch.long),
        content_groups=torch.tensor([i % n_contents for i in idx], dtype=torch.long),
    )
