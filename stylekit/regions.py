"""``RegionMask``: keep everything outside a mask as the content, by per-step latent blending.

After every scheduler step the latents outside the mask are replaced by the content's inversion
trajectory at the same noise level, so the region outside ends as the content's clean latent (its
VAE reconstruction) and the inside is whatever the other conditioners made of it. Region-restricted
attention (each style attending only within its region) builds on this in the regional-styling work.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stylekit.conditioning import ConditionerBase, ImageLike


def load_mask(
    mask: ImageLike, height: int, width: int, threshold: float = 0.5, feather: int = 0
) -> torch.Tensor:
    """A mask as a (height, width) float tensor in [0, 1].

    Any size (resized, nearest), any mode: images are converted to grayscale and binarised at
    ``threshold`` of their range; arrays/tensors with values in [0, 1] or bool are binarised the same
    way. ``feather`` > 0 blurs the edge with a box filter of that radius (pixels) for a soft seam.
    """
    if isinstance(mask, (str, Image.Image)) or hasattr(mask, "__fspath__"):
        image = Image.open(mask) if not isinstance(mask, Image.Image) else mask
        array = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    elif isinstance(mask, torch.Tensor):
        array = mask.detach().cpu().float().numpy()
    else:
        array = np.asarray(mask, dtype=np.float32)
    array = np.squeeze(array)
    if array.ndim != 2 or 0 in array.shape:
        raise ValueError(f"mask: expected a 2-D (H, W) mask, got shape {array.shape}")
    binary = torch.from_numpy((array >= threshold).astype(np.float32))[None, None]
    resized = F.interpolate(binary, size=(height, width), mode="nearest")
    if feather > 0:
        kernel = 2 * feather + 1
        resized = F.avg_pool2d(F.pad(resized, [feather] * 4, mode="replicate"), kernel, stride=1)
    return resized[0, 0]


class RegionMask(ConditionerBase):
    """Confine the other conditioners' effect to ``mask`` (1 = styled, 0 = content kept).

    Args:
        mask: HxW mask (image/array/tensor/path) at any size.
        feather: edge softening radius in latent pixels.
    """

    def __init__(self, mask: ImageLike, feather: int = 0) -> None:
        self.mask_source = mask
        self.feather = feather
        self._latent_mask: torch.Tensor | None = None
        self._trajectories: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._next_timestep: list[int | None] = []

    def prepare(self, pipe: Any, **call: Any) -> None:
        injection = call.get("injection")
        if injection is None:
            raise ValueError("RegionMask needs the content's inversion (use it with a StyleID pipeline)")
        start = injection.start_latents
        height, width = int(start.shape[-2]), int(start.shape[-1])
        self._latent_mask = load_mask(self.mask_source, height, width, feather=self.feather).to(start.device)
        self._trajectories = [injection.content_trajectory(row.content) for row in injection.rows]
        timesteps = [int(t) for t in injection.sampling_timesteps]
        self._next_timestep = [*timesteps[1:], None]

    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        yield

    def on_step_end(self, step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        assert self._latent_mask is not None, "call prepare() first"
        target = self._next_timestep[step_index]
        kept = []
        for timesteps, trajectory in self._trajectories:
            # After the last step the latents are clean: the trajectory's first entry is the clean latent.
            index = 0 if target is None else int((timesteps == target).nonzero()[0])
            kept.append(trajectory[index])
        content = torch.stack(kept).to(latents)
        mask = self._latent_mask.to(latents)
        return mask * latents + (1 - mask) * content
