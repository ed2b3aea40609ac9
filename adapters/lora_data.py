"""Image sets for LoRA training: folder loading with clear errors, cached latents/embeddings, per-step draws.

Every image is converted to 8-bit RGB (RGBA composited on white, grayscale / palette / 16-bit converted, by
``stylekit.images.load_image``), resized to cover ``resolution`` and centre-cropped, so folders of mixed
modes and sizes train. A caption file ``name.txt`` beside ``name.png`` overrides the set's prompt.

Optional aspect-ratio buckets (:func:`load_bucketed_sets`): a few sizes of about ``resolution**2`` pixels
with sides multiples of a step; each instance image goes to the bucket nearest its aspect ratio, the
other sets (class, aux) are fitted into every bucket in use, and each micro-batch comes from one bucket
(:func:`pick_bucket`), so all its rows share one shape.

Batches are a pure function of ``(seed, step, micro_step)``: which images, timesteps, noise and posterior
samples a step uses never depend on earlier steps or on the number of processes (each process takes its
rows of the global batch), so a resumed or multi-process run sees exactly the data of a single one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit.images import InputImageError, fit_to_size, load_image, to_tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class ImageSet:
    """One training set.

    Attributes:
        name: ``instance``, ``class`` or ``aux<i>`` (log names).
        pixels: float32 ``(N, 3, R, R)`` in ``[-1, 1]``.
        prompts: one prompt per image.
        weight: loss weight of the set (1 for the instance set).
        latent_mean, latent_std: cached VAE posterior ``(N, C, r, r)`` (set by :func:`cache_latents`).
    """

    name: str
    pixels: torch.Tensor
    prompts: list[str]
    weight: float = 1.0
    latent_mean: torch.Tensor | None = None
    latent_std: torch.Tensor | None = None
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)


def list_images(folder: str | Path, argument: str) -> list[Path]:
    """Image files in ``folder`` (sorted, non-recursive).

    Raises:
        ValueError: the folder is missing, not a folder, or holds no image files.
    """
    path = Path(folder)
    if not path.exists():
        raise ValueError(f"{argument}: folder not found: {path}")
    if not path.is_dir():
        raise ValueError(f"{argument}: expected a folder of images, got a file: {path}")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{argument}: no image files ({', '.join(IMAGE_SUFFIXES)}) in {path}")
    return files


def read_images(folder: str | Path, prompt: str, argument: str) -> list[tuple[Image.Image, str, str]]:
    """(RGB image, prompt, source path) for every image of ``folder``.

    Raises:
        ValueError: empty/missing folder, empty prompt, or an unreadable image (the message names the file).
    """
    if not prompt or not prompt.strip():
        raise ValueError(f"{argument}: expected a non-empty prompt for {folder}")
    found = []
    for file in list_images(folder, argument):
        try:
            image = load_image(file, argument)
        except InputImageError as error:  # its message names the flag and the file
            raise ValueError(str(error)) from error
        caption = file.with_suffix(".txt")
        found.append((image, caption.read_text().strip() if caption.is_file() else prompt, str(file)))
    return found


def _image_set(
    items: Sequence[tuple[Image.Image, str, str]], width: int, height: int, name: str, weight: float
) -> ImageSet:
    pixels = torch.stack([to_tensor(fit_to_size(image, width, height)) for image, _, _ in items])
    return ImageSet(name, pixels, [p for _, p, _ in items], weight, sources=[s for _, _, s in items])


def load_image_set(
    folder: str | Path, prompt: str, resolution: int, name: str, argument: str, weight: float = 1.0
) -> ImageSet:
    """Load every image of ``folder`` at ``resolution`` (RGB, cover-resize, centre crop).

    Raises:
        ValueError: empty/missing folder, or an unreadable image (the message names the file).
    """
    return _image_set(read_images(folder, prompt, argument), resolution, resolution, name, weight)


def bucket_sizes(resolution: int, step: int, max_ratio: float = 2.0) -> list[tuple[int, int]]:
    """(width, height) buckets: sides multiples of ``step``, area at most ``resolution**2`` (the largest such
    height for each width), aspect ratio within ``[1 / max_ratio, max_ratio]``; both orientations.

    Raises:
        ValueError: ``resolution`` smaller than ``step`` or ``max_ratio < 1``.
    """
    if resolution < step or step < 1:
        raise ValueError(f"--aspect_buckets: --resolution {resolution} is below the bucket step {step}")
    if max_ratio < 1:
        raise ValueError(f"--bucket_max_ratio: expected >= 1, got {max_ratio}")
    area, sizes = resolution * resolution, set()
    for width in range(step, area // step + 1, step):
        height = area // width // step * step
        if height >= step and 1 / max_ratio <= width / height <= max_ratio:
            sizes.update({(width, height), (height, width)})
    return sorted(sizes)


def nearest_bucket(width: int, height: int, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest (in log ratio) to ``width / height``; ties: larger area."""
    ratio = math.log(width / height)
    return min(sizes, key=lambda s: (abs(math.log(s[0] / s[1]) - ratio), -s[0] * s[1]))


