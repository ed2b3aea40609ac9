"""Regions: masks from users (images, arrays, polygons) and styling confined to them.

Masks:

- ``mask_array`` reads any mask source into a bool (H, W) array at its own size: a path or PIL image (the
  alpha channel when the image has a non-opaque one, else its luminance), an array/tensor (bool; uint8 and
  uint16 scaled by their maximum, 255 and 65535; other integers, such as numpy's default int64, by the first
  of 1, 255, 65535 that covers their values, so 0/1 and 0/255 masks both work; floats taken as they are, [0, 1]
  expected; H x W x C arrays use the mean of their first three channels). A pixel is in the region when
  its value is ``>= threshold`` (default ``MASK_THRESHOLD`` = 0.5 of the full range).
- ``Polygon``: a region drawn as ``(x, y)`` vertices.
- ``fit_mask`` brings a mask to the output size with the same geometry as the content image (resize to
  cover, centre crop: ``stylekit.images.fit_to_size``), so a mask drawn on the original content lines up.
- ``feather_mask`` softens the edge *inward* (erode by r, then box-blur by r): the soft ramp lies inside
  the region and nothing outside it changes. Parts thinner than 2r vanish.
- ``load_mask`` = the three above; ``load_masks`` gives frame-indexed masks (F, H, W) for videos.

Conditioners:

- ``RegionMask``: keeps everything outside one mask as the content by per-step latent blending with the
  content's inversion trajectory.
- ``RegionalStyle``: several styles, each in its own region of one output per content (what the StyleID
  pipelines build from ``StyleCondition.mask``). A region's style is a StyleID reference image, style tokens
  (``embedding`` / ``text``) and/or a LoRA (``lora``); ``RegionAdapters`` gives each batch row its own
  tokens and LoRA. Design in ``docs/regions.md``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from stylekit.conditioning import ConditionerBase, ImageLike, StyleCondition
from stylekit.images import fit_to_size

MASK_THRESHOLD = 0.5
"""Default binarisation threshold, as a fraction of the mask's full range."""
ASPECT_TOLERANCE = 0.02
"""A mask whose aspect ratio differs from its content image's by more than this (relative) is refused."""


@dataclass(frozen=True)
class Polygon:
    """A polygonal region.

    Attributes:
        points: ``(x, y)`` vertices (at least 3).
        size: ``(width, height)`` of the image the vertices refer to (pixels); None = the vertices are
            fractions of the output's width and height, in [0, 1].
    """

    points: tuple[tuple[float, float], ...]
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3 or not np.isfinite(points).all():
            raise ValueError(
                f"Polygon.points: expected at least 3 finite (x, y) vertices, got {self.points!r}"
            )
        object.__setattr__(self, "points", tuple(map(tuple, points.tolist())))
        if self.size is not None:
            if len(self.size) != 2 or min(int(v) for v in self.size) < 1:
                raise ValueError(f"Polygon.size: expected (width, height) >= 1, got {self.size!r}")
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def rasterize(self, height: int, width: int) -> np.ndarray:
        """bool (height, width): pixels whose centre lies inside the polygon (even-odd rule; vertices
        scaled from ``size`` or from fractions; pixel ``(row i, col j)`` spans ``[j, j+1) x [i, i+1)``)."""
        ref_w, ref_h = self.size if self.size is not None else (1.0, 1.0)
        vertices = np.asarray(self.points) * np.array([width / ref_w, height / ref_h])
        y, x = np.mgrid[0:height, 0:width] + 0.5
        inside = np.zeros((height, width), dtype=bool)
        for (x0, y0), (x1, y1) in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
            if y0 == y1:
                continue
            crosses = (y0 <= y) != (y1 <= y)
            inside ^= crosses & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
        return inside


MaskSource = ImageLike | Polygon


@dataclass(frozen=True)
class MaskSpec:
    """A mask with its own settings, usable wherever a mask is (e.g. ``StyleCondition(mask=MaskSpec(m, 4))``).

    Attributes:
        source: the mask (any ``frame_sources`` input).
        feather: inward edge softening in output pixels (>= 0).
        threshold: binarisation threshold, a fraction of the mask's range in (0, 1].
    """

    source: Any
    feather: int = 0
    threshold: float = MASK_THRESHOLD

    def __post_init__(self) -> None:
        if isinstance(self.feather, bool) or not isinstance(self.feather, int) or self.feather < 0:
            raise ValueError(f"MaskSpec.feather: expected an integer >= 0, got {self.feather!r}")
        if not 0.0 < float(self.threshold) <= 1.0:
            raise ValueError(f"MaskSpec.threshold: expected a number in (0, 1], got {self.threshold}")


def _unit_range(array: np.ndarray) -> np.ndarray:
    if array.dtype == bool:
        return array.astype(np.float32)
    if array.dtype in (np.uint8, np.uint16):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max)
    if np.issubdtype(array.dtype, np.integer):  # int64 etc.: a 0/1, 8-bit or 16-bit mask by its values
        top = int(array.max(initial=0))
        scale = next((s for s in (1, 255, 65535) if top <= s), top)
        return array.astype(np.float32) / float(scale)
    return array.astype(np.float32)


