"""Training batches streamed from the synthetic style world, deterministic per step.

Batch ``step`` of a run is a pure function of ``(seed, stage, step)``: its random generator is
``np.random.default_rng([seed, stage_id, step])``. Resuming at any step therefore sees exactly the data of
an uninterrupted run, and the global batch does not depend on the number of processes (each process
renders its own rows of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stylekit.data import render_samples, sample_content, sample_style
from stylekit.data.specs import ContentSpec, StyleSpec
from stylekit.data.splits import in_part

STAGE_IDS = {"vae": 1, "unet": 2, "eval": 3, "pool": 4}


@dataclass(frozen=True)
class WorldBatch:
    """One process's rows of a global batch.

    Attributes:
        pixels: float32 ``(b, 3, S, S)`` in ``[-1, 1]``.
        captions: ``b`` captions (``""`` where the caption was dropped).
    """

    pixels: torch.Tensor
    captions: list[str]


def step_rng(seed: int, stage: str, step: int) -> np.random.Generator:
    """The generator of batch ``step`` of ``stage`` (``"vae"``, ``"unet"`` or ``"eval"``)."""
    return np.random.default_rng([int(seed), STAGE_IDS[stage], int(step)])


def sample_scenes_in(
    rng: np.random.Generator, n: int, splits: Sequence[str], part: str = "train"
) -> tuple[list[ContentSpec], list[StyleSpec]]:
    """``n`` (content, style) specs that lie in ``part`` of every split in ``splits`` (uniform there).

    With ``part="train"`` and all three splits, no scene is in any split's test part, so every split's test
    part is held out from training.
    """
    contents: list[ContentSpec] = []
    styles: list[StyleSpec] = []
    while len(contents) < n:
        content, style = sample_content(rng), sample_style(rng)
        if all(in_part(content, style, split, part) for split in splits):
            contents.append(content)
            styles.append(style)
    return contents, styles


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, S, S, 3)`` images -> float32 ``(B, 3, S, S)`` in ``[-1, 1]``."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).contiguous()


def world_batch(
    seed: int,
    stage: str,
    step: int,
    batch_size: int,
    image_size: int,
    splits: Sequence[str],
    caption_dropout: float = 0.0,
    process_index: int = 0,
    num_processes: int = 1,
) -> WorldBatch:
    """Rows ``process_index::num_processes`` of global batch ``step`` (``batch_size`` scenes).

    Returns:
        A :class:`WorldBatch` with ``batch_size // num_processes`` rows; each caption is replaced by ``""``
        with probability ``caption_dropout`` (decided for the whole global batch, so it is the same at any
        number of processes).
    """
    if batch_size % num_processes:
        raise ValueError(f"batch_size={batch_size} must be a multiple of the {num_processes} processes")
    rng = step_rng(seed, stage, step)
    contents, styles = sample_scenes_in(rng, batch_size, splits)
    dropped = rng.random(batch_size) < caption_dropout
    rows = list(range(process_index, batch_size, num_processes))
    sample = render_samples([contents[i] for i in rows], [styles[i] for i in rows], image_size)
    captions = ["" if dropped[i] else text for i, text in zip(rows, sample.captions, strict=True)]
    return WorldBatch(to_pixels(sample.images), captions)


@dataclass(frozen=True)
class LatentPool:
    """A fixed pool of encoded world scenes for the UNet stage (encoding once is cheaper than every step).

    Attributes:
        mean / std: float32 ``(P, C, L, L)`` posterior mean and standard deviation (unscaled latents).
        captions: the ``P`` captions.
    """

    mean: torch.Tensor
    std: torch.Tensor
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)


@torch.no_grad()
def build_latent_pool(
    vae: torch.nn.Module,
    seed: int,
    size: int,
    image_size: int,
    splits: Sequence[str],
    chunk: int = 256,
    progress: bool = False,
) -> LatentPool:
    """Render ``size`` training scenes (chunk ``k`` from ``step_rng(seed, "pool", k)``) and encode them with
    ``vae`` (on its device, in its dtype). Deterministic in ``(seed, size, vae)``."""
    from tqdm.auto import tqdm

    param = next(vae.parameters())
    means, stds, captions = [], [], []
    for k in tqdm(range((size + chunk - 1) // chunk), desc="encoding latent pool", disable=not progress):
        n = min(chunk, size - k * chunk)
        batch = world_batch(seed, "pool", k, n, image_size, splits)
        dist = vae.encode(batch.pixels.to(param.device, param.dtype)).latent_dist
        means.append(dist.mean.float().cpu())
        stds.append(dist.std.float().cpu())
        captions += batch.captions
    return LatentPool(torch.cat(means), torch.cat(stds), captions)


def pool_rows(seed: int, step: int, batch_size: int, pool_size: int) -> np.ndarray:
    """Pool indices of global batch ``step``: the pool is walked in a fresh random order every epoch
    (epoch ``e``'s order is ``default_rng([seed, pool_id, e]).permutation(pool_size)``)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    rows = np.empty(batch_size, dtype=np.int64)
    for epoch in np.unique(positions // pool_size):
        order = np.random.default_rng([int(seed), STAGE_IDS["pool"], int(epoch)]).permutation(pool_size)
        here = positions // pool_size == epoch
        rows[here] = order[positions[here] % pool_size]
    return rows
