"""Weight-free quality metrics for style transfer on the synthetic style world.

Nothing here downloads or loads pretrained weights: the Gram network is a fixed-seed random-init CNN and
the probes are small classifiers trained at run time on rendered world images (DESIGN.md section 5).

Images are accepted as uint8 ``(H, W, 3)`` arrays, float ``(H, W, 3)`` arrays in ``[0, 1]`` (what the
pipelines return with ``output_type="np"``), float ``(3, H, W)`` tensors in ``[0, 1]`` or PIL images.

Style
    :func:`palette_distance` (Hellinger distance of soft colour histograms), :func:`gram_distance` (Gram
    matrices of a fixed random CNN) and :func:`style_score`: the share of the content-to-style distance
    that the output closed, in each metric's embedding ``e_m``::

        s_m = clip(1 - ||e_m(out) - e_m(style)|| / ||e_m(content) - e_m(style)||, 0, 1)
        style_score = mean over m in {palette, gram} of s_m

    It is exactly 0 for ``out = content`` and exactly 1 for ``out = style``, and ``m`` at the point a
    fraction ``m`` of the way from the content to the style in the embedding. An output that only moved
    *away* from the content (noise, an unrelated image) scores about 0: the embeddings of unrelated
    images are nearly orthogonal, so a distance ratio ``d(o, c) / (d(o, c) + d(o, s))`` or a projection
    onto ``style - content`` would give such an output about 0.5.
Content
    :func:`segment_objects` (objects = pixels unlike the paper, whose colours are read from the image
    border; outlines centred on the contour are thinned back), :func:`content_iou` (IoU of the
    segmentation with the world's object masks, ignoring a one-pixel band (at 64 px) around every
    contour) and :func:`edge_ssim` (SSIM of Sobel edge maps).
Probes
    :func:`train_content_probe` and :func:`train_style_probe`: small CNNs trained for a few hundred
    steps on freshly rendered world images of the ``train`` parts (deterministic by seed), used to check
    that generated images show the content / style their captions ask for.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ImageInput = Any  # np.ndarray | torch.Tensor | PIL.Image.Image

STYLE_METRICS = ("palette", "gram")
"""The metrics :func:`style_score` averages."""

HISTOGRAM_BINS = 8
"""Bins per RGB channel of the joint colour histogram (8^3 = 512 cells)."""

SEGMENT_THRESHOLD = 0.1
"""Colour distance (RGB in [0, 1], Euclidean) under which a pixel can be paper."""

RELIABLE_IOU = 0.85
"""Benchmarks keep content images that the segmenter itself reads with at least this IoU."""


# --------------------------------------------------------------------------------------------------
# images


def as_image(image: ImageInput) -> torch.Tensor:
    """Any supported image -> float32 tensor ``(H, W, 3)`` in ``[0, 1]`` on the CPU.

    Integer arrays are read as ``[0, 255]``; float arrays/tensors as ``[0, 1]``; a 3-leading-dim tensor
    or array whose last dim is not 3 is read as ``(3, H, W)``.
    """
    if hasattr(image, "convert") and not isinstance(image, (np.ndarray, torch.Tensor)):
        image = np.asarray(image.convert("RGB"))
    tensor = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    tensor = tensor.detach().cpu()
    if tensor.ndim != 3:
        raise ValueError(
            f"expected one image of 3 dims (H, W, 3) or (3, H, W), got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[-1] != 3 and tensor.shape[0] == 3:
        tensor = tensor.permute(1, 2, 0)
    if tensor.shape[-1] != 3:
        raise ValueError(f"expected an RGB image, got shape {tuple(tensor.shape)}")
    if not torch.is_floating_point(tensor):
        return tensor.float() / 255.0
    return tensor.float()


def as_batch(images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
    """Images -> float32 ``(B, 3, H, W)`` in ``[0, 1]``. Accepts one image, a list, or a batch array
    ``(B, H, W, 3)`` (uint8 or float)."""
    if isinstance(images, (np.ndarray, torch.Tensor)) and np.ndim(images) == 4:
        return torch.stack([as_image(im) for im in images]).permute(0, 3, 1, 2).contiguous()
    if isinstance(images, (list, tuple)):
        return torch.stack([as_image(im) for im in images]).permute(0, 3, 1, 2).contiguous()
    return as_image(images).permute(2, 0, 1)[None].contiguous()


# --------------------------------------------------------------------------------------------------
# style: colour histograms and Gram matrices


def colour_histogram(image: ImageInput, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Soft (trilinear) joint RGB histogram, normalised to sum 1: float32 ``(bins**3,)``.

    Each pixel spreads its unit mass over the 8 cells around its colour, so the histogram changes
    continuously with the colours (no jumps at bin edges).
    """
    x = as_image(image).reshape(-1, 3).clamp(0, 1) * (bins - 1)
    low = x.floor().clamp(max=bins - 2)
    frac = x - low
    low = low.long()
    hist = torch.zeros(bins**3)
    for corner in range(8):
        offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
        weight = torch.where(offset.bool(), frac, 1 - frac).prod(dim=1)
        idx = low + offset
        flat = (idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]
        hist.index_add_(0, flat, weight)
    return hist / hist.sum()


