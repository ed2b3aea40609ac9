"""Backbones: a small from-scratch CNN for the synthetic world, and any transformers CLIP/ViT vision model.

A backbone maps normalised pixels ``(B, 3, S, S)`` to ``(pooled, patches)``: a global feature ``(B, F)``
and local patch features ``(B, N, P)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .config import ExtractorConfig


def _norm(channels: int) -> nn.GroupNorm:
    groups = next(g for g in (8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


def _conv(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    padding = (kernel - stride + 1) // 2 if stride > 1 else kernel // 2
    # no conv bias: the GroupNorm that follows would cancel it (and Adam would amplify its zero gradient's noise)
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding, bias=False), _norm(cout), nn.GELU())


class StyleCNN(nn.Module):
    """A small CNN whose global feature is the channel mean and std of selected stages (style statistics).

    Stage 0 is a stride-``stem`` 4x4 conv (2: overlapping; 4: a ViT-like patchify; both see every pixel)
    and a 3x3 conv; each
    later stage halves the resolution with a stride-2 3x3 conv and adds a 3x3 conv. GroupNorm, not
    BatchNorm, so a batch split over processes computes exactly what one process would.
    """

    def __init__(self, widths: tuple[int, ...], pooled_stages: tuple[int, ...], stem: int = 2) -> None:
        super().__init__()
        stages = []
        cin = 3
        for i, width in enumerate(widths):
            first = _conv(cin, width, 4, stem) if i == 0 else _conv(cin, width, 3, 2)
            stages.append(nn.Sequential(first, _conv(width, width, 3, 1)))
            cin = width
        self.stages = nn.ModuleList(stages)
        self.pooled_stages = tuple(pooled_stages)
        self.feature_dim = 2 * sum(widths[s] for s in self.pooled_stages)
        self.token_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` normalised ``(B, 3, S, S)`` -> pooled ``(B, F)`` and last-stage tokens ``(B, (S/2^n)^2, C)``."""
        stats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.pooled_stages:
                flat = x.flatten(2)
                mean = flat.mean(-1)
                std = (flat.var(-1, unbiased=False) + 1e-5).sqrt()
                stats += [mean, std]
        return torch.cat(stats, dim=1), x.flatten(2).transpose(1, 2)


def build_hf_model(config: ExtractorConfig) -> nn.Module:
    """Instantiate the transformers vision model named by ``config.hf_class`` from ``config.hf_config``."""
    import transformers

    cls = getattr(transformers, str(config.hf_class), None)
    if cls is None:
        raise ValueError(f"hf_class: transformers has no class {config.hf_class!r}")
    config_cls = cls.config_class
    hf_config = config_cls.from_dict(dict(config.hf_config or {}))
    return cls(hf_config, **dict(config.extra.get("hf_init_kwargs", {})))


class HFBackbone(nn.Module):
    """A transformers vision model (CLIP / ViT / anything returning ``last_hidden_state`` with a leading CLS).

    pooled = CLIP's post-layernormed CLS token (the feature before CLIP's projection, as CSD uses) or
    ``pooler_output`` / the CLS token for other models; patches = the remaining tokens. If the model has a
    ``visual_projection`` (``CLIPVisionModelWithProjection``), :meth:`joint` maps tokens into CLIP's
    image-text space.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        hidden = int(model.config.hidden_size)
        self.feature_dim = hidden
        self.token_dim = hidden
        projection = getattr(model, "visual_projection", None)
        self.joint_dim: int | None = None if projection is None else int(projection.out_features)

    def _post_layernorm(self) -> nn.Module | None:
        inner: Any = getattr(self.model, "vision_model", self.model)
        return getattr(inner, "post_layernorm", None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` normalised ``(B, 3, S, S)`` -> pooled ``(B, hidden)`` and patch tokens ``(B, N, hidden)``."""
        out = self.model(pixel_values=x)
        hidden = out.last_hidden_state
        post = self._post_layernorm()
        if post is not None:
            pooled = post(hidden[:, 0])
        else:
            pooled = getattr(out, "pooler_output", None)
            if pooled is None:
                pooled = hidden[:, 0]
        return pooled, hidden[:, 1:]

    def joint(self, tokens: torch.Tensor) -> torch.Tensor:
        """Project hidden tokens ``(..., hidden)`` into CLIP's joint image-text space ``(..., E)``."""
        projection = getattr(self.model, "visual_projection", None)
        if projection is None:
            raise ValueError(
                f"{type(self.model).__name__} has no visual_projection, so it has no joint image-text space; "
                "use a CLIPVisionModelWithProjection backbone"
            )
        post = self._post_layernorm()
        return projection(post(tokens) if post is not None else tokens)
