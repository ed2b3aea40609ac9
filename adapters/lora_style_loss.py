"""Style-contrastive loss (FontDiffuser's SCR idea) on the predicted clean image, with the stylekit extractor.

For the instance rows of a batch the clean latent is predicted from the UNet output (epsilon or v), decoded
by the frozen VAE (gradients flow through it into the LoRA) and embedded by the style extractor; an InfoNCE
loss pulls the embedding toward the mean embedding of the instance images (positive) and away from the
embeddings of the other sets' images (negatives; without other sets it is ``1 - cosine`` to the positive).
Rows are weighted by ``alpha_bar_t`` (the prediction is meaningless at high noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .lora_data import ImageSet


class StyleContrastiveLoss:
    """``loss(pred, noisy, timesteps, rows) -> scalar``; the extractor is frozen, on the training device."""

    def __init__(
        self,
        sets: Sequence[ImageSet],
        vae: Any,
        scheduler: Any,
        device: torch.device,
        temperature: float = 0.1,
    ) -> None:
        from stylekit.extractors import load_default

        self.extractor = load_default().to(device).eval().requires_grad_(False)
        self.vae = vae
        self.scheduler = scheduler
        self.temperature = temperature
        with torch.no_grad():
            positive = self._embed(sets[0].pixels.to(device).add(1).div(2)).mean(0)
            self.positive = F.normalize(positive, dim=0)
            others = [s.pixels for s in sets[1:]]
            self.negatives = self._embed(torch.cat(others).to(device).add(1).div(2)) if others else None

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.extractor(pixels.float()).embedding

    def __call__(self, pred: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Mean InfoNCE over the rows given (``pred``/``noisy``: ``(b, C, h, w)``, ``timesteps``: ``(b,)``)."""
        if len(pred) == 0:
            return pred.sum() * 0.0
        alpha = self.scheduler.alphas_cumprod.to(pred.device)[timesteps].float().view(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            x0 = alpha.sqrt() * noisy.float() - (1 - alpha).sqrt() * pred.float()
        else:
            x0 = (noisy.float() - (1 - alpha).sqrt() * pred.float()) / alpha.sqrt()
        scale = float(self.vae.config.scaling_factor)
        shift = float(getattr(self.vae.config, "shift_factor", None) or 0.0)
        pixels = self.vae.decode((x0 / scale + shift).to(self.vae.dtype)).sample.float()
        embedding = self._embed(pixels.clamp(-1, 1).add(1).div(2))
        positive = embedding @ self.positive
        if self.negatives is None:
            per_row = 1.0 - positive
        else:
            logits = torch.cat([positive[:, None], embedding @ self.negatives.T], dim=1) / self.temperature
            per_row = F.cross_entropy(
                logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device), reduction="none"
            )
        weight = alpha.view(-1)
        return (weight * per_row).sum() / weight.sum().clamp_min(1e-8)