def _palette_embedding(image: ImageInput) -> torch.Tensor:
    # sqrt of a distribution: Euclidean distance / sqrt(2) is the Hellinger distance.
    return colour_histogram(image).sqrt()


def palette_distance(a: ImageInput, b: ImageInput) -> float:
    """Hellinger distance between the soft colour histograms of two images, in ``[0, 1]``
    (0: same colour distribution; 1: no colour in common)."""
    return float((_palette_embedding(a) - _palette_embedding(b)).norm() / math.sqrt(2.0))


class _RandomCNN(nn.Module):
    """Three 3x3 conv + ReLU layers (16, 32, 64 channels; strides 1, 2, 2), Kaiming-normal weights
    drawn from a fixed seed; never trained."""

    CHANNELS = (16, 32, 64)

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        layers = []
        in_ch = 3
        for i, out_ch in enumerate(self.CHANNELS):
            conv = nn.Conv2d(in_ch, out_ch, 3, stride=1 if i == 0 else 2, padding=1, padding_mode="reflect")
            with torch.no_grad():
                conv.weight.normal_(0.0, math.sqrt(2.0 / (in_ch * 9)), generator=generator)
                conv.bias.zero_()
            layers.append(conv)
            in_ch = out_ch
        self.convs = nn.ModuleList(layers)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        h = (x - 0.5) * 2.0
        for conv in self.convs:
            h = F.relu(conv(h))
            feats.append(h)
        return feats


@functools.lru_cache(maxsize=4)
def gram_network(seed: int = 0) -> nn.Module:
    """The fixed random CNN behind :func:`gram_distance` (built once per seed and cached)."""
    return _RandomCNN(seed)


@torch.no_grad()
def gram_embedding(
    images: ImageInput | Sequence[ImageInput], seed: int = 0, masks: torch.Tensor | None = None
) -> torch.Tensor:
    """Concatenated Gram matrices of the random CNN's three layers: float32 ``(B, D)``. ``images`` may
    also be a ``(B, 3, H, W)`` float tensor in ``[0, 1]`` (used as is).

    Per layer ``G = F F^T / (H W)`` on the ``(C, H W)`` feature map, divided by ``C`` so that every layer
    weighs about the same; ``D = 16^2 + 32^2 + 64^2``. ``masks`` ((B, H, W) in [0, 1]) restrict each Gram
    to a region: ``G = F diag(m) F^T / sum(m)`` with ``m`` the mask area-averaged onto the layer's grid.
    """
    x = (
        images
        if isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] == 3
        else as_batch(images)
    )
    parts = []
    for feat in gram_network(seed)(x.float()):
        b, c, h, w = feat.shape
        flat = feat.reshape(b, c, h * w)
        if masks is None:
            gram = flat @ flat.transpose(1, 2) / (h * w)
        else:
            m = F.adaptive_avg_pool2d(masks[:, None].float(), (h, w)).reshape(b, 1, h * w)
            gram = (flat * m) @ flat.transpose(1, 2) / m.sum(-1, keepdim=True).clamp_min(1e-12)
        parts.append(gram.reshape(b, -1) / c)
    return torch.cat(parts, dim=1)


