"""The extractor's configuration: a validated dataclass whose canonical JSON hash is the extractor's identity."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

BACKBONES = ("cnn", "hf")
KEEP = ("least_similar", "most_similar")
SHUFFLES = (None, "tiles", "flow")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ExtractorConfig:
    """Architecture of a :class:`~stylekit.extractors.StyleExtractor`.

    Attributes:
        backbone: ``"cnn"`` (the small from-scratch CNN for the synthetic world) or ``"hf"`` (any transformers
            vision model: CLIP/ViT, rebuilt from ``hf_config``).
        image_size: side the images are resized to (cover + centre crop) before the backbone.
        widths: CNN stage widths; stage 0 is a stride-``stem`` 4x4 conv, each later stage a stride-2 3x3
            conv; every stage ends with a 3x3 conv (GroupNorm + GELU).
        stem: stage 0's stride, 2 or 4.
        pooled_stages: CNN stages whose channel mean and standard deviation (style statistics) form the
            global feature (FontDiffuser's multi-layer codes, AdaIN statistics).
        hf_config: ``config.to_dict()`` of the transformers vision model (``hf`` backbone).
        hf_class: its transformers class name, e.g. ``"CLIPVisionModelWithProjection"``.
        embed_dim: size of the global style embedding and of the local style tokens.
        head_hidden: hidden width of the style head MLP (0 = a single linear layer, CSD's ``proj`` copy).
        content_head: add a content classifier behind a gradient-reversal layer (CSD / DANN).
        n_content_classes: classes of the content head (30 for the world).
        shuffle: global branch input: None (the image), ``"tiles"`` (jigsaw permutation of a grid of tiles,
            as StyleMaster's illusion pairs) or ``"flow"`` (a smooth random warp, as controlnet_aux's
            ContentShuffleDetector used by StyleMaster). Deterministic (fixed seed).
        shuffle_grid: tiles per side for ``"tiles"``; for ``"flow"``, the warp's control-grid size.
        token_keep_ratio: fraction of patch tokens kept by the StyleMaster filter (0.05 in StyleMaster).
        token_keep: ``"least_similar"`` (the paper: drop content-like patches) or ``"most_similar"`` (what
            the released code's ascending sort actually keeps).
        mean, std: per-channel normalisation of ``[0, 1]`` pixels.
    """

    backbone: str = "cnn"
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)
    stem: int = 2
    pooled_stages: tuple[int, ...] = (1, 2)
    hf_config: dict[str, Any] | None = None
    hf_class: str | None = None
    embed_dim: int = 128
    head_hidden: int = 256
    content_head: bool = False
    n_content_classes: int = 30
    shuffle: str | None = None
    shuffle_grid: int = 4
    token_keep_ratio: float = 0.05
    token_keep: str = "least_similar"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        self.pooled_stages = tuple(int(s) for s in self.pooled_stages)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone == "hf" and (self.hf_config is None or self.hf_class is None):
            raise ValueError("backbone='hf' needs hf_config (config.to_dict()) and hf_class")
        if not 8 <= int(self.image_size) <= 1024:
            raise ValueError(f"image_size: expected 8..1024, got {self.image_size}")
        if self.backbone == "cnn":
            if not self.widths or min(self.widths) < 1:
                raise ValueError(f"widths: expected positive stage widths, got {self.widths}")
            if not self.pooled_stages or not all(0 <= s < len(self.widths) for s in self.pooled_stages):
                raise ValueError(
                    f"pooled_stages: expected indices in [0, {len(self.widths)}), got {self.pooled_stages}"
                )
            if self.stem not in (2, 4):
                raise ValueError(f"stem: expected 2 or 4, got {self.stem}")
            factor = self.stem * 2 ** (len(self.widths) - 1)
            if self.image_size % factor:
                raise ValueError(
                    f"image_size: expected a multiple of the CNN's stride {factor}, got {self.image_size}"
                )
        if self.embed_dim < 1 or self.head_hidden < 0 or self.n_content_classes < 2:
            raise ValueError("embed_dim >= 1, head_hidden >= 0 and n_content_classes >= 2 are required")
        if self.shuffle not in SHUFFLES:
            raise ValueError(f"shuffle: expected one of {SHUFFLES}, got {self.shuffle!r}")
        if self.shuffle_grid < 2:
            raise ValueError(f"shuffle_grid: expected >= 2, got {self.shuffle_grid}")
        if not 0.0 < self.token_keep_ratio <= 1.0:
            raise ValueError(f"token_keep_ratio: expected a fraction in (0, 1], got {self.token_keep_ratio}")
        if self.token_keep not in KEEP:
            raise ValueError(f"token_keep: expected one of {KEEP}, got {self.token_keep!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std: expected 3 values each, std > 0")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExtractorConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ExtractorConfig: unknown keys {unknown}")
        return cls(**data)

    def config_hash(self) -> str:
        """sha256 (16 hex digits) of the canonical JSON of the configuration: the architecture's identity."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]
