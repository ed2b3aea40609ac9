"""``StyleExtractor``: backbone + style head (+ content head behind gradient reversal), CSD-style."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from stylekit.files import atomic_path

from .backbones import HFBackbone, StyleCNN, build_hf_model
from .config import CLIP_MEAN, CLIP_STD, ExtractorConfig
from .ops import content_shuffle, grad_reverse, select_tokens, subtract_content

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "stylekit-style-extractor"


class ExtractorCheckpointError(ValueError):
    """A checkpoint does not fit this extractor (other architecture, missing or unexpected weights)."""


@dataclass
class ExtractorOutput:
    """What :meth:`StyleExtractor.forward` returns.

    Attributes:
        embedding: ``(B, D)`` L2-normalised global style embedding.
        tokens: ``(B, N, D)`` local style tokens (one per backbone patch, not normalised).
        features: ``(B, F)`` the backbone's pooled feature (from the content-shuffled copy if configured).
        content_logits: ``(B, n_content_classes)`` from the content head (behind gradient reversal) or None.
    """

    embedding: torch.Tensor
    tokens: torch.Tensor
    features: torch.Tensor
    content_logits: torch.Tensor | None


def _mlp(cin: int, hidden: int, cout: int) -> nn.Module:
    if hidden == 0:
        return nn.Sequential(nn.LayerNorm(cin), nn.Linear(cin, cout))
    return nn.Sequential(nn.LayerNorm(cin), nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, cout))


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as temp:
        write(str(temp))


def _unit_pixels(batch: torch.Tensor) -> torch.Tensor:
    """A batch of pixels as floats in [0, 1]: uint8 divided by 255; floats checked, as single images are
    (finite, in [0, 1]: :func:`stylekit.images.unit_range_problem`); a ValueError otherwise."""
    from stylekit.images import unit_range_problem

    if batch.dtype == torch.uint8:
        return batch.float() / 255.0
    if not batch.is_floating_point():
        raise ValueError(f"images: expected uint8 or float pixels, got {batch.dtype}")
    batch = batch.float()
    if not torch.isfinite(batch).all():
        raise ValueError("images: the batch contains NaN or infinite values")
    problem = unit_range_problem(float(batch.min()), float(batch.max()))
    if problem is not None:
        raise ValueError(f"images: float pixels must be in {problem}")
    return batch.clamp(0.0, 1.0)


class StyleExtractor(nn.Module):
    """A contrastive style encoder (CSD layout): backbone -> style head (global embedding) and token head
    (local style tokens), plus an optional content head behind a gradient-reversal layer.

    Build one from a config (``StyleExtractor(ExtractorConfig())`` = the world CNN), from any transformers
    vision model (:meth:`from_vision_model`), or load one (:meth:`from_pretrained`, :func:`load_default`).
    Images go in as pixels in ``[0, 1]``; :meth:`embed` accepts anything :func:`stylekit.images.load_image`
    does.
    """

    def __init__(self, config: ExtractorConfig | None = None, backbone: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config = config or ExtractorConfig()
        if config.backbone == "cnn":
            self.backbone: nn.Module = StyleCNN(config.widths, config.pooled_stages, config.stem)
        else:
            self.backbone = HFBackbone(backbone if backbone is not None else build_hf_model(config))
        fdim, tdim = self.backbone.feature_dim, self.backbone.token_dim
        self.style_head = _mlp(fdim, config.head_hidden, config.embed_dim)
        self.token_head = nn.Sequential(nn.LayerNorm(tdim), nn.Linear(tdim, config.embed_dim))
        self.content_head = (
            _mlp(config.embed_dim, config.head_hidden, config.n_content_classes)
            if config.content_head
            else None
        )
        self.grl_alpha = 1.0
        self.register_buffer("_mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    # ----------------------------------------------------------------------------------------- building
    @classmethod
    def from_vision_model(
        cls, model: nn.Module, embed_dim: int = 768, head_hidden: int = 0, **options: Any
    ) -> StyleExtractor:
        """Wrap a transformers vision model (e.g. ``CLIPVisionModelWithProjection.from_pretrained(...)``).

        The model's weights are kept (not re-initialised); heads are new. CLIP normalisation and the model's
        ``image_size`` are used unless ``options`` say otherwise. CSD's layout is ``head_hidden=0`` (a linear
        style head like CLIP's ``proj``) and ``embed_dim=768``.
        """
        hf_config = model.config
        options.setdefault("image_size", int(getattr(hf_config, "image_size", 224)))
        options.setdefault("mean", CLIP_MEAN)
        options.setdefault("std", CLIP_STD)
        if getattr(model, "pooler", False) is None:  # e.g. ViTModel(config, add_pooling_layer=False)
            options.setdefault("extra", {})["hf_init_kwargs"] = {"add_pooling_layer": False}
        config = ExtractorConfig(
            backbone="hf",
            hf_config=hf_config.to_dict(),
            hf_class=type(model).__name__,
            embed_dim=embed_dim,
            head_hidden=head_hidden,
            **options,
        )
        return cls(config, backbone=model)

    @property
    def embed_dim(self) -> int:
        """Size of the style embedding and of the style tokens."""
        return self.config.embed_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------------------------------ forward
    def normalize(self, pixels: torch.Tensor, resize: bool = True) -> torch.Tensor:
        """``(B, 3, H, W)`` in ``[0, 1]`` -> normalised, resized to ``image_size`` if needed and ``resize``."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"pixels: expected (B, 3, H, W) in [0, 1], got shape {tuple(pixels.shape)}")
        size = self.config.image_size
        if resize and pixels.shape[-2:] != (size, size):
            pixels = F.interpolate(
                pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return (pixels - self._mean) / self._std

    def forward(self, pixels: torch.Tensor, resize: bool = True) -> ExtractorOutput:
        """Embed a batch.

        Args:
            pixels: ``(B, 3, H, W)`` float in ``[0, 1]``.
            resize: resize to ``image_size`` first (training on crops of the CNN passes False: the CNN
                takes any multiple of its stride, and resizing would change stroke widths and texture periods).

        Returns:
            :class:`ExtractorOutput`; the global branch sees the content-shuffled copy when
            ``config.shuffle`` is set, the tokens always come from the image itself.
        """
        x = self.normalize(pixels, resize)
        pooled, patches = self.backbone(x)
        if self.config.shuffle is not None:
            shuffled = content_shuffle(x, self.config.shuffle, self.config.shuffle_grid)
            pooled, _ = self.backbone(shuffled)
        raw = self.style_head(pooled)
        embedding = F.normalize(raw, dim=-1)
        content_logits = None
        if self.content_head is not None:
            content_logits = self.content_head(grad_reverse(embedding, self.grl_alpha))
        return ExtractorOutput(embedding, self.token_head(patches), pooled, content_logits)

    def style_tokens(
        self,
        pixels: torch.Tensor,
        text_embeds: torch.Tensor | None = None,
        keep_ratio: float | None = None,
        keep: str | None = None,
    ) -> torch.Tensor:
        """StyleMaster local texture tokens: patch tokens filtered by similarity to the prompt.

        Args:
            pixels: ``(B, 3, H, W)`` in ``[0, 1]``.
            text_embeds: the prompt's embedding, ``(E,)`` or ``(B, E)``, in the space the patches are compared
                in: CLIP's joint image-text space when the backbone has a ``visual_projection`` (compute it with
                :func:`~stylekit.extractors.clip_text_embeddings` on the matching CLIP text tower), else the
                style-token space (``E = embed_dim``). None keeps every token.
            keep_ratio, keep: override ``config.token_keep_ratio`` / ``config.token_keep``
                (``"least_similar"``: the paper; ``"most_similar"``: the released code's behaviour).

        Returns:
            ``(B, k, embed_dim)`` tokens, ``k = ceil(N * keep_ratio)`` (all ``N`` when ``text_embeds`` is None).
        """
        x = self.normalize(pixels)
        _, patches = self.backbone(x)
        tokens = self.token_head(patches)
        if text_embeds is None:
            return tokens
        joint = getattr(self.backbone, "joint_dim", None)
        keys = self.backbone.joint(patches) if joint is not None else tokens
        return select_tokens(
            tokens,
            keys,
            text_embeds.to(tokens.device),
            self.config.token_keep_ratio if keep_ratio is None else keep_ratio,
            self.config.token_keep if keep is None else keep,
        )[0]

    def clip_image_embeddings(
        self, pixels: torch.Tensor, content_text_embeds: torch.Tensor | None = None, scale: float = 0.5
    ) -> torch.Tensor:
        """CLIP joint-space image embeddings ``(B, E)``, optionally minus ``scale`` x a content prompt's text
        embedding (InstantStyle). Needs a backbone with ``visual_projection``."""
        if getattr(self.backbone, "joint_dim", None) is None:
            raise ValueError("clip_image_embeddings needs an 'hf' backbone with a visual_projection (CLIP)")
        pooled, _ = self.backbone(self.normalize(pixels))
        embeds = self.backbone.model.visual_projection(pooled)
        return embeds if content_text_embeds is None else subtract_content(embeds, content_text_embeds, scale)

    # ------------------------------------------------------------------------------------ batched embed
    def prepare_images(self, images: Any) -> torch.Tensor:
        """Images -> ``(B, 3, S, S)`` float in ``[0, 1]`` at ``image_size``.

        Accepts a ``(B, H, W, 3)`` uint8 array (e.g. ``WorldSample.images``), a ``(B, 3, H, W)`` float tensor
        in ``[0, 1]``, or a sequence of anything :func:`stylekit.images.load_image` accepts (paths, PIL images
        of any mode, arrays, tensors); those are converted to RGB (conversions in docs/image.md), resized to
        cover ``image_size`` and centre-cropped.
        """
        size = self.config.image_size
        batch = None
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[-1] == 3:
            batch = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        elif isinstance(images, torch.Tensor) and images.ndim == 4:
            if images.shape[1] != 3:
                raise ValueError(
                    f"images: expected a (B, 3, H, W) tensor in [0, 1], got {tuple(images.shape)}"
                )
            batch = images.detach()
        if batch is not None:
            batch = _unit_pixels(batch)
            if batch.shape[-1] == batch.shape[-2]:  # square: resized in forward(), as cover + crop would
                return batch
            images = list(batch.permute(0, 2, 3, 1).cpu().numpy())  # cover + centre crop, one by one
        from stylekit.images import fit_to_size, load_image

        if not isinstance(images, Sequence) or isinstance(images, str):
            images = [images]
        arrays = [
            np.asarray(fit_to_size(load_image(image, f"images[{i}]"), size, size), dtype=np.float32)
            for i, image in enumerate(images)
        ]
        if not arrays:
            raise ValueError("images: expected at least one image")
        return torch.from_numpy(np.stack(arrays) / 255.0).permute(0, 3, 1, 2).float()

    @torch.no_grad()
    def embed(
        self,
        images: Any,
        batch_size: int = 256,
        progress: bool | None = None,
        return_tokens: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Global style embeddings of many images, batched, deterministic (eval mode, no randomness).

        Args:
            images: see :meth:`prepare_images`.
            batch_size: images per forward pass.
            progress: show a tqdm bar (default: when there are more than 4 batches).
            return_tokens: also return the local style tokens.

        Returns:
            ``(N, D)`` float32 CPU tensor of L2-normalised embeddings (and ``(N, T, D)`` tokens).
        """
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        try:
            pixels = self.prepare_images(images)
            n = pixels.shape[0]
            starts = range(0, n, batch_size)
            show = progress if progress is not None else n > 4 * batch_size
            embeddings, tokens = [], []
            for start in tqdm(starts, desc="style embeddings", disable=not show, unit="batch"):
                out = self(pixels[start : start + batch_size].to(self.device))
                embeddings.append(out.embedding.float().cpu())
                if return_tokens:
                    tokens.append(out.tokens.float().cpu())
        finally:
            self.train(was_training)
        emb = torch.cat(embeddings)
        return (emb, torch.cat(tokens)) if return_tokens else emb

    # ------------------------------------------------------------------------------------- identity, IO
    def config_hash(self) -> str:
        """Hash of the architecture (:meth:`ExtractorConfig.config_hash`)."""
        return self.config.config_hash()

    def weights_hash(self) -> str:
        """sha256 (16 hex digits) of the weights (names, shapes, dtypes and bytes, in name order)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()[:16]

    def identity(self) -> str:
        """``"<config hash>-<weights hash>"``: what embeddings are stamped with."""
        return f"{self.config_hash()}-{self.weights_hash()}"

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` (atomically) into ``directory``; returns it."""
        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "config_hash": self.config_hash(), "identity": self.identity()}
        _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, p, metadata=meta))
        text = json.dumps({**self.config.to_dict(), "_identity": meta["identity"]}, indent=2, sort_keys=True)
        _atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(text + "\n"))
        return directory

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, device: str | torch.device | None = None
    ) -> StyleExtractor:
        """Load an extractor saved by :meth:`save_pretrained` (a folder, or its ``model.safetensors``)."""
        path = Path(path)
        folder = path.parent if path.is_file() else path
        config_file = folder / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {folder}: not a saved StyleExtractor")
        data = json.loads(config_file.read_text())
        data.pop("_identity", None)
        model = cls(ExtractorConfig.from_dict(data))
        model.load_weights(folder / WEIGHTS_NAME)
        model.eval()
        return model.to(device) if device is not None else model

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a ``model.safetensors`` written by :meth:`save_pretrained` (never a pickle).

        Raises:
            ExtractorCheckpointError: a missing/unexpected weight or a shape mismatch, naming the weight and
                both shapes (checkpoint and this extractor) and both architecture hashes.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"extractor weights not found: {path}")
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            state = {k: handle.get_tensor(k) for k in handle.keys()}
        self.load_state_dict_checked(state, source=str(path), source_hash=meta.get("config_hash", "unknown"))

    def load_state_dict_checked(
        self, state: dict[str, torch.Tensor], source: str = "checkpoint", source_hash: str = "unknown"
    ) -> None:
        """``load_state_dict`` that explains a mismatch (see :meth:`load_weights`)."""
        own = self.state_dict()
        where = f"{source} (architecture {source_hash}) does not fit this extractor (architecture {self.config_hash()})"
        for name, tensor in own.items():
            if name not in state:
                raise ExtractorCheckpointError(f"{where}: weight {name!r} {tuple(tensor.shape)} is missing")
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise ExtractorCheckpointError(
                    f"{where}: weight {name!r} has shape {tuple(state[name].shape)} in the checkpoint but "
                    f"{tuple(tensor.shape)} in this extractor"
                )
        unexpected = sorted(set(state) - set(own))
        if unexpected:
            raise ExtractorCheckpointError(f"{where}: unexpected weights {unexpected[:5]}")
        self.load_state_dict(state)
