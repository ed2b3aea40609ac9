"""Masks from Segment Anything (the ``segment-anything`` package) and their propagation through a video.

``SamMasker`` wraps ``SamPredictor``: the image embedding (the expensive ViT pass) is computed once per
image and reused for every prompt on it (points, boxes, automatic masks); ``encoder_passes`` counts the
passes that really ran. Weights come from a local checkpoint (``checkpoint=`` or the environment
variable ``STYLEKIT_SAM_CHECKPOINT``); stylekit never downloads them. ``propagate_masks`` carries a
region through a clip by re-prompting SAM on every frame from the previous frame's mask.

Coordinates are pixels of the image as given: points ``(x, y)``, boxes ``(x0, y0, x1, y1)``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from stylekit.conditioning import ImageLike
from stylekit.files import atomic_path
from stylekit.images import load_image

CHECKPOINT_ENV = "STYLEKIT_SAM_CHECKPOINT"
SAM_KINDS = ("vit_b", "vit_l", "vit_h")
CHECKPOINT_FILES = {
    "vit_h": "sam_vit_h_4b8939.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_b": "sam_vit_b_01ec64.pth",
}
INSTALL_HINT = "pip install 'stylekit[sam]'  (or: pip install segment-anything torchvision)"


def _segment_anything() -> Any:
    """Import ``segment_anything`` or raise an ImportError that says what to install."""
    try:
        import segment_anything
    except ImportError as error:
        raise ImportError(
            f"Segment Anything masks need the segment-anything package: {INSTALL_HINT}"
        ) from error
    return segment_anything


def build_tiny_sam(seed: int = 0, image_size: int = 64) -> Any:
    """A random-weight ``Sam`` with SAM's real components at toy size (for tests and timing; no download).

    ViT encoder (patch 16, 32 dims, depth 2), prompt encoder and two-way-transformer mask decoder with 32
    dims; ``image_size`` (a multiple of 16) is the encoder's input side.
    """
    if image_size % 16 or image_size < 32:
        raise ValueError(f"image_size: expected a multiple of 16 >= 32, got {image_size}")
    _segment_anything()  # a clear error when the package is missing
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = image_size // 16
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=image_size,
                patch_size=16,
                embed_dim=32,
                depth=2,
                num_heads=2,
                out_chans=32,
                use_rel_pos=True,
                window_size=0,
                global_attn_indexes=(1,),
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=32,
                image_embedding_size=(grid, grid),
                input_image_size=(image_size, image_size),
                mask_in_chans=4,
            ),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
                transformer_dim=32,
                iou_head_depth=2,
                iou_head_hidden_dim=32,
            ),
        )
    return sam.eval()


def _kind_from_name(path: Path) -> str | None:
    found = [kind for kind in SAM_KINDS if kind in path.name]
    return found[0] if len(found) == 1 else None


UNREADABLE_CHECKPOINT = (
    OSError,
    RuntimeError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    pickle.UnpicklingError,
    SafetensorError,
)
"""What torch.load / safetensors raise on a truncated or foreign file."""


def load_sam(
    checkpoint: str | Path | None = None, kind: str | None = None, device: str | torch.device | None = None
) -> Any:
    """Build ``sam_model_registry[kind]`` and load a local checkpoint into it.

    Args:
        checkpoint: a ``.pth`` (loaded with ``torch.load(weights_only=True)``: tensors only, nothing
            unpickled) or ``.safetensors`` file; None = the path in ``$STYLEKIT_SAM_CHECKPOINT``.
        kind: ``vit_b``, ``vit_l`` or ``vit_h``; None = read from the file name (the official names
            contain it).
        device: where to put the model (default CPU).

    Raises:
        ImportError (package missing), FileNotFoundError (no checkpoint), ValueError (unknown kind or a
        checkpoint that does not fit the kind) — all before any weights are read.
    """
    if kind is not None and kind not in SAM_KINDS:
        raise ValueError(f"kind: expected one of {SAM_KINDS}, got {kind!r}")
    sa = _segment_anything()
    if checkpoint is None:
        checkpoint = os.environ.get(CHECKPOINT_ENV) or None
    if checkpoint is None:
        names = ", ".join(CHECKPOINT_FILES.values())
        raise FileNotFoundError(
            f"no Segment Anything checkpoint: pass checkpoint=PATH or set {CHECKPOINT_ENV}=PATH to a local file "
            f"({names}, linked from the segment-anything README); stylekit never downloads weights"
        )
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Segment Anything checkpoint not found: {path} (put the file there, or point checkpoint= / "
            f"{CHECKPOINT_ENV} at it; official names: {', '.join(CHECKPOINT_FILES.values())})"
        )
    kind = kind or _kind_from_name(path)
    if kind is None:
        raise ValueError(
            f"kind: cannot tell vit_b / vit_l / vit_h from the file name {path.name!r}; pass kind="
        )
    sam = sa.sam_model_registry[kind](checkpoint=None)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE_CHECKPOINT as error:  # a truncated / foreign file
        raise ValueError(
            f"checkpoint {path}: not a readable SAM checkpoint ({type(error).__name__}: {error})"
        ) from error
    try:
        sam.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path.name} does not fit a {kind} SAM (wrong kind=?): {error}"
        ) from error
    return sam.to(device or "cpu").eval()


@dataclass(frozen=True)
class Prompt:
    """One SAM prompt: positive/negative points ``(x, y)`` and/or a box ``(x0, y0, x1, y1)``, in pixels."""

    points: tuple[tuple[float, float], ...] = ()
    negative_points: tuple[tuple[float, float], ...] = ()
    box: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("points", "negative_points"):
            value = np.asarray(getattr(self, name), dtype=np.float64)
            if value.size == 0:
                object.__setattr__(self, name, ())
                continue
            if value.ndim != 2 or value.shape[1] != 2 or not np.isfinite(value).all():
                raise ValueError(f"Prompt.{name}: expected finite (x, y) pairs, got shape {value.shape}")
            object.__setattr__(self, name, tuple(map(tuple, value.tolist())))
        if self.box is not None:
            box = tuple(float(v) for v in self.box)
            if len(box) != 4 or not box[0] < box[2] or not box[1] < box[3]:
                raise ValueError(
                    f"Prompt.box: expected (x0, y0, x1, y1) with x0 < x1 and y0 < y1, got {self.box!r}"
                )
            object.__setattr__(self, "box", box)
        if not self.points and self.box is None:
            raise ValueError("Prompt: expected at least one positive point or a box")

    def check_inside(self, height: int, width: int) -> None:
        """Raise ValueError if a point or the box lies outside a ``height`` x ``width`` image."""
        for x, y in (*self.points, *self.negative_points):
            if not (0 <= x <= width and 0 <= y <= height):
                raise ValueError(f"prompt point ({x}, {y}) is outside the {width}x{height} image")
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                raise ValueError(f"prompt box {self.box} does not overlap the {width}x{height} image")

    @property
    def ambiguous(self) -> bool:
        """A lone point: SAM's three-mask output (best by predicted IoU) is the better choice."""
        return self.box is None and len(self.points) + len(self.negative_points) == 1


