"""Building blocks: gradient reversal (CSD/DANN), content shuffling (StyleMaster's global branch),
prompt-filtered local tokens (StyleMaster), content subtraction (InstantStyle)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class _GradientReversal(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return -ctx.alpha * grad, None


def grad_reverse(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Identity forward; multiplies the gradient by ``-alpha`` backward (DANN's gradient-reversal layer)."""
    return _GradientReversal.apply(x, float(alpha))


def dann_alpha(progress: float, gamma: float = 10.0) -> float:
    """DANN's schedule ``2 / (1 + exp(-gamma p)) - 1`` for training progress ``p`` in [0, 1] (CSD uses it)."""
    return 2.0 / (1.0 + math.exp(-gamma * float(progress))) - 1.0


def content_shuffle(pixels: torch.Tensor, mode: str = "tiles", grid: int = 4, seed: int = 0) -> torch.Tensor:
    """A content-shuffled copy of a batch: layout destroyed, local colour/texture/stroke statistics kept.

    Args:
        pixels: ``(B, C, H, W)`` float.
        mode: ``"tiles"`` permutes a ``grid x grid`` jigsaw of tiles (like StyleMaster's identity/jigsaw
            illusion pairs; H and W are cropped down to multiples of ``grid`` and padded back by edge
            replication); ``"flow"`` warps with a smooth random displacement field of up to half a grid cell
            (the idea of controlnet_aux's ContentShuffleDetector that StyleMaster applies).
        grid: tiles per side, or the control-grid size of the flow.
        seed: the permutation / flow seed; each image gets its own draw from one generator, so the result
            is a pure function of (pixels, mode, grid, seed).

    Returns:
        ``(B, C, H, W)`` tensor of the same dtype.
    """
    if pixels.ndim != 4:
        raise ValueError(f"pixels: expected (B, C, H, W), got shape {tuple(pixels.shape)}")
    b, c, h, w = pixels.shape
    gen = torch.Generator().manual_seed(int(seed))
    if mode == "tiles":
        th, tw = h // grid, w // grid
        if th < 1 or tw < 1:
            raise ValueError(f"content_shuffle: {h}x{w} images are smaller than a {grid}x{grid} grid")
        core = pixels[:, :, : th * grid, : tw * grid]
        tiles = (
            core.reshape(b, c, grid, th, grid, tw)
            .permute(0, 2, 4, 1, 3, 5)
            .reshape(b, grid * grid, c, th, tw)
        )
        perms = torch.stack([torch.randperm(grid * grid, generator=gen) for _ in range(b)]).to(pixels.device)
        tiles = torch.gather(tiles, 1, perms.view(b, -1, 1, 1, 1).expand_as(tiles))
        out = (
            tiles.reshape(b, grid, grid, c, th, tw)
            .permute(0, 3, 1, 4, 2, 5)
            .reshape(b, c, th * grid, tw * grid)
        )
        if out.shape[-2:] != (h, w):
            out = F.pad(out, (0, w - tw * grid, 0, h - th * grid), mode="replicate")
        return out
    if mode == "flow":
        noise = torch.rand(b, 2, grid + 1, grid + 1, generator=gen) * 2 - 1
        flow = F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=True) / grid
        ys = torch.linspace(-1, 1, h)
        xs = torch.linspace(-1, 1, w)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2): (x, y)
        coords = (base.unsqueeze(0) + flow.permute(0, 2, 3, 1)).to(pixels.device, pixels.dtype)
        return F.grid_sample(pixels, coords, mode="bilinear", padding_mode="reflection", align_corners=True)
    raise ValueError(f"content_shuffle: mode must be 'tiles' or 'flow', got {mode!r}")