def load_bucketed_sets(
    sources: Sequence[tuple[str | Path, str, str, str, float]], resolution: int, step: int, max_ratio: float
) -> dict[tuple[int, int], list[ImageSet]]:
    """Bucket -> the run's sets at that size (set order as ``sources``, the instance set first).

    ``sources``: ``(folder, prompt, set name, argument, weight)`` per set. Instance images go to their
    nearest bucket; every other set is fitted (cover-resize, centre crop) into every bucket in use.
    """
    sizes = bucket_sizes(resolution, step, max_ratio)
    loaded = [read_images(folder, prompt, argument) for folder, prompt, _, argument, _ in sources]
    groups: dict[tuple[int, int], list[tuple[Image.Image, str, str]]] = {}
    for item in loaded[0]:
        groups.setdefault(nearest_bucket(item[0].width, item[0].height, sizes), []).append(item)
    buckets = {}
    for size, items in sorted(groups.items()):
        sets = [_image_set(items, *size, sources[0][2], sources[0][4])]
        sets += [
            _image_set(other, *size, src[2], src[4])
            for other, src in zip(loaded[1:], sources[1:], strict=True)
        ]
        buckets[size] = sets
    return buckets


def pick_bucket(buckets: Sequence[Sequence[ImageSet]], seed: int, step: int, micro: int) -> int:
    """Index of the bucket of micro-batch ``micro`` of step ``step``: drawn with weights = instance images per
    bucket (every instance image equally likely), from its own generator (so ``draw_batch`` is unaffected)."""
    if len(buckets) == 1:
        return 0
    counts = np.array([len(sets[0]) for sets in buckets], dtype=np.float64)
    return int(np.random.default_rng([seed, step, micro, 1]).choice(len(buckets), p=counts / counts.sum()))


@torch.no_grad()
def cache_latents(vae: torch.nn.Module, image_set: ImageSet, batch_size: int = 8) -> None:
    """Encode the set once; store the VAE posterior mean and std (scaled like the UNet's latents)."""
    param = next(vae.parameters())
    scale = float(vae.config.scaling_factor)
    shift = float(getattr(vae.config, "shift_factor", None) or 0.0)
    means, stds = [], []
    for start in range(0, len(image_set), batch_size):
        x = image_set.pixels[start : start + batch_size].to(param.device, param.dtype)
        dist = vae.encode(x).latent_dist
        means.append(((dist.mean.float() - shift) * scale).cpu())
        stds.append((dist.std.float() * scale).cpu())
    image_set.latent_mean = torch.cat(means)
    image_set.latent_std = torch.cat(stds)


def step_seed(seed: int, step: int, micro: int) -> int:
    """A 63-bit seed for micro-batch ``micro`` of optimizer step ``step``."""
    return int(np.random.default_rng([seed, step, micro]).integers(0, 2**63 - 1))