def _as_rgb_uint8(image: ImageLike | np.ndarray) -> np.ndarray:
    """Any image input -> (H, W, 3) uint8 RGB (``stylekit.images.load_image`` conversions)."""
    return np.asarray(load_image(image, "image"), dtype=np.uint8)


def _caching_predictor(model: Any) -> Any:
    """A ``SamPredictor`` that keeps the embedding of the last image and skips the encoder when the same
    image is set again (the automatic mask generator resets and re-sets the image on every call)."""
    sa = _segment_anything()

    class CachingSamPredictor(sa.SamPredictor):
        def __init__(self, sam: Any) -> None:
            self._cached: tuple[str, torch.Tensor, tuple, tuple] | None = None
            super().__init__(sam)

        @torch.no_grad()
        def set_torch_image(self, transformed_image: torch.Tensor, original_image_size: tuple) -> None:
            digest = hashlib.sha256(transformed_image.detach().cpu().numpy().tobytes()).hexdigest()
            key = f"{digest}:{tuple(original_image_size)}"
            if self._cached is not None and self._cached[0] == key:
                self.reset_image()
                _, self.features, self.original_size, self.input_size = self._cached
                self.is_image_set = True
                return
            super().set_torch_image(transformed_image, original_image_size)
            self._cached = (key, self.features, self.original_size, self.input_size)

    return CachingSamPredictor(model)


