"""``StyleInjectionXLPipeline``: StyleID for SDXL.

SDXL has no attention at StyleID's 1/8 level; the default preset ``styleid-xl`` injects the
self-attention of ``up_blocks.1`` (and ``styleid-xl-plus`` adds ``up_blocks.0.attentions.1``). Storing
SDXL features costs gigabytes per image, so the default strategy here is ``trajectory``: only the
inverted latents are cached and the references run live in the same batch.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from stylekit.models import text_encoder_fingerprint
from stylekit.pipelines.style_injection import StyleInjectionMixin


class StyleInjectionXLPipeline(StyleInjectionMixin, StableDiffusionXLPipeline):
    """StyleID for SDXL. Loads like ``StableDiffusionXLPipeline``; the call is ``StyleInjectionMixin.__call__``."""

    architecture = "sdxl"
    default_cache_strategy = "trajectory"

    def unet_conditioning(
        self, batch_size: int, dtype: torch.dtype, height: int, width: int
    ) -> dict[str, Any]:
        device = self.__dict__.get("_call_device") or self._execution_device
        key = (device, height, width, text_encoder_fingerprint(self))  # an edited text encoder re-encodes
        cached = self.__dict__.get("_empty_prompt")
        if cached is None or cached[0] != key:
            prompt_embeds, _, pooled, _ = self.encode_prompt(
                "", device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            projection_dim = (
                self.text_encoder_2.config.projection_dim
                if self.text_encoder_2 is not None
                else int(pooled.shape[-1])
            )
            time_ids = self._get_add_time_ids(
                (height, width),
                (0, 0),
                (height, width),
                dtype=prompt_embeds.dtype,
                text_encoder_projection_dim=projection_dim,
            ).to(device)
            cached = (key, prompt_embeds, pooled, time_ids)
            self.__dict__["_empty_prompt"] = cached
        _, prompt_embeds, pooled, time_ids = cached
        return {
            "encoder_hidden_states": prompt_embeds.to(dtype).expand(batch_size, -1, -1),
            "added_cond_kwargs": {
                "text_embeds": pooled.to(dtype).expand(batch_size, -1),
                "time_ids": time_ids.to(dtype).expand(batch_size, -1),
            },
        }