@dataclass
class StepBatch:
    """This process's rows of one micro-batch (all sets concatenated).

    Attributes:
        latents: clean latents ``(b, C, r, r)``; noise: ``(b, C, r, r)``; timesteps: ``(b,)`` int64.
        prompts: ``b`` prompts; set_index: ``(b,)`` which set each row is from.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompts: list[str]
    set_index: torch.Tensor


def draw_batch(
    sets: Sequence[ImageSet],
    rows_per_set: int,
    seed: int,
    step: int,
    micro: int,
    num_train_timesteps: int,
    process_index: int = 0,
    num_processes: int = 1,
    sample_posterior: bool = True,
) -> StepBatch:
    """Rows ``[process_index * b, (process_index + 1) * b)`` of the global micro-batch, ``b = rows_per_set``
    per set, the global batch being ``rows_per_set * num_processes`` rows per set.

    Everything random comes from ``torch.Generator().manual_seed(step_seed(seed, step, micro))`` and is
    drawn for the whole global batch, so it does not depend on ``num_processes``.
    """
    generator = torch.Generator().manual_seed(step_seed(seed, step, micro))
    global_rows = rows_per_set * num_processes
    lo, hi = process_index * rows_per_set, (process_index + 1) * rows_per_set
    latents, noise, timesteps, prompts, which = [], [], [], [], []
    for index, image_set in enumerate(sets):
        assert image_set.latent_mean is not None and image_set.latent_std is not None, "cache_latents first"
        picks = torch.randint(0, len(image_set), (global_rows,), generator=generator)
        shape = (global_rows, *image_set.latent_mean.shape[1:])
        eps_post = torch.randn(shape, generator=generator)
        eps = torch.randn(shape, generator=generator)
        t = torch.randint(0, num_train_timesteps, (global_rows,), generator=generator)
        mean, std = image_set.latent_mean[picks], image_set.latent_std[picks]
        clean = mean + std * eps_post if sample_posterior else mean
        latents.append(clean[lo:hi])
        noise.append(eps[lo:hi])
        timesteps.append(t[lo:hi])
        prompts.extend(image_set.prompts[int(i)] for i in picks[lo:hi])
        which.append(torch.full((hi - lo,), index))
    return StepBatch(
        torch.cat(latents), torch.cat(noise), torch.cat(timesteps).long(), prompts, torch.cat(which)
    )


class PromptCache:
    """Text-encoder outputs per prompt, computed once (the text encoders stay frozen).

    ``encode(prompts) -> dict`` must return UNet keyword tensors with a leading batch dimension of
    ``len(prompts)`` (``encoder_hidden_states`` and, for SDXL, ``added_cond_kwargs``).
    """

    def __init__(self, encode: Callable[[list[str]], dict[str, object]]) -> None:
        self._encode = encode
        self._cache: dict[str, dict[str, object]] = {}

    def warm(self, prompts: Sequence[str]) -> None:
        """Encode every prompt not cached yet."""
        missing = sorted(set(prompts) - set(self._cache))
        if missing:
            out = self._encode(missing)
            for i, prompt in enumerate(missing):
                self._cache[prompt] = _index(out, i)

    def __call__(self, prompts: Sequence[str], device: torch.device, dtype: torch.dtype) -> dict[str, object]:
        """UNet conditioning kwargs for ``prompts`` (stacked in order)."""
        self.warm(prompts)
        rows = [self._cache[p] for p in prompts]
        return _stack(rows, device, dtype)


def _index(value: object, i: int) -> object:
    if isinstance(value, dict):
        return {k: _index(v, i) for k, v in value.items()}
    assert isinstance(value, torch.Tensor)
    return value[i].detach().cpu()


def _stack(rows: list[object], device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    first = rows[0]
    if isinstance(first, dict):
        return {k: _stack([r[k] for r in rows], device, dtype) for k in first}  # type: ignore[index]
    return torch.stack(rows).to(device=device, dtype=dtype)  # type: ignore[arg-type]