def _image_values(image: Image.Image) -> np.ndarray:
    if "A" in image.getbands() or "transparency" in image.info:
        alpha = np.asarray(image.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            return alpha.astype(np.float32) / 255.0
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if image.mode == "F":
        return np.asarray(image, dtype=np.float32)
    return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def mask_array(mask: MaskSource, threshold: float = MASK_THRESHOLD, argument: str = "mask") -> np.ndarray:
    """Any 2-D mask source -> bool (H, W) at its own size (see the module docstring for the modes).

    Polygons need an output size: use ``fit_mask``. Raises ValueError/TypeError naming ``argument``.
    """
    if not 0.0 < float(threshold) <= 1.0:
        raise ValueError(f"threshold: expected a number in (0, 1], got {threshold}")
    if isinstance(mask, Polygon):
        if mask.size is None:
            raise ValueError(f"{argument}: a Polygon in fractions needs an output size (use fit_mask)")
        return mask.rasterize(mask.size[1], mask.size[0])
    if isinstance(mask, (str, Path)):
        if not Path(mask).is_file():
            raise FileNotFoundError(f"{argument}: no such mask file: {mask}")
        try:
            with Image.open(mask) as opened:
                values = _image_values(opened)
        except (UnidentifiedImageError, OSError, SyntaxError) as error:
            raise ValueError(f"{argument}: not a readable mask image: {mask} ({error})") from None
    elif isinstance(mask, Image.Image):
        values = _image_values(mask)
    elif isinstance(mask, (np.ndarray, torch.Tensor, list, tuple)):
        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if array.dtype == object or not (array.dtype == bool or np.issubdtype(array.dtype, np.number)):
            raise TypeError(f"{argument}: expected a numeric or bool array, got dtype {array.dtype}")
        values = _unit_range(array)
    else:
        raise TypeError(
            f"{argument}: expected a path, PIL image, array, tensor or Polygon, got {type(mask).__name__}"
        )
    values = np.squeeze(values)
    if values.ndim == 3 and values.shape[-1] in (3, 4):
        values = values[..., :3].mean(axis=-1)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"{argument}: expected a 2-D (H, W) mask, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(f"{argument}: the mask contains NaN or infinite values")
    return values >= threshold


def fit_mask(
    mask: MaskSource | np.ndarray, height: int, width: int, threshold: float = MASK_THRESHOLD
) -> torch.Tensor:
    """A mask at ``height`` x ``width`` as a float {0, 1} tensor, fitted like the content image
    (resize to cover with LANCZOS, centre crop, re-binarised at half range)."""
    if isinstance(mask, Polygon) and mask.size is None:
        return torch.from_numpy(mask.rasterize(height, width).astype(np.float32))
    binary = mask_array(mask, threshold)
    if binary.shape != (height, width):
        fitted = fit_to_size(Image.fromarray(binary.astype(np.uint8) * 255), width, height)
        binary = np.asarray(fitted) >= 128
    return torch.from_numpy(binary.astype(np.float32))


def feather_mask(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soften a {0, 1} mask's edge inward over ``radius`` pixels: erode by ``radius``, then box-blur by
    ``radius``. Shape (..., H, W) kept; values in [0, 1]; zero wherever ``mask`` is zero."""
    if radius < 0:
        raise ValueError(f"feather: expected an integer >= 0, got {radius}")
    if radius == 0:
        return mask
    shape = mask.shape
    x = mask.reshape(-1, 1, *shape[-2:]).float()
    kernel = 2 * radius + 1
    eroded = -F.max_pool2d(-x, kernel, stride=1, padding=radius)
    soft = F.avg_pool2d(F.pad(eroded, [radius] * 4, mode="replicate"), kernel, stride=1)
    return (soft * x).reshape(shape)


def load_mask(
    mask: MaskSource, height: int, width: int, threshold: float = MASK_THRESHOLD, feather: int = 0
) -> torch.Tensor:
    """A mask as a (height, width) float tensor in [0, 1]: ``mask_array`` -> ``fit_mask`` ->
    ``feather_mask`` (``feather`` in output pixels)."""
    return feather_mask(fit_mask(mask, height, width, threshold), feather)


def frame_sources(masks: Any, argument: str = "mask") -> list[MaskSource]:
    """Split a mask input into per-frame sources: a list of masks (paths, images, arrays, Polygons), a 3-D
    (F, H, W) array/tensor (3-D arrays with a last axis of 1, 3 or 4 are one H x W x C mask), or one 2-D
    mask (one frame; a nested list of numbers is one 2-D mask)."""
    if masks is None:
        raise ValueError(f"{argument}: expected a mask, got None")
    frame_types = (str, Path, Image.Image, np.ndarray, torch.Tensor, Polygon)
    if isinstance(masks, (list, tuple)):
        if not masks:
            raise ValueError(f"{argument}: expected at least one mask, got an empty list")
        return list(masks) if all(isinstance(m, frame_types) for m in masks) else [masks]
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3 and masks.shape[-1] not in (1, 3, 4):
        return list(masks)
    return [masks]


def load_masks(
    masks: Any,
    n_frames: int,
    height: int,
    width: int,
    threshold: float = MASK_THRESHOLD,
    feather: int = 0,
    argument: str = "mask",
) -> torch.Tensor:
    """Frame-indexed masks: (n_frames, height, width) float in [0, 1].

    ``masks`` is one mask (used for every frame), a list of ``n_frames`` masks, or an (F, H, W)
    array/tensor with ``F == n_frames``; anything else raises ValueError naming both counts. A ``MaskSpec``
    brings its own ``threshold`` and ``feather`` (they replace the arguments).
    """
    if isinstance(masks, MaskSpec):
        masks, threshold, feather = masks.source, masks.threshold, masks.feather
    sources = frame_sources(masks, argument)
    if len(sources) == 1:
        return load_mask(sources[0], height, width, threshold, feather)[None].expand(n_frames, -1, -1).clone()
    if len(sources) != n_frames:
        raise ValueError(f"{argument}: got masks for {len(sources)} frames, but there are {n_frames} frames")
    return torch.stack([load_mask(s, height, width, threshold, feather) for s in sources])


# --------------------------------------------------------------------------------------------------
# conditioners


def _content_latent(
    trajectory: tuple[torch.Tensor, torch.Tensor], timestep: int | None
) -> torch.Tensor | None:
    """The content's inverted latent at ``timestep`` (None = clean: the trajectory's first entry);
    None when the timestep is not on the trajectory."""
    timesteps, latents = trajectory
    if timestep is None:
        return latents[0]
    index = (timesteps == timestep).nonzero()
    return latents[int(index[0])] if len(index) else None


def check_mask_aspect(mask_shape: Sequence[int], width: int, height: int, argument: str) -> None:
    """Refuse a (H, W, ...) mask whose aspect ratio differs from a ``width`` x ``height`` content's by more than
    ``ASPECT_TOLERANCE`` (it was drawn on another image; fitting would crop it)."""
    mask_height, mask_width = int(mask_shape[0]), int(mask_shape[1])
    if abs((mask_width / mask_height) / (width / height) - 1) > ASPECT_TOLERANCE:
        raise ValueError(
            f"{argument}: a {mask_width}x{mask_height} mask does not fit a {width}x{height} content image "
            "(different aspect ratio); draw it on the content"
        )


class RegionMask(ConditionerBase):
    """Confine the other conditioners' effect to ``mask`` (1 = styled, 0 = content kept).

    Args:
        mask: HxW mask (image/array/tensor/path/Polygon) at any size.
        feather: edge softening radius in latent pixels (inward, see ``feather_mask``).
    """

    def __init__(self, mask: MaskSource, feather: int = 0) -> None:
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
        if not isinstance(self.mask_source, Polygon):  # against the content images as given, not the output
            shape = mask_array(self.mask_source, argument="RegionMask.mask").shape
            for content_width, content_height in call.get("content_sizes", ()):
                check_mask_aspect(shape, content_width, content_height, "RegionMask.mask")
        self._latent_mask = load_mask(self.mask_source, height, width, feather=self.feather).to(start.device)
        self._trajectories = [injection.content_trajectory(row.content) for row in injection.rows]
        timesteps = [int(t) for t in injection.sampling_timesteps.tolist()]
        self._next_timestep = [*timesteps[1:], None]

    def on_step_end(self, step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        assert self._latent_mask is not None, "call prepare() first"
        target = self._next_timestep[step_index]
        content = torch.stack([_content_latent(tr, target) for tr in self._trajectories]).to(latents)  # type: ignore[misc]
        mask = self._latent_mask.to(latents)
        return mask * latents + (1 - mask) * content


REGION_LORA_PREFIX = "stylekit_region_"
"""Adapter name of region ``i``'s LoRA while a regional call runs: ``f"{REGION_LORA_PREFIX}{i}"``."""
BASE_ADAPTER = "__base__"
"""peft's name for "no adapter" in a mixed-adapter batch."""


class RegionAdapters:
    """Per-row style tokens and LoRAs for the batch rows of a regional StyleID call.

    The StyleID pipelines run one batch row per (content, style) and ``RegionalStyle`` blends the rows, so a
    per-row condition is all a region needs:

    - **LoRA** (``StyleCondition.lora``): every region's adapter is loaded for the call
      (``LoRAStyle``: stock ``pipe.load_lora_weights(..., adapter_name=...)``, exact restoration on exit,
      also on error) and a forward pre-hook on each of the UNet's peft ``LoraLayer``s passes
      ``adapter_names`` (one per batch row; ``"__base__"`` = no adapter), so peft's mixed-adapter batch
      forward runs each row with its own region's adapter only (what ``PeftModel`` does with its private
      ``_adapter_names_pre_forward_hook``). Unfused only; the UNet must have no other LoRA loaded (peft runs
      one adapter per row).
    - **Style tokens** (``StyleCondition.embedding`` / ``text``): one ``StyleTokens(per_row=True)`` for the
      rows that have tokens; ``TokenState.row_weights`` is 1 on those rows and 0 elsewhere.

    Rows prepended by another conditioner (StyleID's reference rows with ``cache_strategy="trajectory"``)
    get no adapter and no tokens. A condition's ``steps`` switch its LoRA/tokens on and off along the
    schedule; its ``weight`` is the region's blend weight (the LoRA acts at scale 1, the tokens at scale 1).

    Args:
        conditions: the call's conditions (index = style index of the rows).
        style_token_adapter: a ``StyleTokenAdapter`` or its folder, for conditions with ``embedding`` /
            ``text`` (None: the bundled one, ``stylekit.tokens.load_default_adapter``).
    """

    def __init__(self, conditions: Sequence[StyleCondition], style_token_adapter: Any = None) -> None:
        from stylekit.lora import lora_file
        from stylekit.lora_style import LoRAStyle

        self.steps = [tuple(float(x) for x in c.steps) for c in conditions]
        self.loras: dict[int, Path] = {}
        for index, condition in enumerate(conditions):
            if condition.lora is None:
                continue
            try:
                lora_file(condition.lora)
            except (FileNotFoundError, ValueError) as error:
                raise type(error)(f"style[{index}].lora: {error}") from error
            self.loras[index] = Path(condition.lora)
        self.token_conditions = {
            index: StyleCondition(embedding=c.embedding, text=c.text, weight=c.weight, steps=c.steps)
            for index, c in enumerate(conditions)
            if c.embedding is not None or c.text is not None
        }
        self.token_adapter: Any = None
        if self.token_conditions:
            self.token_adapter = _token_adapter(style_token_adapter, self.token_conditions)
        self._lora = (
            LoRAStyle(adapters={f"{REGION_LORA_PREFIX}{i}": (p, 1.0) for i, p in self.loras.items()})
            if self.loras
            else None
        )
        self._tokens: Any = None
        self._token_rows: list[int] = []
        self._context: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None)
        self._rows: list[Any] = []
        self._names: list[str] = []
        self._prepended = 0  # rows other conditioners put before the call's own (StyleID references)
        self.position = 0.0

    @classmethod
    def of(
        cls, conditions: Sequence[StyleCondition], style_token_adapter: Any = None
    ) -> RegionAdapters | None:
        """The per-row adapters of ``conditions``, or None when none carries a LoRA or style tokens."""
        if all(c.lora is None and c.embedding is None and c.text is None for c in conditions):
            return None
        return cls(conditions, style_token_adapter)

    @property
    def styles(self) -> list[int]:
        """Indices of the styles given by a LoRA or style tokens."""
        return sorted({*self.loras, *self.token_conditions})

    def check_pipeline(self, pipe: Any, conditioners: Sequence[Any] = ()) -> None:
        """Refuse, before any model work, what cannot run on ``pipe``: a LoRA file that cannot be read or
        was trained for another architecture, LoRAs already loaded in the UNet or a ``LoRAStyle`` among
        ``conditioners`` (with regional LoRAs), a token adapter that does not fit the UNet, a text style
        without a text encoder."""
        from stylekit.lora import check_lora_fits
        from stylekit.lora_style import LoRAStyle
        from stylekit.tokens import StyleTokens

        guided = [
            c for c in conditioners if isinstance(c, StyleTokens) and c.style_guidance_scale is not None
        ]
        if guided and (self.loras or self.token_conditions):
            raise ValueError(
                "conditioners: StyleTokens' style_guidance_scale cannot be combined with regional LoRA or "
                "style-token regions (the guidance rows would not get their region's adapter); leave "
                "style_guidance_scale unset there"
            )
        if self._lora is not None:
            loaded = sorted(getattr(pipe.unet, "peft_config", None) or {})
            if loaded:
                raise ValueError(
                    f"style: regional LoRAs run one adapter per batch row (peft mixed batches), but the UNet "
                    f"already has LoRA adapter(s) {loaded}; unload them first (pipe.unload_lora_weights(); "
                    "to keep one in the weights, pipe.fuse_lora() before unloading)"
                )
            if any(isinstance(c, LoRAStyle) for c in conditioners):
                raise ValueError(
                    "conditioners: a LoRAStyle cannot be combined with regional LoRAs "
                    "(StyleCondition(lora=..., mask=...)); give that LoRA its own region instead"
                )
            for index, path in self.loras.items():
                if _is_dora(path):
                    raise ValueError(
                        f"style[{index}].lora: {path} is a DoRA adapter; regional LoRAs run one adapter per "
                        "batch row (peft mixed batches), which peft does not support for DoRA"
                    )
            try:
                self._lora.prepare(pipe)  # reads and checks every file once
            except Exception:
                for index, path in self.loras.items():  # name the culprit
                    try:
                        check_lora_fits(pipe.unet, path)
                    except (FileNotFoundError, ValueError) as error:
                        reason = str(error).removeprefix("LoRA: ")
                        raise type(error)(f"style[{index}].lora: {reason}") from error
                    except Exception as error:
                        raise ValueError(
                            f"style[{index}].lora: cannot read {path} as a LoRA (.safetensors, diffusers or "
                            f"kohya keys): {error}"
                        ) from error
                raise
        if self.token_adapter is not None:
            self.token_adapter.check_unet(pipe.unet)
            texts = [i for i, c in self.token_conditions.items() if c.text is not None]
            if texts and getattr(pipe, "text_encoder", None) is None:
                raise ValueError(f"style[{texts[0]}].text: a text style needs a pipeline with a text_encoder")

    def prepare(self, pipe: Any, **call: Any) -> None:
        """Embed the token styles of ``call["rows"]`` (one ``Row`` per batch row; ``row.style`` = condition
        index); ``call`` is the pipeline's prepare call (``num_inference_steps``, ...)."""
        from stylekit.tokens import StyleTokens

        self._rows = list(call["rows"])
        self._token_rows = [i for i, row in enumerate(self._rows) if row.style in self.token_conditions]
        if self._token_rows:
            styles = [self.token_conditions[self._rows[i].style] for i in self._token_rows]
            self._tokens = StyleTokens(self.token_adapter, styles, per_row=True)
            self._tokens.prepare(pipe, **call)
            self._context = (self._tokens.state.context, self._tokens.state.time_delta)

    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        """Load the LoRAs and wrap the token layers for the call; restore everything on exit."""
        from peft.tuners.lora import LoraLayer

        with ExitStack() as stack:
            if self._lora is not None:
                with warnings.catch_warnings():  # several adapters in one model is the point here
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    stack.enter_context(self._lora.attach(pipe))
            if self._tokens is not None:
                stack.enter_context(self._tokens.attach(pipe))
                stack.callback(self._restore_context)
            handles: list[Any] = []
            stack.callback(lambda: [handle.remove() for handle in handles])  # also if a registration fails
            handles.append(pipe.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
            if self._lora is not None:
                for module in pipe.unet.modules():
                    if isinstance(module, LoraLayer):
                        handles.append(
                            module.register_forward_pre_hook(self._pass_adapter_names, with_kwargs=True)
                        )
            yield

    def _restore_context(self) -> None:
        self._tokens.state.context, self._tokens.state.time_delta = self._context

    def _active(self, style: int) -> bool:
        start, end = self.steps[style]
        return start <= self.position < end

    def _before_unet(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Per UNet call: the adapter name and token weight of every batch row (prepended rows: none).

        A motion UNet takes ``(videos, C, frames, h, w)`` and flattens frames into its rows, frame fastest;
        the call's rows are then ``videos x frames`` (every frame of a video has the video's style), the
        LoRA names go per frame row and the token weights and contexts per video (``TokenState.frames``)."""
        sample = args[0] if args else kwargs["sample"]
        rows = self._rows
        frames = int(sample.shape[2]) if sample.ndim == 5 else 1
        batch = int(sample.shape[0]) * frames
        extra = batch - len(rows)
        if extra < 0 or extra % frames:
            raise RuntimeError(f"regional adapters: the UNet batch has {batch} rows, the call {len(rows)}")
        self._prepended = extra
        active = [self._active(row.style) for row in rows]
        if self._lora is not None:
            self._names = [BASE_ADAPTER] * extra + [
                f"{REGION_LORA_PREFIX}{row.style}" if on and row.style in self.loras else BASE_ADAPTER
                for row, on in zip(rows, active, strict=True)
            ]
        if self._tokens is not None:
            state = self._tokens.state
            # the active token rows (first frame of each video only: its frames share the style)
            on = [k for k, i in enumerate(self._token_rows) if active[i] and (extra + i) % frames == 0]
            weights = torch.zeros(batch // frames)
            weights[[(extra + self._token_rows[k]) // frames for k in on]] = 1.0
            state.row_weights = weights
            # TokenState gives the k-th weighted row the k-th context: keep the contexts of active rows.
            context, time_delta = self._context
            state.context = context[on] if context is not None and on else context
            state.time_delta = time_delta[on] if time_delta is not None and on else time_delta

    def _pass_adapter_names(self, module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Forward pre-hook of a peft ``LoraLayer``: run each row with its own adapter. A layer may see a
        sub-batch: the style-token rows only (``StyleTokenProcessor`` projects the selected rows' queries),
        or, without style tokens, ``rows x frames`` rows (video UNets flatten frames into the batch, frame
        fastest); anything else is refused rather than guessed."""
        x = args[0] if args else kwargs["x"]
        names, rows = self._names, int(x.shape[0])
        if rows != len(names):
            state = self._tokens.state if self._tokens is not None else None
            token_rows = (
                []
                if state is None or state.row_weights is None
                else state.row_weights.repeat_interleave(state.frames).nonzero()
            )
            if len(token_rows) == rows:
                names = [names[int(i)] for i in token_rows]
            elif self._prepended and rows == len(names) - self._prepended:
                names = names[self._prepended :]  # the call's own rows without the prepended reference rows
                # (a StyleTokens conditioner projects only those under StyleID's trajectory strategy)
            elif state is None and names and rows % len(names) == 0:  # (with tokens it would be ambiguous)
                names = [name for name in names for _ in range(rows // len(names))]
            else:
                raise RuntimeError(f"regional LoRA: a layer got {rows} rows for {len(names)} batch rows")
        return args, {**kwargs, "adapter_names": names}


def _token_adapter(adapter: Any, conditions: dict[int, StyleCondition]) -> Any:
    """The style-token adapter (given, a folder, or the bundled one), checked against the conditions."""
    from stylekit.tokens import AdapterCompatibilityError, resolve_adapter

    adapter = resolve_adapter(adapter)
    for index, condition in conditions.items():
        if condition.embedding is not None:
            adapter.check_embedding(tuple(condition.embedding.shape), f"style[{index}].embedding")
        if condition.text is not None and adapter.text_head is None:
            raise AdapterCompatibilityError(f"style[{index}].text: this style-token adapter has no text head")
    return adapter


class RegionalStyle(ConditionerBase):
    """Each style in its own region of one output per content; outside every region, the content.

    The StyleID pipeline runs one batch row per (content, style). This conditioner
    (1) restricts each row's injected attention to its region's tokens at every targeted layer
    (``InjectionController.token_masks``), and (2) after every step gives all rows of a content the same
    blended latent ``z = sum_k A_k z_k + (1 - sum_k A_k) z_content(t)``, where ``A_k = w_k m_k`` (soft
    latent-resolution mask times weight; renormalised where the regions overlap by more than 1) and
    ``z_content(t)`` is the content's inversion trajectory at the next timestep (its clean latent after the
    last step). ``select`` then keeps one row per content.

    Args:
        masks: per style, a mask (any ``frame_sources`` input: one 2-D mask, or frame-indexed masks with one
            frame per content image; or a ``MaskSpec`` carrying its own feather/threshold) or None (= the
            whole image).
        weights: per style, in [0, 1] (default 1).
        feather: inward edge softening in output pixels (for masks that are not a ``MaskSpec``).
        threshold: binarisation threshold (fraction of the mask's range; likewise).
        restrict_attention: restrict the injection to each region's tokens (else latent blending only).
        composite: after decoding, paste the content's VAE reconstruction outside the union of the regions
            (``alpha * styled + (1 - alpha) * content``, alpha = the feathered union; the VAE decoder mixes
            pixels across the whole image, so without this the outside drifts slightly).
        latent_dilation: with ``composite``, the latent-space region (blending and attention) is every
            latent cell the region touches, grown by this many cells, at full strength: the inside gets the
            whole-image transfer's strength and the pixel composite (feathered) makes the seam. 0 = area
            coverage of each cell (soft, weaker for small regions).
        references: per style, whether it has a StyleID reference image (default: all). A row without one
            runs with the injection off (its token mask is all zeros, so every targeted layer computes its
            plain self-attention) and starts from the content's own inverted latent (no AdaIN): the row is
            the content's DDIM reconstruction, changed only by its ``adapters`` (LoRA / style tokens).
        adapters: per-row LoRAs and style tokens (``RegionAdapters``), or None.
        context: fraction of the schedule, in [0, 1], during which every row is the whole-image transfer
            of its style (no latent blending, injection not restricted) before the blending and the
            restriction confine it to its region. 0 (default): confined from the first step, the region
            harmonises with the kept content; larger values keep more of the whole-image style in small
            regions, whose few latent cells otherwise follow the content around them; 1: no latent
            blending at all: each style's whole-image transfer is decoded and the outputs are merged in
            pixels by their (feathered, weighted) masks over the content's reconstruction (one VAE decode
            per style; the decoder mixes neighbouring pixels, so merging decoded images keeps a small
            region's style where a latent merge would not). Needs ``composite``.
    """

    def __init__(
        self,
        masks: Sequence[Any],
        weights: Sequence[float] | None = None,
        feather: int = 0,
        threshold: float = MASK_THRESHOLD,
        restrict_attention: bool = True,
        composite: bool = True,
        latent_dilation: int = 1,
        references: Sequence[bool] | None = None,
        adapters: RegionAdapters | None = None,
        context: float = 0.0,
    ) -> None:
        masks = list(masks)
        if isinstance(context, bool) or not isinstance(context, (int, float)) or not 0.0 <= context <= 1.0:
            raise ValueError(f"region context: expected a number in [0, 1], got {context!r}")
        self.context = float(context)
        if self.context == 1.0 and not composite:
            raise ValueError("region context 1 merges the styles in pixels: it needs composite=True")
        self._free_steps = 0
        self._free_masks: torch.Tensor | None = None
        self._pixel_blend: torch.Tensor | None = None  # context 1: (rows, 1, H, W) pixel weights
        self._row_latents: torch.Tensor | None = None
        if not masks:
            raise ValueError("masks: expected one mask (or None) per style")
        self.references = [True] * len(masks) if references is None else [bool(r) for r in references]
        if len(self.references) != len(masks):
            raise ValueError(
                f"references: expected {len(masks)} flags (one per mask), got {len(self.references)}"
            )
        self.adapters = adapters
        self._num_steps = 0
        weights = [1.0] * len(masks) if weights is None else [float(w) for w in weights]
        if len(weights) != len(masks):
            raise ValueError(f"weights: expected {len(masks)} weights (one per mask), got {len(weights)}")
        if any(not 0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"weights: expected numbers in [0, 1], got {weights}")
        if isinstance(feather, bool) or not isinstance(feather, int) or feather < 0:
            raise ValueError(f"feather: expected an integer >= 0, got {feather!r}")
        self.weights = weights
        self.feather = feather
        self.threshold = threshold
        self.restrict_attention = restrict_attention
        self.composite_pixels = composite
        self.latent_dilation = latent_dilation
        # Decode every mask now: bad masks fail before any model work.
        self.sources: list[list[np.ndarray | Polygon] | None] = []
        self.feathers: list[int] = []
        for index, mask in enumerate(masks):
            spec = mask if isinstance(mask, MaskSpec) else MaskSpec(mask, feather, threshold)
            self.feathers.append(spec.feather)
            if spec.source is None:
                self.sources.append(None)
                continue
            frames = frame_sources(spec.source, f"mask[{index}]")
            self.sources.append(
                [
                    f
                    if isinstance(f, Polygon) and f.size is None
                    else mask_array(f, spec.threshold, f"mask[{index}]")
                    for f in frames
                ]
            )
        empty = [i for i, s in enumerate(self.sources) if s is not None and not any(_any(f) for f in s)]
        if empty:
            warnings.warn(
                f"mask {empty} is empty: that style has no region (the content is kept there)", stacklevel=2
            )
        self._injection: Any = None
        self._groups: list[list[int]] = []
        self._blend: torch.Tensor | None = None
        self._rest: torch.Tensor | None = None
        self._row_masks: torch.Tensor | None = None
        self._trajectories: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._next_timestep: list[int | None] = []
        self._alpha: torch.Tensor | None = None

    @classmethod
    def from_conditions(
        cls,
        conditions: Sequence[StyleCondition],
        content_sizes: Sequence[tuple[int, int]] = (),
        style_token_adapter: Any = None,
        **kwargs: Any,
    ) -> RegionalStyle | None:
        """The regional conditioner for ``conditions`` (their ``mask``, ``weight``, ``image``, ``lora``,
        ``embedding`` / ``text``), or None when no condition has a mask. ``content_sizes`` ((width, height)
        per content image) are checked against the masks (frame count, aspect ratio) before any model work;
        ``style_token_adapter`` serves the conditions with ``embedding`` / ``text`` (see ``RegionAdapters``)."""
        if all(c.mask is None for c in conditions):
            return None
        regional = cls(
            [c.mask for c in conditions],
            [c.weight for c in conditions],
            references=[c.image is not None for c in conditions],
            adapters=RegionAdapters.of(conditions, style_token_adapter),
            **kwargs,
        )
        if content_sizes:
            regional.check_contents(content_sizes)
        return regional

    def check_pipeline(
        self, pipe: Any, conditioners: Sequence[Any] = (), adain: bool = True, official_timing: bool = False
    ) -> None:
        """Refuse, before any model work, what this pipeline call cannot run (see
        ``RegionAdapters.check_pipeline``; a style without a reference image under the official timing
        with AdaIN, whose un-AdaIN'd start latent is not on the content's trajectory)."""
        if adain and official_timing and not all(self.references):
            missing = self.references.index(False)
            raise ValueError(
                f"style[{missing}]: a region without a reference image (LoRA / style tokens) needs the "
                "corrected timing: use another layers preset than 'styleid-official', or adain=False"
            )
        if self.adapters is not None:
            self.adapters.check_pipeline(pipe, conditioners)

    def for_frames(self, start: int, end: int) -> RegionalStyle:
        """This conditioner for the frames ``start:end`` of a video (frame-indexed masks sliced, one-frame
        masks kept; every setting and the ``adapters`` shared), not yet prepared."""
        window = copy.copy(self)
        window.sources = [
            None if frames is None else (frames if len(frames) == 1 else frames[start:end])
            for frames in self.sources
        ]
        return window

    def check_contents(self, sizes: Sequence[tuple[int, int]]) -> None:
        """Refuse masks that cannot belong to these content images ((width, height) each): a frame count
        other than 1 or the number of contents, or an aspect ratio off by more than ``ASPECT_TOLERANCE``."""
        for index, frames in enumerate(self.sources):
            if frames is None:
                continue
            if len(frames) not in (1, len(sizes)):
                raise ValueError(
                    f"style[{index}].mask: got masks for {len(frames)} frames, but there are {len(sizes)} "
                    "content images (give one mask, or one per content image / video frame)"
                )
            pairs = zip(frames, sizes, strict=True) if len(frames) > 1 else ((frames[0], s) for s in sizes)
            for frame, (width, height) in pairs:
                if not isinstance(frame, Polygon):
                    check_mask_aspect(frame.shape, width, height, f"style[{index}].mask")

    def pixel_masks(self, n_contents: int, height: int, width: int) -> torch.Tensor:
        """(styles, contents, height, width) float masks in [0, 1] at the output size (feathered)."""
        out = torch.ones(len(self.sources), n_contents, height, width)
        for index, frames in enumerate(self.sources):
            if frames is None:
                continue
            if len(frames) not in (1, n_contents):
                raise ValueError(
                    f"style[{index}].mask: got {len(frames)} frame masks for {n_contents} contents"
                )
            fitted = torch.stack([fit_mask(f, height, width) for f in frames])
            out[index] = feather_mask(fitted, self.feathers[index]).expand(n_contents, -1, -1)
        return out

    def prepare(self, pipe: Any, **call: Any) -> None:
        injection = call.get("injection")
        if injection is None or injection.start_latents is None:
            raise ValueError("RegionalStyle needs the content's inversion (use it with a StyleID pipeline)")
        contents, rows = call["contents"], list(injection.rows)
        if max(r.style for r in rows) >= len(self.sources):
            raise ValueError(f"RegionalStyle has {len(self.sources)} masks, the call has more styles")
        start = injection.start_latents
        latent_h, latent_w = int(start.shape[-2]), int(start.shape[-1])
        pixels = self.pixel_masks(int(contents.shape[0]), int(contents.shape[-2]), int(contents.shape[-1]))
        latent = F.adaptive_avg_pool2d(pixels, (latent_h, latent_w))  # coverage of each latent cell
        if self.latent_dilation > 0 and self.composite_pixels:
            # The pixel composite restores the outside exactly, so the latent region may be generous: every
            # cell within ``latent_dilation`` cells of the region is styled at full strength.
            size = 2 * self.latent_dilation + 1
            latent = F.max_pool2d(latent, size, stride=1, padding=self.latent_dilation)
            latent = (latent > 0).to(latent.dtype)
        row_masks = torch.stack([latent[r.style, r.content] for r in rows]).to(start.device)
        amounts = row_masks * torch.tensor([self.weights[r.style] for r in rows], device=start.device).view(
            -1, 1, 1
        )
        self._groups = [
            [i for i, r in enumerate(rows) if r.content == c] for c in sorted({r.content for r in rows})
        ]
        blend = torch.zeros_like(amounts)
        rest = []
        for group in self._groups:
            total = amounts[group].sum(0)
            scale = torch.where(total > 1, 1 / total.clamp_min(1e-12), torch.ones_like(total))
            blend[group] = amounts[group] * scale
            rest.append(1 - blend[group].sum(0))
        self._blend, self._rest = blend[:, None], torch.stack(rest)[:, None]
        # Rows without a reference image run with the injection off (a zero token mask: plain self-attention).
        attention = row_masks.clone() if self.restrict_attention else torch.ones_like(row_masks)
        attention[[i for i, r in enumerate(rows) if not self.references[r.style]]] = 0.0
        self._row_masks = None if bool((attention == 1).all()) else attention
        free = torch.ones_like(row_masks)  # the whole-image phase (``context``): injection everywhere
        free[[i for i, r in enumerate(rows) if not self.references[r.style]]] = 0.0
        self._free_masks = None if bool((free == 1).all()) else free
        self._injection = injection
        self._trajectories = [injection.content_trajectory(rows[g[0]].content) for g in self._groups]
        timesteps = [int(t) for t in injection.sampling_timesteps.tolist()]
        self._next_timestep = [*timesteps[1:], None]
        active = torch.tensor([float(w > 0) for w in self.weights]).view(-1, 1, 1, 1)
        self._alpha = (pixels * active).sum(0).clamp(0, 1)[:, None]  # (contents, 1, H, W): regions' union
        weighted = torch.stack([pixels[r.style, r.content] * self.weights[r.style] for r in rows])
        for group in self._groups:  # pixel weights per row, renormalised where regions overlap beyond 1
            total = weighted[group].sum(0)
            weighted[group] = weighted[group] / total.clamp_min(1.0)
        self._pixel_blend = weighted[:, None]
        # One start latent per content: the rows' (AdaIN'd) starts blended like every later step. A row
        # without a reference image starts from the content's own inverted latent (no AdaIN).
        first = timesteps[0]
        if injection.adain and not all(self.references):
            start = start.clone()
            for i, row in enumerate(rows):
                if not self.references[row.style]:
                    own = _content_latent(injection.content_trajectory(row.content), first)
                    if own is None:
                        raise ValueError("a region without a reference image needs the corrected timing")
                    start[i] = own.to(start)
        blended = start.clone()
        for g, group in enumerate(self._groups):
            content = _content_latent(self._trajectories[g], first)
            content = start[group[0]] if content is None else content.to(start)
            blended[group] = self._mix(start, group, g, content)
        self._num_steps = len(timesteps)
        # Only context 1 skips latent blending altogether (pixel merge); below 1 at least the last step blends.
        free = round(self.context * self._num_steps)
        self._free_steps = free if self.context == 1.0 else min(free, self._num_steps - 1)
        injection.start_latents = blended if self._free_steps == 0 else start
        if self.adapters is not None:
            self.adapters.prepare(pipe, **{**call, "rows": rows})

    def _mix(self, latents: torch.Tensor, group: list[int], g: int, content: torch.Tensor) -> torch.Tensor:
        assert self._blend is not None and self._rest is not None
        blend = self._blend[group].to(latents)
        return (blend * latents[group]).sum(0) + self._rest[g].to(latents) * content.to(latents)

    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        assert self._injection is not None, "call prepare() before attach()"
        controller = self._injection.controller
        previous = controller.token_masks
        controller.token_masks = self._free_masks if self._free_steps > 0 else self._row_masks
        try:
            if self.adapters is None:
                yield
            else:
                with self.adapters.attach(pipe):
                    yield
        finally:
            controller.token_masks = previous

    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None:
        if step_index == self._free_steps and self._free_steps > 0:
            self._injection.controller.token_masks = self._row_masks  # the whole-image phase is over
        if self.adapters is not None:
            self.adapters.position = step_index / max(self._num_steps, 1)

    def on_step_end(self, step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        if step_index + 1 < self._free_steps or self._pixel_merge:
            return latents  # whole-image phase: rows evolve on their own
        target = self._next_timestep[step_index]
        out = latents.clone()
        for g, group in enumerate(self._groups):
            content = _content_latent(self._trajectories[g], target)
            if content is None:
                raise KeyError(f"timestep {target} is not on the content's inverted trajectory")
            out[group] = self._mix(latents, group, g, content)
        return out

    @property
    def _pixel_merge(self) -> bool:
        return self._num_steps > 0 and self._free_steps >= self._num_steps

    def select(self, latents: torch.Tensor) -> torch.Tensor:
        """One latent per content (rows of a content are identical after every step). With context 1 the
        rows are kept for ``composite`` and the latent returned is their blend over the content's clean
        latent (what ``output_type="latent"`` gives)."""
        if not self._pixel_merge:
            return latents[[group[0] for group in self._groups]]
        self._row_latents = latents
        merged = []
        for g, group in enumerate(self._groups):
            content = _content_latent(self._trajectories[g], None)
            merged.append(self._mix(latents, group, g, content))  # type: ignore[arg-type]
        return torch.stack(merged)

    def composite(self, latents: torch.Tensor, decode: Any) -> torch.Tensor:
        """The decoded outputs (C, 3, H, W) in [-1, 1] of ``select``'s ``latents``, pasted over the content's
        reconstruction ``decode(clean content latents)`` outside the regions (see ``composite``); with
        context 1, the kept rows decoded and merged in pixels instead (``latents`` is then not decoded)."""
        if self._pixel_merge and self._row_latents is not None:
            assert self._pixel_blend is not None
            rows, self._row_latents = decode(self._row_latents.to(latents.device)), None
            content = self._reconstruction(decode, rows)
            weights = self._pixel_blend.to(rows)
            return torch.stack(
                [
                    (weights[group] * rows[group]).sum(0) + (1 - weights[group].sum(0)) * content[g]
                    for g, group in enumerate(self._groups)
                ]
            )
        images = decode(latents)
        if not self.composite_pixels or self._alpha is None or bool((self._alpha == 1).all()):
            return images
        alpha = self._alpha.to(images)
        return alpha * images + (1 - alpha) * self._reconstruction(decode, images)

    def _reconstruction(self, decode: Any, like: torch.Tensor) -> torch.Tensor:
        """Each content's VAE reconstruction (its clean inverted latent, decoded), as ``like``."""
        clean = torch.stack([_content_latent(tr, None) for tr in self._trajectories])  # type: ignore[misc]
        return decode(clean.to(like.device)).to(like)

    @property
    def pairs(self) -> list[tuple[int, int]]:
        """``(content_index, -1)`` per output: -1 = all styles, each in its region."""
        return [(g, -1) for g in range(len(self._groups))]


def _is_dora(path: str | Path) -> bool:
    """Whether a LoRA file (or adapter folder) holds DoRA magnitude vectors (diffusers or kohya keys)."""
    from safetensors import safe_open

    from stylekit.lora import lora_file

    try:
        with safe_open(str(lora_file(path)), "pt") as handle:
            return any("lora_magnitude_vector" in key or "dora_scale" in key for key in handle.keys())
    except Exception:  # unreadable: LoRAStyle.prepare names the problem
        return False


def _any(frame: np.ndarray | Polygon) -> bool:
    return True if isinstance(frame, Polygon) else bool(frame.any())