class SamMasker:
    """Segment Anything masks with one image-encoder pass per image.

    Args:
        model: a built ``segment_anything.modeling.Sam`` (e.g. ``build_tiny_sam()``); None = ``load_sam``
            with ``checkpoint`` / ``kind``.
        checkpoint, kind: see ``load_sam`` (used only when ``model`` is None).
        device: where to run (default: the model's device).

    ``encoder_passes`` counts image-encoder forward passes (a hook on the encoder, so it is exact).
    """

    def __init__(
        self,
        model: Any = None,
        *,
        checkpoint: str | Path | None = None,
        kind: str | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        sa = _segment_anything()
        if model is None:
            model = load_sam(checkpoint, kind, device)
        elif not isinstance(model, sa.modeling.Sam):
            raise TypeError(f"model: expected a segment_anything Sam, got {type(model).__name__}")
        if device is not None:
            model = model.to(device)
        self.model = model.eval()
        self.predictor = _caching_predictor(self.model)
        self.encoder_passes = 0

        def count(module: Any, args: Any) -> None:
            self.encoder_passes += 1

        self.model.image_encoder.register_forward_pre_hook(count)

    def set_image(self, image: ImageLike | np.ndarray) -> np.ndarray:
        """Embed ``image`` (skipped when it is the image already set); returns it as (H, W, 3) uint8."""
        array = _as_rgb_uint8(image)
        self.predictor.set_image(array)
        return array

    def predict(
        self,
        image: ImageLike | np.ndarray,
        points: Sequence[Sequence[float]] = (),
        negative_points: Sequence[Sequence[float]] = (),
        box: Sequence[float] | None = None,
    ) -> np.ndarray:
        """One mask for one prompt: bool (H, W) at the image's size."""
        prompt = Prompt(
            tuple(map(tuple, points)),
            tuple(map(tuple, negative_points)),
            tuple(float(v) for v in box) if box is not None else None,
        )
        return self.predict_many(image, [prompt])[0]

    def predict_many(
        self, image: ImageLike | np.ndarray, prompts: Sequence[Prompt], return_scores: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Masks for several prompts on one image, one encoder pass in all.

        Returns:
            bool (N, H, W) masks (for a lone point the best of SAM's three by predicted IoU), and with
            ``return_scores`` also float32 (N,) predicted IoUs.
        """
        prompts = list(prompts)
        if not prompts or not all(isinstance(p, Prompt) for p in prompts):
            raise ValueError("prompts: expected a non-empty list of stylekit.segment.Prompt")
        array = _as_rgb_uint8(image)
        height, width = array.shape[:2]
        for prompt in prompts:
            prompt.check_inside(height, width)
        self.predictor.set_image(array)
        masks, scores = [], []
        for prompt in prompts:
            coords = np.array([*prompt.points, *prompt.negative_points], dtype=np.float32).reshape(-1, 2)
            labels = np.array([1] * len(prompt.points) + [0] * len(prompt.negative_points), dtype=np.int64)
            candidates, iou, _ = self.predictor.predict(
                point_coords=coords if len(coords) else None,
                point_labels=labels if len(coords) else None,
                box=np.array(prompt.box, dtype=np.float32) if prompt.box is not None else None,
                multimask_output=prompt.ambiguous,
            )
            best = int(np.argmax(iou))
            masks.append(candidates[best].astype(bool))
            scores.append(float(iou[best]))
        out = np.stack(masks)
        return (out, np.asarray(scores, dtype=np.float32)) if return_scores else out

    def automatic(self, image: ImageLike | np.ndarray, **generator_kwargs: Any) -> list[dict[str, Any]]:
        """``SamAutomaticMaskGenerator(model, **generator_kwargs).generate`` sharing this masker's cached
        embedding; records (``segmentation`` bool (H, W), ``area``, ``bbox`` XYWH, ``predicted_iou``, ...)
        sorted by area, largest first."""
        sa = _segment_anything()
        generator = sa.SamAutomaticMaskGenerator(self.model, **generator_kwargs)
        generator.predictor = self.predictor
        records = generator.generate(_as_rgb_uint8(image))
        return sorted(records, key=lambda r: -int(r["area"]))


# --------------------------------------------------------------------------------------------------
# video: propagation


class Masker(Protocol):
    """Anything that turns a prompt on an image into a mask (``SamMasker`` is one)."""

    def predict_many(self, image: Any, prompts: Sequence[Prompt]) -> np.ndarray: ...


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """The box ``(x0, y0, x1, y1)`` (pixel edges) around a bool (H, W) mask; None if it is empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def interior_point(mask: np.ndarray) -> tuple[float, float] | None:
    """The pixel centre ``(x, y)`` deepest inside a bool (H, W) mask (last survivor of repeated 3x3
    erosion, nearest the centroid); None if the mask is empty."""
    current = torch.from_numpy(np.ascontiguousarray(mask)).float()[None, None]
    if not bool(current.any()):
        return None
    while True:
        eroded = -F.max_pool2d(-current, 3, stride=1, padding=1)
        if not bool(eroded.any()):
            break
        current = eroded
    ys, xs = np.nonzero(current[0, 0].numpy())
    cy, cx = ys.mean(), xs.mean()
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return float(xs[nearest]) + 0.5, float(ys[nearest]) + 0.5


def warp_mask(mask: np.ndarray, flow: np.ndarray, samples: int = 3) -> np.ndarray:
    """Carry a bool (H, W) mask to the next frame along forward flow (H, W, 2) ``(dx, dy)`` in pixels
    (the ``stylekit.data.video`` convention): each mask pixel is split into ``samples`` x ``samples``
    sub-pixel points moved by the pixel's flow; a pixel is set when at least half a pixel's worth of
    points lands in it (area-preserving, no holes under rotation)."""
    height, width = mask.shape
    ys, xs = np.nonzero(mask)
    offsets = (np.arange(samples) + 0.5) / samples
    coverage = np.zeros((height, width), dtype=np.float64)
    for oy in offsets:
        for ox in offsets:
            tx = np.floor(xs + ox + flow[ys, xs, 0]).astype(np.int64)
            ty = np.floor(ys + oy + flow[ys, xs, 1]).astype(np.int64)
            keep = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
            np.add.at(coverage, (ty[keep], tx[keep]), 1.0)
    return coverage >= samples * samples / 2


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def propagate_masks(
    frames: np.ndarray | Sequence[ImageLike],
    first_mask: np.ndarray,
    masker: Masker,
    flow: np.ndarray | None = None,
    min_iou: float = 0.3,
    return_fallbacks: bool = False,
) -> np.ndarray | tuple[np.ndarray, list[bool]]:
    """Carry a region through a clip: one mask per frame, the region keeping its identity.

    For each frame ``t >= 1`` the expected mask is the previous frame's mask, warped along ``flow[t-1]``
    when the forward flow is given. SAM is prompted on frame ``t`` with the expected mask's box and its
    deepest interior point. Fallback: when SAM's mask is empty or has IoU < ``min_iou`` with the expected
    mask (SAM jumped to another object or the background), the expected mask is kept instead.

    Args:
        frames: (F, H, W, 3) uint8 frames or a list of images of one size.
        first_mask: the region in frame 0, any 2-D mask ``stylekit.regions.mask_array`` reads, at the
            frames' size.
        masker: e.g. a ``SamMasker``.
        flow: optional (F-1, H, W, 2) forward flow in pixels.
        min_iou: the acceptance threshold in [0, 1].
        return_fallbacks: also return, per frame, whether the fallback was used.

    Returns:
        bool (F, H, W) masks (frame 0 is ``first_mask``), and with ``return_fallbacks`` the list of flags.
    """
    from stylekit.regions import mask_array

    frames = [_as_rgb_uint8(f) for f in frames]
    if not frames:
        raise ValueError("frames: expected at least one frame")
    height, width = frames[0].shape[:2]
    if any(f.shape[:2] != (height, width) for f in frames):
        raise ValueError("frames: expected frames of one size")
    if not 0.0 <= min_iou <= 1.0:
        raise ValueError(f"min_iou: expected a number in [0, 1], got {min_iou}")
    first = mask_array(first_mask, argument="first_mask")
    if first.shape != (height, width):
        raise ValueError(
            f"first_mask: expected shape {(height, width)} (the frames' size), got {first.shape}"
        )
    if flow is not None and tuple(flow.shape) != (len(frames) - 1, height, width, 2):
        raise ValueError(
            f"flow: expected shape {(len(frames) - 1, height, width, 2)} for {len(frames)} frames, got {flow.shape}"
        )
    masks, fallbacks = [first], [False]
    for t in range(1, len(frames)):
        expected = warp_mask(masks[-1], flow[t - 1]) if flow is not None else masks[-1]
        box, point = mask_box(expected), interior_point(expected)
        if box is None or point is None:
            masks.append(expected)
            fallbacks.append(True)
            continue
        found = np.asarray(masker.predict_many(frames[t], [Prompt(points=(point,), box=box)])[0], dtype=bool)
        use_fallback = not found.any() or mask_iou(found, expected) < min_iou
        masks.append(expected if use_fallback else found)
        fallbacks.append(use_fallback)
    out = np.stack(masks)
    return (out, fallbacks) if return_fallbacks else out


# --------------------------------------------------------------------------------------------------
# CLI: ``stylekit segment``


def build_parser() -> argparse.ArgumentParser:
    """Arguments of ``stylekit segment``."""
    parser = argparse.ArgumentParser(
        prog="stylekit segment",
        description="Segment Anything: an image and point/box prompts -> a mask PNG (white = region).",
    )
    parser.add_argument("image", help="the image to segment")
    parser.add_argument("-o", "--output", required=True, help="where to write the mask PNG")
    parser.add_argument(
        "--point", action="append", default=[], metavar="X,Y", help="positive point (repeatable)"
    )
    parser.add_argument(
        "--negative-point", action="append", default=[], metavar="X,Y", help="negative point (repeatable)"
    )
    parser.add_argument("--box", metavar="X0,Y0,X1,Y1", help="box prompt in pixels")
    parser.add_argument(
        "--checkpoint", help=f"SAM checkpoint (.pth/.safetensors); default ${CHECKPOINT_ENV}", default=None
    )
    parser.add_argument(
        "--kind", choices=SAM_KINDS, default=None, help="SAM size (default: from the file name)"
    )
    parser.add_argument("--device", default=None, help="cpu / cuda (default cpu)")
    parser.add_argument("--feather", type=int, default=0, help="soften the mask edge inward by N pixels")
    return parser


def _numbers(text: str, count: int, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise ValueError(f"{flag}: expected {count} comma-separated numbers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    """``stylekit segment IMAGE --point X,Y [--box X0,Y0,X1,Y1] -o mask.png``; returns the exit code."""
    from PIL import Image

    from stylekit.regions import feather_mask

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        points = [_numbers(p, 2, "--point") for p in args.point]
        negatives = [_numbers(p, 2, "--negative-point") for p in args.negative_point]
        box = _numbers(args.box, 4, "--box") if args.box else None
        if not points and box is None:
            raise ValueError("give at least one --point or a --box")
        prompt = Prompt(tuple(points), tuple(negatives), box)  # validated before the model loads
        image = load_image(args.image, "image")
        prompt.check_inside(image.height, image.width)
        masker = SamMasker(checkpoint=args.checkpoint, kind=args.kind, device=args.device)
    except (ValueError, OSError) as error:  # bad input (InputImageError is a ValueError): exit 2
        parser.error(str(error))
    mask = masker.predict_many(image, [prompt])[0]
    soft = feather_mask(torch.from_numpy(mask).float(), args.feather).numpy()
    out = Path(args.output)
    with atomic_path(out) as temp:
        Image.fromarray(np.round(soft * 255).astype(np.uint8)).save(temp, format="PNG")
    print(f"{out}: {int(mask.sum())} of {mask.size} pixels")
    return 0