def select_tokens(
    tokens: torch.Tensor,
    keys: torch.Tensor,
    text_embeds: torch.Tensor,
    keep_ratio: float = 0.05,
    keep: str = "least_similar",
) -> tuple[torch.Tensor, torch.Tensor]:
    """StyleMaster's local-texture filter: keep the patch tokens by cosine similarity to the prompt.

    Args:
        tokens: ``(B, N, D)`` the tokens to return.
        keys: ``(B, N, E)`` the same patches in the text's space (CLIP joint space).
        text_embeds: ``(E,)``, ``(1, E)`` or ``(B, E)`` prompt embedding(s) in that space.
        keep_ratio: fraction kept, ``ceil(N * keep_ratio)`` tokens (StyleMaster: 0.05, 13 of 257).
        keep: ``"least_similar"`` keeps the patches least like the prompt (the paper: content patches are
            dropped); ``"most_similar"`` keeps the most similar ones, which is what StyleMaster's released
            code does (ascending argsort, then the first 95% dropped).

    Returns:
        ``(kept (B, k, D), indices (B, k))``, indices ascending (original patch order).
    """
    if tokens.ndim != 3 or keys.ndim != 3 or keys.shape[:2] != tokens.shape[:2]:
        raise ValueError(
            f"select_tokens: tokens {tuple(tokens.shape)} and keys {tuple(keys.shape)} must be (B, N, *) alike"
        )
    text = text_embeds.reshape(-1, text_embeds.shape[-1]) if text_embeds.ndim <= 2 else None
    if text is None or text.shape[-1] != keys.shape[-1] or text.shape[0] not in (1, keys.shape[0]):
        raise ValueError(
            f"text_embeds has shape {tuple(text_embeds.shape)} but the patch keys live in a "
            f"{keys.shape[-1]}-d space (keys {tuple(keys.shape)}): expected (E,), (1, E) or (B, E) with "
            f"E={keys.shape[-1]}"
        )
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio: expected a fraction in (0, 1], got {keep_ratio}")
    if keep not in ("least_similar", "most_similar"):
        raise ValueError(f"keep: expected 'least_similar' or 'most_similar', got {keep!r}")
    n = tokens.shape[1]
    k = max(1, min(n, math.ceil(n * keep_ratio - 1e-9)))
    sim = F.cosine_similarity(keys, text.to(keys.dtype).unsqueeze(1), dim=-1)  # (B, N)
    order = torch.sort(sim, dim=1, descending=keep == "most_similar", stable=True).indices[:, :k]
    indices = order.sort(dim=1).values
    kept = torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return kept, indices


def subtract_content(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, scale: float = 0.5
) -> torch.Tensor:
    """InstantStyle's decoupling: ``image_embeds - scale * text_embeds`` in one CLIP joint space.

    Args:
        image_embeds: ``(B, E)`` CLIP image embeddings (``image_embeds`` of a *WithProjection model).
        text_embeds: ``(E,)`` or ``(B, E)`` CLIP text embeddings of a content prompt, same space.
        scale: InstantStyle's ``neg_content_scale`` (0.5 in its app; 0.5..0.8 in its scripts).

    Raises:
        ValueError: naming both shapes when the spaces differ (e.g. a ViT-H image tower with a bigG text tower).
    """
    if text_embeds.shape[-1] != image_embeds.shape[-1] or text_embeds.ndim > 2:
        raise ValueError(
            f"subtract_content: image_embeds {tuple(image_embeds.shape)} and text_embeds "
            f"{tuple(text_embeds.shape)} are not in the same joint space (last dims differ)"
        )
    if text_embeds.ndim == 2 and text_embeds.shape[0] not in (1, image_embeds.shape[0]):
        raise ValueError(
            f"subtract_content: text_embeds {tuple(text_embeds.shape)} needs 1 or {image_embeds.shape[0]} rows"
        )
    return image_embeds - float(scale) * text_embeds.to(image_embeds.dtype)


@torch.no_grad()
def clip_text_embeddings(text_model: torch.nn.Module, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Prompt embeddings in CLIP's joint space from a ``CLIPTextModelWithProjection`` (``text_embeds``), or
    the pooled output of a plain ``CLIPTextModel``.

    Returns:
        ``(len(prompts), E)`` float tensor.
    """
    device = next(text_model.parameters()).device
    ids = tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=tokenizer.model_max_length,
        return_tensors="pt",
    ).input_ids.to(device)
    out = text_model(input_ids=ids)
    embeds = getattr(out, "text_embeds", None)
    return embeds if embeds is not None else out.pooler_output
