"""Loading and normalising input images, with clear errors before any model work.

Conversions (documented in docs/image.md):
- RGBA / LA / P-with-transparency are composited on white; P, L, CMYK, YCbCr become RGB.
- 16-bit and 32-bit modes (I;16, I, F) are rescaled to 8 bits from their actual value range.
- Arrays: HxW, HxWx1/3/4; uint8 in [0, 255], floats in [0, 1]. Tensors: CxHxW or HxW, floats in [0, 1].
- Images whose longer side exceeds ``MAX_INPUT_SIDE`` are downscaled (LANCZOS) with a warning.
- Pipelines then resize to the output size (a multiple of the model factor), cover + centre-crop.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stylekit.conditioning import ImageLike

MAX_INPUT_SIDE = 4096


class InputImageError(ValueError):
    """An input image is missing, unreadable, empty or of an unsupported type."""


FLOAT_SLACK = 1e-2
"""How far outside [0, 1] a float image may stray (rounding) before it is refused rather than clipped."""


def unit_range_problem(low: float, high: float) -> str | None:
    """Why float pixels spanning ``[low, high]`` are not in [0, 1] (``"[0, 1], got [...]"`` and a hint for
    0..255 values), or None when they are (within ``FLOAT_SLACK``)."""
    if low >= -FLOAT_SLACK and high <= 1.0 + FLOAT_SLACK:
        return None
    hint = " (values 0..255? divide by 255 or pass uint8)" if high > 2.0 else ""
    return f"[0, 1], got [{low:.4g}, {high:.4g}]{hint}"


def _from_array(array: np.ndarray, argument: str) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputImageError(
            f"{argument}: expected an HxW, HxWx{{1,3,4}} or {{1,3,4}}xHxW array, got shape {array.shape}"
        )
    if 0 in array.shape:
        raise InputImageError(f"{argument}: the image is empty (shape {array.shape})")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all():
                raise InputImageError(f"{argument}: the array contains NaN or infinite values")
            problem = unit_range_problem(float(array.min()), float(array.max()))
            if problem is not None:
                raise InputImageError(f"{argument}: a float image must hold values in {problem}")
            array = np.clip(array, 0.0, 1.0) * 255.0
        elif np.issubdtype(array.dtype, np.integer) and array.max(initial=0) > 255:
            array = array.astype(np.float64) / max(float(array.max()), 1.0) * 255.0
        array = np.round(array).astype(np.uint8)
    return Image.fromarray(array)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(np.round((array - low) * scale).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(source: ImageLike, argument: str = "image") -> Image.Image:
    """Load and validate one image as an 8-bit RGB PIL image.

    Args:
        source: a path, a PIL image, an array (HxW[xC]) or a tensor (CxHxW or HxW, floats in [0, 1]).
        argument: the argument name used in error messages.

    Returns:
        An RGB ``PIL.Image.Image`` (downscaled if its longer side exceeds ``MAX_INPUT_SIDE``).

    Raises:
        InputImageError: missing file, not an image, truncated, empty, or unsupported type.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise InputImageError(f"{argument}: file not found: {path}")
        if path.is_dir():
            raise InputImageError(f"{argument}: expected an image file, got a folder: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                image = opened.copy()
        except UnidentifiedImageError as error:
            raise InputImageError(f"{argument}: not an image file: {path}") from error
        except (OSError, SyntaxError, ValueError) as error:
            raise InputImageError(
                f"{argument}: the image file is truncated or corrupt: {path} ({error})"
            ) from error
    elif isinstance(source, Image.Image):
        image = source
    elif isinstance(source, torch.Tensor):
        array = source.detach().cpu().float().numpy()
        if array.ndim == 3:
            array = np.moveaxis(array, 0, -1)
        image = _from_array(array, argument)
    elif isinstance(source, np.ndarray):
        image = _from_array(source, argument)
    else:
        raise InputImageError(
            f"{argument}: expected a path, PIL image, numpy array or tensor, got {type(source).__name__}"
        )
    if image.width == 0 or image.height == 0:
        raise InputImageError(f"{argument}: the image is empty ({image.width}x{image.height})")
    image = _to_rgb(image)
    if max(image.size) > MAX_INPUT_SIDE:
        warnings.warn(
            f"{argument}: {image.width}x{image.height} exceeds the {MAX_INPUT_SIDE}px limit; downscaled",
            stacklevel=2,
        )
        image = image.copy()
        image.thumbnail((MAX_INPUT_SIDE, MAX_INPUT_SIDE), Image.Resampling.LANCZOS)
    return image


def fit_to_size(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover ``width`` x ``height`` (LANCZOS, aspect kept) and centre-crop to exactly that size."""
    scale = max(width / image.width, height / image.height)
    resized = image.resize(
        (max(width, round(image.width * scale)), max(height, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    left = (resized.width - width) // 2
    top = (resized.height - height) // 2
    return resized.crop((left, top, left + width, top + height))


def round_to_factor(value: int, factor: int, argument: str) -> int:
    """Round a size down to a multiple of ``factor`` (with a warning if it changed); >= factor."""
    if value < factor:
        raise ValueError(f"{argument}: expected at least {factor} pixels, got {value}")
    rounded = value - value % factor
    if rounded != value:
        warnings.warn(f"{argument}={value} is not a multiple of {factor}; using {rounded}", stacklevel=2)
    return rounded


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32 tensor in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