def gram_distance(a: ImageInput, b: ImageInput) -> float:
    """Euclidean distance between the random-CNN Gram embeddings of two images (0 iff same Grams)."""
    e = gram_embedding([a, b])
    return float((e[0] - e[1]).norm())


def _closed_share(o: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Row-wise ``clip(1 - ||o - s|| / ||c - s||, 0, 1)`` (0 where ``c == s``)."""
    to_style = (o - s).double().norm(dim=-1)
    span = (c - s).double().norm(dim=-1)
    share = torch.where(span > 0, 1.0 - to_style / span.clamp_min(1e-300), torch.zeros_like(span))
    return share.clamp(0.0, 1.0)


def style_score_components(
    outputs: ImageInput | Sequence[ImageInput],
    contents: ImageInput | Sequence[ImageInput],
    styles: ImageInput | Sequence[ImageInput],
    masks: np.ndarray | torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Per-image style scores of every metric in :data:`STYLE_METRICS` plus their mean (``"style"``).

    Args:
        outputs, contents, styles: one image each or equally long lists / batches (``B`` triples).
        masks: optional bool ``(B, H, W)`` regions of the outputs and contents: the score of the region
            alone (palette of its pixels; Gram over its feature positions, ``gram_embedding``), against
            the whole style image. None: the whole images.

    Returns:
        ``{"palette": (B,), "gram": (B,), "style": (B,)}`` float64 arrays in ``[0, 1]``.
    """
    o, c, s = as_batch(outputs), as_batch(contents), as_batch(styles)
    if not (len(o) == len(c) == len(s)):
        raise ValueError(
            f"outputs, contents and styles must be equally many, got {len(o)}, {len(c)}, {len(s)}"
        )
    if masks is None:
        pal = [torch.stack([_palette_embedding(im.permute(1, 2, 0)) for im in batch]) for batch in (o, c, s)]
        gram = [gram_embedding(batch) for batch in (o, c, s)]
    else:
        region = torch.as_tensor(np.asarray(masks)).bool()
        if region.shape != (len(o), *o.shape[-2:]) or not region.flatten(1).any(1).all():
            raise ValueError(
                f"masks: expected {len(o)} non-empty masks of {tuple(o.shape[-2:])}, got {tuple(region.shape)}"
            )
        pal = [
            torch.stack(
                [
                    _palette_embedding(im.permute(1, 2, 0)[m][None])
                    for im, m in zip(batch, region, strict=True)
                ]
            )
            for batch in (o, c)
        ]
        pal.append(torch.stack([_palette_embedding(im.permute(1, 2, 0)) for im in s]))
        gram = [gram_embedding(o, masks=region), gram_embedding(c, masks=region), gram_embedding(s)]
    scores = {"palette": _closed_share(*pal).numpy(), "gram": _closed_share(*gram).numpy()}
    scores["style"] = np.mean([scores[m] for m in STYLE_METRICS], axis=0)
    return scores


def style_score(output: ImageInput, content: ImageInput, style: ImageInput) -> float:
    """How far ``output`` moved from ``content`` toward ``style``: 0 = the content image, 1 = the style
    image (the mean over the palette and Gram metrics of the share of the content-to-style distance
    closed; see the module docstring)."""
    return float(style_score_components([output], [content], [style])["style"][0])


# --------------------------------------------------------------------------------------------------
# content: segmentation, IoU, edge SSIM


@functools.lru_cache(maxsize=64)
def _disk(radius: float) -> torch.Tensor:
    r = int(math.floor(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return ((yy * yy + xx * xx).float() <= radius * radius + 1e-6).float()


def _dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within Euclidean distance ``radius`` (pixel centres) of a True pixel of ``mask`` (H, W)."""
    if radius < 1:
        return mask.clone()
    kernel = _disk(radius)
    k = kernel.shape[0]
    out = F.conv2d(mask[None, None].float(), kernel[None, None], padding=k // 2)
    return out[0, 0] > 0.5


def _border_colours(x: torch.Tensor, width: int) -> torch.Tensor:
    return torch.cat(
        [
            x[:width].reshape(-1, 3),
            x[-width:].reshape(-1, 3),
            x[width:-width, :width].reshape(-1, 3),
            x[width:-width, -width:].reshape(-1, 3),
        ]
    )


def _subsample(x: torch.Tensor, n: int) -> torch.Tensor:
    if len(x) <= n:
        return x
    return x[torch.linspace(0, len(x) - 1, n).long()]


def background_colours(image: ImageInput, threshold: float = SEGMENT_THRESHOLD) -> torch.Tensor:
    """The paper's colours, read from the image border: ``(K, 3)`` float32 in ``[0, 1]``.

    The border ring is ``max(1, S / 32)`` pixels wide; border colours shared by fewer than 5 % of the
    border (objects that touch the edge) are dropped; at most 512 colours are kept.
    """
    x = as_image(image)
    width = max(1, round(min(x.shape[:2]) / 32))
    border = _border_colours(x, width)
    common = (torch.cdist(border, border) < threshold).float().mean(dim=1) >= 0.05
    return _subsample(border[common] if common.any() else border, 512)


def segment_objects(
    image: ImageInput,
    background_hint: ImageInput | np.ndarray | torch.Tensor | None = None,
    threshold: float = SEGMENT_THRESHOLD,
    outlines: bool = True,
) -> np.ndarray:
    """Segment the objects (everything that is not paper) of a world-like image.

    1. Paper colours come from ``background_hint``: None = this image's own border
       (:func:`background_colours`), an ``(K, 3)`` array of colours in ``[0, 1]``, or another image whose
       border is read.
    2. Pixels farther than ``threshold`` from every paper colour are candidates; the candidates that are
       not next to paper (a 3 x 3 erosion) give the object colours. Every pixel then goes to the nearer
       of the two colour sets (nearest neighbour), so an antialiased edge splits at half coverage,
       like the world's pixel-centre masks.
    3. ``outlines``: if the second ring inside the segmented boundary is one colour that does not
       recur deeper inside (an outline), the band of that colour is measured (its area over the boundary
       length = its width ``w``) and its outer half is removed (outlines are centred on the contour).

    Returns:
        bool ``(H, W)`` foreground mask.
    """
    x = as_image(image)
    h, w, _ = x.shape
    if background_hint is None:
        bg = background_colours(x, threshold)
    else:
        hint = torch.as_tensor(
            np.asarray(background_hint) if not isinstance(background_hint, torch.Tensor) else background_hint
        )
        if hint.ndim == 2 and hint.shape[-1] == 3:
            bg = hint.float() / (255.0 if not torch.is_floating_point(hint) else 1.0)
        else:
            bg = background_colours(hint, threshold)
    flat = x.reshape(-1, 3)
    d_bg = torch.cdist(flat, bg).min(dim=1).values.reshape(h, w)
    loose = d_bg > threshold
    if not loose.any():
        return loose.numpy()
    core = -F.max_pool2d(-loose[None, None].float(), 3, 1, 1)[0, 0] > 0.5
    if core.any():
        fg_colours = _subsample(x[core], 1024)
        d_fg = torch.cdist(flat, fg_colours).min(dim=1).values.reshape(h, w)
        fg = loose & (d_fg < d_bg)
    else:
        fg = loose
    if outlines:
        fg = _thin_outlines(x, fg)
    return fg.numpy()


def _thin_outlines(x: torch.Tensor, fg: torch.Tensor, tau: float = 0.15) -> torch.Tensor:
    """Remove the outer half of an outline band (see :func:`segment_objects`, step 3)."""
    size = min(x.shape[:2])
    if fg.sum() < 8:
        return fg
    bg = ~fg
    near1 = _dilate(bg, 1.0)
    ring = fg & near1
    ring2 = fg & _dilate(bg, 2.3) & ~near1
    if ring2.sum() < 8:
        return fg
    colour = x[ring2].median(dim=0).values
    near = (x - colour).norm(dim=-1) < tau
    if near[ring2].float().mean() < 0.5:
        return fg
    band = fg & near & _dilate(bg, 0.06 * size + 1.5)
    width = (band.sum().item() + 0.5 * ring.sum().item()) / max(1, ring.sum().item())
    deep = fg & ~_dilate(bg, width + 1.0)
    if deep.any() and near[deep].float().mean() >= 0.2:
        return fg  # the "outline" colour fills the objects too: no outline to thin
    half = width / 2
    outer = _dilate(bg, half + 0.5 - 1e-3)
    return fg & ~(outer & (near | ring))


def _union_mask(masks: np.ndarray | torch.Tensor) -> torch.Tensor:
    m = torch.as_tensor(np.asarray(masks)).bool()
    if m.ndim == 3:
        m = m.any(dim=0)
    if m.ndim != 2:
        raise ValueError(f"masks: expected (K, H, W) or (H, W), got shape {tuple(m.shape)}")
    return m


def mask_iou(
    pred: np.ndarray | torch.Tensor, masks: np.ndarray | torch.Tensor, tolerance: float | None = None
) -> float:
    """IoU of a predicted foreground with the union of ``masks``, ignoring pixels within ``tolerance``
    pixels of the true contour (on either side). ``tolerance`` None = ``S / 64`` (1 px at 64 px);
    two empty sets give 1."""
    truth = _union_mask(masks)
    pred_t = _union_mask(pred)
    if pred_t.shape != truth.shape:
        raise ValueError(f"prediction {tuple(pred_t.shape)} and masks {tuple(truth.shape)} differ in size")
    if tolerance is None:
        tolerance = min(truth.shape) / 64.0
    care = torch.ones_like(truth)
    if tolerance >= 1:
        care = ~(_dilate(truth, tolerance) & _dilate(~truth, tolerance))
    union = ((pred_t | truth) & care).sum().item()
    if union == 0:
        return 1.0
    return float(((pred_t & truth) & care).sum().item() / union)


def content_iou(
    output: ImageInput,
    masks: np.ndarray | torch.Tensor,
    tolerance: float | None = None,
    background_hint: Any = None,
) -> float:
    """IoU between the objects :func:`segment_objects` finds in ``output`` and the content's object
    masks (``(K, H, W)`` or ``(H, W)`` bool, e.g. ``WorldSample.masks[i]``); see :func:`mask_iou` for
    ``tolerance``. Masks must have the output's size."""
    return mask_iou(segment_objects(output, background_hint), masks, tolerance)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def edge_map(images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
    """Sobel gradient magnitude of the luminance (Rec. 601), ``(B, 1, H, W)``, divided by its maximum
    possible value ``4 sqrt 2`` so it lies in ``[0, 1]``; replicate padding."""
    x = as_batch(images)
    luma = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
    padded = F.pad(luma, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, _SOBEL_X[None, None])
    gy = F.conv2d(padded, _SOBEL_X.t()[None, None])
    return (gx * gx + gy * gy).sqrt() / (4.0 * math.sqrt(2.0))


def ssim(
    a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5, data_range: float = 1.0
) -> torch.Tensor:
    """Mean SSIM per image of ``(B, C, H, W)`` tensors (Gaussian window, reflect padding, constants
    ``(0.01 L)^2`` and ``(0.03 L)^2``); identical inputs give exactly 1."""
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma * sigma))
    g = (g / g.sum()).float()
    channels = a.shape[1]
    kx = g[None, None, None, :].repeat(channels, 1, 1, 1)
    ky = g[None, None, :, None].repeat(channels, 1, 1, 1)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        mode = "reflect" if min(t.shape[-2:]) > pad else "replicate"
        t = F.pad(t, (pad, pad, pad, pad), mode=mode)
        return F.conv2d(F.conv2d(t, kx, groups=channels), ky, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    return (num / den).mean(dim=(1, 2, 3))


def edge_ssim(output: ImageInput, content: ImageInput) -> float:
    """SSIM of the Sobel edge maps (:func:`edge_map`) of ``output`` and ``content``: 1 for identical
    images, lower as edges move, vanish or appear."""
    edges = edge_map([output, content])
    return float(ssim(edges[:1], edges[1:])[0])


def harmonic_mean(a: float, b: float) -> float:
    """``2ab / (a + b)`` (0 when either is 0)."""
    return 0.0 if a <= 0 or b <= 0 else 2 * a * b / (a + b)


# --------------------------------------------------------------------------------------------------
# probes


class _ProbeNet(nn.Module):
    """A small CNN at 64 px: a 5x5 stride-2 stem (24 ch), 3x3 convs (48 s2, 96 s2, 96) with BatchNorm
    and ReLU, average and max pooling, one linear head per factor (about 0.15 M parameters)."""

    def __init__(self, heads: dict[str, int]) -> None:
        super().__init__()

        def block(i: int, o: int, k: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, k, stride, k // 2, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.body = nn.Sequential(
            block(3, 24, 5, 2), block(24, 48, 3, 2), block(48, 96, 3, 2), block(96, 96, 3, 1)
        )
        self.heads = nn.ModuleDict({name: nn.Linear(192, n) for name, n in heads.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body((x - 0.5) * 2.0)
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}


def content_targets(contents: Sequence[Any]) -> dict[str, np.ndarray]:
    """Content probe labels: the first object's shape (10) and the object count (1..3 -> 0..2).
    Together they are the world's content class ``shape * 3 + count - 1``."""
    return {
        "shape": np.array([c.objects[0].shape for c in contents], dtype=np.int64),
        "count": np.array([len(c.objects) - 1 for c in contents], dtype=np.int64),
    }


def style_targets(styles: Sequence[Any]) -> dict[str, np.ndarray]:
    """Style probe labels: palette (12), texture (8) and stroke (6)."""
    return {
        "palette": np.array([s.palette for s in styles], dtype=np.int64),
        "texture": np.array([s.texture for s in styles], dtype=np.int64),
        "stroke": np.array([s.stroke for s in styles], dtype=np.int64),
    }


@dataclass
class Probe:
    """A trained probe: ``predict`` images, ``accuracy`` against labels.

    Attributes:
        kind: ``"content"`` or ``"style"``.
        heads: factor name -> number of classes.
        net: the trained network (eval mode, CPU).
        size: the image side it was trained at (inputs are resized to it).
        history: training losses (every 50 steps).
    """

    kind: str
    heads: dict[str, int]
    net: nn.Module
    size: int
    history: list[float] = field(default_factory=list)

    @torch.no_grad()
    def predict(
        self, images: ImageInput | Sequence[ImageInput], batch_size: int = 256
    ) -> dict[str, np.ndarray]:
        """Predicted class per head: ``{head: int64 (B,)}``."""
        x = as_batch(images)
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(
                x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
        out: dict[str, list[np.ndarray]] = {name: [] for name in self.heads}
        for start in range(0, len(x), batch_size):
            logits = self.net(x[start : start + batch_size])
            for name in self.heads:
                out[name].append(logits[name].argmax(dim=1).numpy())
        return {name: np.concatenate(v) for name, v in out.items()}

    def accuracy(
        self, images: ImageInput | Sequence[ImageInput], labels: dict[str, np.ndarray]
    ) -> dict[str, float]:
        """Accuracy per head, ``"mean"`` over heads and ``"all"`` (every head right)."""
        pred = self.predict(images)
        hits = {name: pred[name] == np.asarray(labels[name]) for name in self.heads}
        acc = {name: float(h.mean()) for name, h in hits.items()}
        acc["mean"] = float(np.mean([acc[name] for name in self.heads]))
        acc["all"] = float(np.logical_and.reduce(list(hits.values())).mean())
        return acc


def probe_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild, style-preserving corruption so the probes tolerate generated images: a Gaussian blur
    (sigma 0..1 px at 64 px, per image) and pixel noise (sigma 0..0.03). ``x``: (B, 3, H, W) in [0, 1]."""
    b, _, h, _ = x.shape
    sigma = torch.rand(b, generator=generator) * (h / 64.0)
    coords = torch.arange(-2, 3, dtype=torch.float32) * (h / 64.0)
    kernels = torch.exp(-(coords[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    k = kernels.shape[1]
    # separable per-image blur as a grouped convolution over (image, channel) pairs
    flat = x.reshape(1, b * 3, h, -1)
    kx = kernels.repeat_interleave(3, dim=0)[:, None, None, :]
    ky = kernels.repeat_interleave(3, dim=0)[:, None, :, None]
    flat = F.conv2d(F.pad(flat, (k // 2, k // 2, 0, 0), mode="replicate"), kx, groups=b * 3)
    flat = F.conv2d(F.pad(flat, (0, 0, k // 2, k // 2), mode="replicate"), ky, groups=b * 3)
    noise = torch.randn(x.shape, generator=generator) * (torch.rand(b, 1, 1, 1, generator=generator) * 0.03)
    return (flat.reshape(x.shape) + noise).clamp(0, 1)


def train_probe(
    kind: str,
    steps: int = 600,
    batch_size: int = 64,
    size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    augment: bool = True,
) -> Probe:
    """Train a content or style probe on freshly rendered world images (train part of every split).

    Deterministic for a given ``(kind, steps, batch_size, size, seed)`` and torch thread count: the
    data come from ``np.random.default_rng([seed, kind id, step])`` and the weights/augmentation from a
    seeded ``torch.Generator``. AdamW with a cosine schedule. Runs on the CPU.
    """
    from stylekit.data import render_samples, sample_content, sample_style
    from stylekit.data.splits import SPLITS, in_part

    if kind not in ("content", "style"):
        raise ValueError(f"kind must be 'content' or 'style', got {kind!r}")
    heads = {"shape": 10, "count": 3} if kind == "content" else {"palette": 12, "texture": 8, "stroke": 6}
    targets_of = content_targets if kind == "content" else style_targets
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = _ProbeNet(heads)
    generator = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    history: list[float] = []
    net.train()
    running = 0.0
    for step in range(steps):
        rng = np.random.default_rng([seed, 7 if kind == "content" else 11, step])
        contents, styles = [], []
        while len(contents) < batch_size:
            c, s = sample_content(rng), sample_style(rng)
            if all(in_part(c, s, name, "train") for name in SPLITS):
                contents.append(c)
                styles.append(s)
        sample = render_samples(contents, styles, size)
        x = torch.from_numpy(sample.images).permute(0, 3, 1, 2).float() / 255.0
        if augment:
            x = probe_augment(x, generator)
        labels = targets_of(contents if kind == "content" else styles)
        logits = net(x)
        loss = sum(F.cross_entropy(logits[name], torch.from_numpy(labels[name])) for name in heads)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running += float(loss.detach())
        if (step + 1) % 50 == 0 or step + 1 == steps:
            history.append(round(running / ((step % 50) + 1), 4))
            running = 0.0
    net.eval()
    return Probe(kind, heads, net, size, history)


def train_content_probe(steps: int = 600, size: int = 64, seed: int = 0, **kwargs: Any) -> Probe:
    """A content probe (first object's shape, object count); see :func:`train_probe`."""
    return train_probe("content", steps=steps, size=size, seed=seed, **kwargs)


def train_style_probe(steps: int = 600, size: int = 64, seed: int = 0, **kwargs: Any) -> Probe:
    """A style probe (palette, texture, stroke); see :func:`train_probe`."""
    return train_probe("style", steps=steps, size=size, seed=seed, **kwargs)


__all__ = [
    "RELIABLE_IOU",
    "STYLE_METRICS",
    "Probe",
    "as_batch",
    "as_image",
    "background_colours",
    "colour_histogram",
    "content_iou",
    "content_targets",
    "edge_map",
    "edge_ssim",
    "gram_distance",
    "gram_embedding",
    "gram_network",
    "harmonic_mean",
    "mask_iou",
    "palette_distance",
    "segment_objects",
    "ssim",
    "style_score",
    "style_score_components",
    "style_targets",
    "train_content_probe",
    "train_probe",
    "train_style_probe",
]
