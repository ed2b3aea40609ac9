"""``VideoStyleTransferPipeline``: restyle an existing video with a style reference.

Per window of frames (sliding, overlapping windows for videos longer than ``window_size``):

1. Per-frame DDIM inversion with StyleID feature capture (``stylekit.attention.AttentionInjection`` on
   the image UNet). The style is inverted once per call and kept in the pipeline's ``inversion_cache``
   (so later windows and later calls reuse it); frames are not cached, so memory stays bounded by the
   window, not the video.
2. Sampling with StyleID injection on the targeted layers, **cross-frame attention** on the other
   self-attention layers (each frame also attends to the first frame's and the previous frame's K/V;
   ``stylekit.video_attention``) and, when a ``MotionAdapter`` is given, the AnimateDiff temporal
   attention of ``UNetMotionModel`` (built from the image UNet by ``stylekit.video_models``).
   Optional: a gray-tile ControlNet (``controlnet=``; StyleMaster's v2v control) and AdaIN of the start
   latents with frame 0's statistics (``adain="video"``, the default).
3. FreeNoise-like window fusion: frames shared with the previous window are blended, at every step,
   with that window's latents (weights falling linearly across the overlap), so windows join smoothly.
   Finished frames are decoded window by window (and streamed to ``output_path`` if given).
4. Optional flow-guided temporal fusion (``temporal_fusion``, ``stylekit.video_flow.TemporalFusion``): each
   decoded frame is blended, where the source video's own optical flow is reliable, with the previous
   output frame warped along that flow; frames are fused in order, the previous one carried across windows.

Regions: styles given with a ``mask`` (one mask, or one per frame) act only in their regions; each style
runs as its own stream of frames and ``stylekit.regions.RegionalStyle`` (masks sliced per window) blends the
streams with the frames' inversion trajectories after every step and pastes each frame's reconstruction
outside the regions (``docs/regions.md``). A masked call's style may be a LoRA or style tokens instead of an
image (``stylekit.regions.RegionAdapters``; also with a motion adapter).

With ``window_size >= len(video)`` there is a single window and the result is exactly the single-window
run. The attention processors (of the UNet and of the motion UNet) are restored after every call, also on
error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import BaseOutput
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from stylekit.attention import AttentionInjection, InjectionSettings, Row, preset_of, resolve_layers
from stylekit.attention.targeting import LayerSpec
from stylekit.cache import CacheKey, InversionCache
from stylekit.conditioning import (
    Conditioner,
    ImageLike,
    StyleCondition,
    attached,
    one_call_at_a_time,
    reference_conditions,
)
from stylekit.images import fit_to_size, load_image, round_to_factor, to_tensor
from stylekit.inversion import check_inference_steps
from stylekit.pipelines.style_injection import StyleInjectionPipeline, style_slots
from stylekit.regions import MaskSpec, RegionAdapters, RegionalStyle, frame_sources
from stylekit.video_attention import CrossFrameState, anchored_injection, cross_frame_processors
from stylekit.video_flow import TemporalFusion, check_fusion
from stylekit.video_io import Video, VideoWriter, check_output, load_video
from stylekit.video_models import (
    MotionUNetCache,
    check_motion_adapter,
    check_motion_scale,
    scaled_motion_modules,
    text_embedding_hook_last,
)


@dataclass
class VideoStyleTransferOutput(BaseOutput):
    """Output of ``VideoStyleTransferPipeline``.

    Attributes:
        frames: stylized frames: a list of PIL images (``"pil"``), float ``(T, H, W, 3)`` numpy in [0, 1]
            (``"np"``), a ``(T, 3, H, W)`` tensor in [0, 1] (``"pt"``) or ``(T, C, h, w)`` latents.
        fps: the input video's frame rate.
        windows: the ``(start, end)`` frame ranges processed.
        unet_evals: UNet evaluations spent, counted as frames (batch rows).
        path: where the video was written (``output_path``), else None.
    """

    frames: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    fps: float
    windows: list[tuple[int, int]]
    unet_evals: int
    path: Path | None = None


DEFAULT_WINDOW = 16
DEFAULT_OVERLAP = 4


def gray_tile(image: PIL.Image.Image, width: int, height: int, factor: int = 8) -> PIL.Image.Image:
    """StyleMaster's control image: cover-crop to ``width`` x ``height``, downsample by ``factor``,
    upsample back (bicubic) and make grayscale (3 equal channels)."""
    frame = fit_to_size(image, width, height)
    small = frame.resize((max(1, width // factor), max(1, height // factor)), PIL.Image.Resampling.BICUBIC)
    return small.resize((width, height), PIL.Image.Resampling.BICUBIC).convert("L").convert("RGB")


def plan_windows(length: int, window: int | None, overlap: int) -> list[tuple[int, int]]:
    """Sliding windows ``[(start, end), ...]`` covering ``range(length)``.

    Windows of ``window`` frames start every ``window - overlap`` frames; the last one is shifted back to
    end at ``length``. ``window=None`` or ``window >= length`` gives one window.
    """
    if length < 1:
        raise ValueError(f"the video has {length} frames; expected at least 1")
    if window is None or window >= length:
        return [(0, length)]
    if not 0 <= overlap < window:
        raise ValueError(f"window_overlap: expected 0 <= overlap < window_size ({window}), got {overlap}")
    stride = window - overlap
    windows = [(s, s + window) for s in range(0, length - window + 1, stride)]
    if windows[-1][1] < length:
        windows.append((length - window, length))
    return windows


def video_adain(
    latents: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, style: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """AdaIN of ``(F, C, h, w)`` latents with shared content statistics ``mean`` / ``std`` ``(1, C, 1, 1)``
    toward the style latent ``(1, C, h, w)`` (the formula of ``stylekit.inversion.adain_latent``)."""
    s_mean, s_std = style.mean(dim=(2, 3), keepdim=True), style.std(dim=(2, 3), keepdim=True)
    return ((latents.float() - mean) / (std + eps) * (s_std + eps) + s_mean).to(latents.dtype)


def video_regions(
    conditions: Sequence[StyleCondition],
    frames: int,
    loaded_frames: int,
    frame_size: tuple[int, int],
    style_token_adapter: Any = None,
    context: float = 0.0,
) -> RegionalStyle | None:
    """The video's ``RegionalStyle`` (each style in its mask's region, every frame a content row), or None
    when there is one style without a mask. Masks are checked before any model work: one mask (every frame)
    or one per frame of the video (``frames``; masks for all ``loaded_frames`` are cut to the first
    ``frames`` when ``max_frames`` shortened the video), of the frames' aspect ratio (``frame_size`` =
    (width, height)). An empty mask warns (its style has no region). Several styles without masks blend
    by weight over the whole frame. A style without an image (``lora`` / ``embedding`` / ``text``) is a
    ``RegionAdapters`` row (``style_token_adapter`` serves the token styles); ``context`` is
    ``RegionalStyle.context``."""
    if len(conditions) == 1 and conditions[0].mask is None:
        return None
    masks: list[Any] = []
    for index, condition in enumerate(conditions):
        mask = condition.mask
        if mask is None:
            masks.append(None)
            continue
        spec = mask if isinstance(mask, MaskSpec) else MaskSpec(mask)
        sources = frame_sources(spec.source, f"style[{index}].mask")
        if len(sources) > 1 and len(sources) == loaded_frames and frames < loaded_frames:
            sources = sources[:frames]
        elif len(sources) not in (1, frames):
            raise ValueError(
                f"style[{index}].mask: got masks for {len(sources)} frames, but the video has {frames} "
                "frames (give one mask for every frame, or one mask per frame)"
            )
        masks.append(MaskSpec(sources, spec.feather, spec.threshold))
    regional = RegionalStyle(
        masks,
        [c.weight for c in conditions],
        references=[c.image is not None for c in conditions],
        adapters=RegionAdapters.of(conditions, style_token_adapter),
        context=context,
    )
    regional.check_contents([frame_size] * frames)
    return regional


def _same_path(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name the same file or folder (existing or not)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


class _StyleOnlyCache:
    """Caches style inversions only (frame inversions are used once and dropped)."""

    def __init__(self, inner: InversionCache) -> None:
        self.inner = inner

    def get(self, key: CacheKey) -> dict[str, torch.Tensor] | None:
        return self.inner.get(key) if key.role == "style" else None

    def put(self, key: CacheKey, tensors: dict[str, torch.Tensor]) -> None:
        if key.role == "style":
            self.inner.put(key, tensors)


class VideoStyleTransferPipeline(StyleInjectionPipeline):
    """StyleID video style transfer with cross-frame attention, optional AnimateDiff motion modules and
    sliding windows (module docstring). Loads like ``StableDiffusionPipeline`` plus an optional
    ``motion_adapter`` component: ``VideoStyleTransferPipeline.from_pipe(load_pipeline("mini"),
    motion_adapter=MotionAdapter.from_pretrained(...))``."""

    _optional_components = [*StyleInjectionPipeline._optional_components, "motion_adapter"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: KarrasDiffusionSchedulers,
        safety_checker: StableDiffusionSafetyChecker = None,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
        requires_safety_checker: bool = False,
        motion_adapter: MotionAdapter = None,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            image_encoder,
            requires_safety_checker,
        )
        self.register_modules(motion_adapter=motion_adapter)

    @property
    def _motion_cache(self) -> MotionUNetCache:
        cache = self.__dict__.get("_motion_unet_cache")
        if cache is None:
            cache = self.__dict__["_motion_unet_cache"] = MotionUNetCache()
        return cache

    # ------------------------------------------------------------------------------------ checks
    def check_video_inputs(
        self,
        video: Any,
        style: Any,
        motion_adapter: Any,
        window_size: int | None,
        window_overlap: int,
        height: int | None,
        width: int | None,
        max_frames: int | None,
        output_path: str | Path | None,
        style_token_adapter: Any = None,
        region_context: float = 0.0,
    ) -> tuple[Video, list[StyleCondition], list[PIL.Image.Image | None], RegionalStyle | None, int, int]:
        """Validate the video-specific arguments and load the video, the styles and their masks before any
        model work. Returns (video, style conditions, style images (None for a LoRA / token region), the
        video's ``RegionalStyle`` or None, height, width)."""
        for name, value, low in (("window_size", window_size, 1), ("max_frames", max_frames, 1)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, Integral) or value < low
            ):
                raise ValueError(f"{name}: expected None or an integer >= {low}, got {value!r}")
        if isinstance(window_overlap, bool) or not isinstance(window_overlap, Integral):
            raise ValueError(f"window_overlap: expected an integer >= 0, got {window_overlap!r}")
        if window_size is not None and not 0 <= window_overlap < window_size:
            raise ValueError(
                f"window_overlap: expected 0 <= window_overlap < window_size ({window_size}), got {window_overlap}"
            )
        if motion_adapter is not None:
            check_motion_adapter(self.unet, motion_adapter)
            limit = int(motion_adapter.config.motion_max_seq_length)
            if window_size is None or window_size > limit:
                raise ValueError(
                    f"window_size={window_size}: the motion adapter handles at most {limit} frames at once "
                    f"(motion_max_seq_length); use window_size <= {limit} (longer videos slide windows)"
                )
        if output_path is not None:
            check_output(output_path, argument="output_path")
        conditions = reference_conditions(style, "video style transfer")
        if output_path is not None and isinstance(video, (str, Path)) and _same_path(output_path, video):
            raise ValueError(f"output_path: {output_path} is the input video; write the result elsewhere")
        clip = load_video(video, "video")
        loaded = len(clip)
        if max_frames is not None:
            clip = Video(clip.frames[: int(max_frames)], clip.fps)
        regional = video_regions(
            conditions, len(clip), loaded, clip.size, style_token_adapter, region_context
        )
        style_images = [
            None if c.image is None else load_image(c.image, f"style[{i}].image")
            for i, c in enumerate(conditions)
        ]
        factor = int(self.vae_scale_factor)
        if height is None or width is None:
            frame_w, frame_h = clip.size
            scale = self.native_resolution / min(frame_w, frame_h)
            height = height or max(factor, round(frame_h * scale))
            width = width or max(factor, round(frame_w * scale))
        height = round_to_factor(int(height), factor, "height")
        width = round_to_factor(int(width), factor, "width")
        return clip, conditions, style_images, regional, height, width

    # ------------------------------------------------------------------------------------ call
    @torch.no_grad()
    @one_call_at_a_time
    def __call__(  # type: ignore[override]
        self,
        video: Any,
        style: StyleCondition | ImageLike | Sequence[StyleCondition | ImageLike],
        gamma: float = 0.75,
        temperature: float = 1.5,
        attention_injection: bool = True,
        query_preservation: bool = True,
        adain: bool | str = True,
        layers: LayerSpec = None,
        cross_frame: bool | str = True,
        anchors: Sequence[str] = ("first", "previous"),
        motion_adapter: Any = "default",
        motion_scale: float = 1.0,
        window_size: int | str | None = "auto",
        window_overlap: int | str = "auto",
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        max_frames: int | None = None,
        output_type: str = "pil",
        output_path: str | Path | None = None,
        return_dict: bool = True,
        cache: InversionCache | bool = True,
        conditioners: Sequence[Conditioner] = (),
        style_token_adapter: Any = None,
        region_context: float = 0.0,
        attention_backend: str = "sdpa",
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None = None,
        controlnet: Any = None,
        controlnet_conditioning_scale: float = 1.0,
        control_guidance_end: float = 0.7,
        temporal_fusion: float = 0.0,
        generator: Any = None,
    ) -> VideoStyleTransferOutput | tuple:
        """Restyle ``video`` with ``style``.

        Args:
            video: a path (mp4, gif, folder of frames), a ``stylekit.video_io.Video``, a uint8
                ``(T, H, W, 3)`` array, a ``(T, 3, H, W)`` tensor in [0, 1] or a list of images.
            style: the style image or a ``StyleCondition`` with ``image`` (``steps`` limits injection), or a
                list of them. With a ``mask`` (one mask for every frame, or frame-indexed masks: a list or an
                ``(F, H, W)`` array with one mask per frame of the video) each style acts only in its region,
                overlaps blend by ``weight`` and everything outside all the regions stays the frame's VAE
                reconstruction (``stylekit.regions.RegionalStyle``, each frame a content; masks sliced per
                window). Several styles without masks blend by weight over the whole frame. A masked call's
                style may also (or instead of an image) be a LoRA (``lora``) or style tokens (``embedding`` /
                ``text``), per region (``stylekit.regions.RegionAdapters``).
            gamma, temperature, attention_injection, query_preservation, layers: StyleID, as in
                ``StyleInjectionPipeline``.
            adain: AdaIN of the start latents toward the style's: ``True`` / ``"video"`` normalises every
                frame with frame 0's channel statistics (one shift and scale for the whole video, so frames
                keep their differences: no per-frame colour flicker); ``"frame"`` with each frame's own
                (image StyleID); ``False``: none.
            cross_frame: ``True`` / ``"unstyled"``: cross-frame attention on the self-attention layers that
                StyleID does not inject; ``"all"``: also on the injected layers (a frame attends to the style's
                and its anchors' K/V); ``False``: independent per-frame StyleID.
            anchors: the anchor frames of cross-frame attention (``"first"``, ``"previous"``).
            motion_adapter: a diffusers ``MotionAdapter`` for temporal attention; ``"default"`` = the
                pipeline's ``motion_adapter`` component; None = none.
            motion_scale: the temporal layers' contribution (``stylekit.video_models.scaled_motion_modules``):
                1 = as trained, 0 = none. Below 1 the adapter smooths less texture away: with the bundled
                adapter and ``temporal_fusion=0.8``, 0.5 keeps the style score within 4 % of per-frame
                StyleID (1.0: -12 %) at a lower warp error (docs/video.md). Needs a motion adapter.
            window_size: frames per window; ``"auto"`` = 16 (at most the adapter's ``motion_max_seq_length``);
                None = the whole video at once (not allowed with a motion adapter).
            window_overlap: frames shared by consecutive windows (FreeNoise-like fusion); ``"auto"`` =
                ``min(4, window_size // 2)`` (4 for windows of 8 or more frames).
            num_inference_steps: DDIM steps (inversion and sampling).
            height, width: output size (default: the shorter side at the model's native resolution,
                aspect kept, multiples of the VAE factor); frames are resized to cover it and centre-cropped.
            max_frames: use only the first ``max_frames`` frames.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            output_path: also write the stylized video there (mp4 / gif / folder), atomically, at the
                input's fps, frames streamed as windows finish.
            cache: True = the pipeline's ``inversion_cache`` (style only); an ``InversionCache``; False =
                no reuse across calls (the style is still inverted once per call).
            conditioners: extra conditioners, prepared per window.
            style_token_adapter: the ``StyleTokenAdapter`` (or its folder) for regions given as ``embedding`` /
                ``text``; None = the bundled one (``stylekit.tokens.load_default_adapter``).
            region_context: for masked styles, the fraction of the schedule each style runs on the whole
                frame before it is confined to its region (``RegionalStyle.context``; 1 = merge the whole-frame
                transfers in pixels, for small regions).
            callback_on_step_end: diffusers-style ``f(pipe, step, timestep, {"latents": ...})`` per window step.
            controlnet: an optional diffusers ``ControlNetModel`` fed the gray-tile control (each source frame
                downsampled x8, upsampled back and made grayscale: layout and luminance kept, colour and
                texture left to the style; StyleMaster's v2v control) for the first ``control_guidance_end``
                of the schedule, at ``controlnet_conditioning_scale``. No gray-tile checkpoint for SD
                exists; train one (standard ControlNet training on gray-tile -> frame pairs).
            temporal_fusion: flow-guided temporal fusion strength ``a`` in [0, 1] (0 = off): each output frame
                ``t`` becomes ``(1 - a m_t) out_t + a m_t warp(out_{t-1})``, with the Farneback flow of the
                *source* frames and ``m_t`` its forward-backward (and photometric) reliability mask
                (``stylekit.video_flow.TemporalFusion``; needs OpenCV, the ``video`` extra). Frames are fused in
                order across windows; with masked styles only inside the regions (the outside stays the
                reconstruction). Not with ``output_type="latent"``.
            generator: accepted for API compatibility (the transfer is deterministic).

        Returns:
            ``VideoStyleTransferOutput`` (or ``(frames,)`` when ``return_dict=False``).
        """
        self._guidance_scale = 1.0  # no classifier-free guidance here (a stock call may have left another)
        adapter = (
            self.motion_adapter
            if isinstance(motion_adapter, str) and motion_adapter == "default"
            else motion_adapter
        )
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type: expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if adapter is not None and any(
            getattr(c, "style_guidance_scale", None) is not None for c in conditioners
        ):
            raise ValueError(
                "conditioners: StyleTokens' style_guidance_scale is not supported with a motion adapter here "
                "(its guidance rows count frames where the motion UNet counts videos); leave it unset, or pass "
                "motion_adapter=None"
            )
        motion_scale = check_motion_scale(motion_scale)
        if adapter is None and motion_scale != 1.0:
            raise ValueError(
                "motion_scale: scales a motion adapter's temporal layers; no motion adapter is given"
            )
        if output_path is not None and output_type == "latent":
            raise ValueError("output_path: cannot write a video when output_type='latent'")
        fusion = TemporalFusion(check_fusion(temporal_fusion)) if temporal_fusion != 0 else None
        if fusion is not None and output_type == "latent":
            raise ValueError("temporal_fusion: fuses decoded frames; not available with output_type='latent'")
        if isinstance(window_size, str):
            if window_size != "auto":
                raise ValueError(f"window_size: expected an integer, None or 'auto', got {window_size!r}")
            limit = int(adapter.config.motion_max_seq_length) if adapter is not None else DEFAULT_WINDOW
            window_size = min(DEFAULT_WINDOW, limit)
        if isinstance(window_overlap, str):
            if window_overlap != "auto":
                raise ValueError(f"window_overlap: expected an integer or 'auto', got {window_overlap!r}")
            window_overlap = min(DEFAULT_OVERLAP, int(window_size) // 2) if window_size is not None else 0
        settings = InjectionSettings(
            gamma, temperature, attention_injection, query_preservation, attention_backend
        )  # type: ignore[arg-type]
        check_inference_steps(num_inference_steps, self.scheduler)
        preset = preset_of(layers)
        if preset is not None and preset.architecture != self.architecture:
            raise ValueError(f"layers={layers!r} is a preset for {preset.architecture.upper()} models")
        processor_names = list(self.unet.attn_processors)  # one walk of the UNet for both layer lists
        injected = resolve_layers(layers, processor_names, self.architecture)
        if adain not in (True, False, "video", "frame"):
            raise ValueError(f"adain: expected True, False, 'video' or 'frame', got {adain!r}")
        adain_mode = "video" if adain is True else (adain or "none")
        if adain_mode == "video" and preset is not None and preset.official_timing:
            adain_mode = "frame"  # the official start latent is not on the cached trajectory
        video_stats: dict[str, torch.Tensor] = {}
        if cross_frame not in (True, False, "unstyled", "all"):
            raise ValueError(f"cross_frame: expected True, False, 'unstyled' or 'all', got {cross_frame!r}")
        state = CrossFrameState(anchors, attention_backend) if cross_frame else None
        if state is not None:
            state.include_injected = cross_frame == "all"
        if controlnet is not None:
            from diffusers import ControlNetModel

            if not isinstance(controlnet, ControlNetModel):
                raise TypeError(
                    f"controlnet: expected a diffusers ControlNetModel, got {type(controlnet).__name__}"
                )
            if list(controlnet.config.block_out_channels) != list(self.unet.config.block_out_channels):
                raise ValueError(
                    "controlnet: its block_out_channels do not match the UNet's (made for another model?)"
                )
            if not 0.0 <= float(control_guidance_end) <= 1.0:
                raise ValueError(
                    f"control_guidance_end: expected a value in [0, 1], got {control_guidance_end}"
                )
        control = (
            (controlnet, float(controlnet_conditioning_scale), float(control_guidance_end))
            if controlnet is not None
            else None
        )
        clip, conditions, style_images, regional, height, width = self.check_video_inputs(
            video,
            style,
            adapter,
            window_size,
            window_overlap,
            height,
            width,
            max_frames,
            output_path,
            style_token_adapter,
            region_context,
        )
        if regional is not None:
            official = bool(preset and preset.official_timing)
            regional.check_pipeline(self, conditioners, adain=adain_mode != "none", official_timing=official)
        length = len(clip)
        windows = plan_windows(length, window_size, window_overlap)
        cross_layers = [
            name
            for name in resolve_layers({"down": True, "mid": True, "up": True}, processor_names)
            if name not in injected
        ]
        if state is not None:
            state.keep_first = len(windows) > 1  # one window: nothing reads frame 0's stored K/V later
        style_pixels = style_slots(style_images, PIL.Image.fromarray(clip.frames[0]), width, height)
        inner_cache = self.inversion_cache if cache is True else (cache or InversionCache())
        style_cache = _StyleOnlyCache(inner_cache)  # type: ignore[arg-type]

        device = self._execution_device
        self.__dict__["_call_device"] = device
        self.__dict__.pop("_call_text_fingerprint", None)  # weights may have changed since the last call
        dtype = self.unet.dtype
        sampler = self._motion_cache.get(self.unet, adapter) if adapter is not None else self.unet
        evals = [0]

        def count(module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            evals[0] += int(sample.shape[0]) * (int(sample.shape[2]) if sample.ndim == 5 else 1)

        hooks = [
            m.register_forward_pre_hook(count, with_kwargs=True)
            for m in {id(self.unet): self.unet, id(sampler): sampler}.values()
        ]
        decoded: list[Any] = []
        writer = VideoWriter(output_path, fps=clip.fps) if output_path is not None else None
        total = len(windows) * num_inference_steps
        try:
            if writer is not None:
                writer.__enter__()
            carried: list[torch.Tensor] | None = None  # per step: latents of frames the next window shares
            with (
                self.progress_bar(total=total) as bar,
                scaled_motion_modules(sampler, motion_scale) if adapter is not None else nullcontext(),
            ):
                for index, (start, end) in enumerate(windows):
                    next_start = windows[index + 1][0] if index + 1 < len(windows) else end
                    shared_before = 0 if index == 0 else windows[index - 1][1] - start
                    shared_after = end - next_start
                    window_regional = regional.for_frames(start, end) if regional is not None else None
                    latents, carry = self._run_window(
                        clip.frames[start:end],
                        style_pixels,
                        conditions,
                        injected,
                        cross_layers,
                        settings,
                        (adain_mode, video_stats),
                        bool(preset and preset.official_timing),
                        style_cache,
                        state,
                        start == 0,
                        sampler,
                        num_inference_steps,
                        height,
                        width,
                        dtype,
                        carried,
                        shared_before,
                        shared_after,
                        conditioners,
                        callback_on_step_end,
                        bar,
                        control,
                        window_regional,
                    )
                    carried = carry
                    keep = next_start - start if index + 1 < len(windows) else end - start
                    kind = "latent" if output_type == "latent" else "np"
                    if window_regional is None:
                        chunk = self.decode_to_output(latents[:keep], kind)
                    else:  # one row per frame; the composite covers the window, so decode it all
                        latents = window_regional.select(latents)
                        chunk = self.decode_to_output(latents, kind, window_regional.composite)[:keep]
                    if fusion is not None:
                        chunk = self._fuse(
                            fusion, chunk, clip.frames[start : start + keep], window_regional, end - start
                        )
                    if writer is not None:
                        writer.extend(np.round(np.clip(chunk, 0, 1) * 255).astype(np.uint8))
                    decoded.append(chunk)
            if writer is not None:
                finishing, writer = writer, None  # the except below must not finish it a second time
                finishing.__exit__(None, None, None)
        except BaseException as error:
            if writer is not None:
                writer.__exit__(type(error), error, error.__traceback__)
            raise
        finally:
            for hook in hooks:
                hook.remove()
            self.__dict__.pop("_call_device", None)
        frames: Any
        if output_type == "latent":
            frames = torch.cat(decoded)
        else:
            array = np.concatenate(decoded)
            if output_type == "pil":
                frames = self.image_processor.numpy_to_pil(array)
            elif output_type == "pt":
                frames = torch.from_numpy(array).permute(0, 3, 1, 2)
            else:
                frames = array
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return VideoStyleTransferOutput(
            frames=frames,
            fps=clip.fps,
            windows=windows,
            unet_evals=evals[0],
            path=Path(output_path) if output_path is not None else None,
        )

    @staticmethod
    def _fuse(
        fusion: TemporalFusion,
        chunk: np.ndarray,
        frames: np.ndarray,
        regional: RegionalStyle | None,
        window_frames: int,
    ) -> np.ndarray:
        """Flow-guided fusion of a window's finished frames (float ``(N, H, W, 3)``; ``frames`` their source
        frames), in order; with regions only inside their union (outside, the frames stay the reconstruction
        exactly). ``window_frames``: the window's length (its masks' frame count)."""
        height, width = chunk.shape[1:3]
        sources = np.stack([np.asarray(fit_to_size(PIL.Image.fromarray(f), width, height)) for f in frames])
        weights = None
        if regional is not None:
            active = torch.tensor([float(w > 0) for w in regional.weights]).view(-1, 1, 1, 1)
            masks = regional.pixel_masks(window_frames, height, width) * active  # weight-0 styles: content
            union = masks.amax(0)[: len(chunk)]
            weights = union.numpy()
        return fusion(chunk, sources, weights)

    @contextmanager
    def _sampling_unet(self, sampler: Any) -> Iterator[None]:
        """Within the block ``self.unet`` is ``sampler`` (the motion UNet, when one samples), so conditioners
        attached to the pipeline load their LoRAs / wrap their layers where the denoising runs; the image
        UNet is put back on exit (the pipeline's config is not touched)."""
        image_unet = self.__dict__["unet"]
        if sampler is image_unet:
            yield
            return
        self.__dict__["unet"] = sampler
        try:
            yield
        finally:
            self.__dict__["unet"] = image_unet

    # ------------------------------------------------------------------------------------ one window
    def _run_window(
        self,
        frames: np.ndarray,
        style_pixels: torch.Tensor,
        conditions: Sequence[StyleCondition],
        injected: tuple[str, ...],
        cross_layers: list[str],
        settings: InjectionSettings,
        adain: tuple[str, dict[str, torch.Tensor]],
        official_timing: bool,
        style_cache: Any,
        state: CrossFrameState | None,
        holds_first: bool,
        sampler: Any,
        steps: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        carried: list[torch.Tensor] | None,
        shared_before: int,
        shared_after: int,
        conditioners: Sequence[Conditioner],
        callback_on_step_end: Any,
        bar: Any,
        control: tuple[Any, float, float] | None = None,
        regional: RegionalStyle | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Invert, then denoise one window.

        Rows are style-major: one stream of the window's frames per style (``S`` styles, ``F`` frames:
        ``S * F`` rows; each stream is one video for cross-frame and temporal attention). With ``regional``
        the streams are blended after every step (all of a frame's rows equal).

        Returns:
            (final latents (S * F, C, h, w), per-step latents (S, shared_after, C, h, w) of the last
            ``shared_after`` frames of every stream for the next window, or None).
        """
        device = self.__dict__["_call_device"]
        count = len(frames)
        streams = len(conditions)
        pixels = torch.stack([to_tensor(fit_to_size(PIL.Image.fromarray(f), width, height)) for f in frames])
        adain_mode, video_stats = adain
        injection = AttentionInjection(
            injected,
            settings,
            adain=adain_mode == "frame",
            strategy="features",
            official_timing=official_timing,
            cache=style_cache,
            # the whole window (and the styles, when not cached) in one batch
            inversion_batch=count + streams,
        )
        call = {
            "contents": pixels,
            "styles": style_pixels,
            "rows": [Row(i, s, conditions[s].steps) for s in range(streams) for i in range(count)],
            "num_inference_steps": steps,
            "unet_conditioning": lambda b, dt: self.unet_conditioning(b, dt, height, width),
        }
        injection.prepare(self, **call)
        call["injection"] = injection
        latents = injection.start_latents.to(device=device, dtype=dtype)
        if adain_mode == "video":
            if holds_first:
                first = latents[:1].float()
                video_stats["mean"] = first.mean(dim=(2, 3), keepdim=True)
                video_stats["std"] = first.std(dim=(2, 3), keepdim=True)
            references = regional.references if regional is not None else [True] * streams
            latents = torch.cat(
                [
                    video_adain(
                        stream,
                        video_stats["mean"],
                        video_stats["std"],
                        injection.trajectories[injection.style_ids[s]][1][-1][None].float(),
                    )
                    if references[s]
                    else stream  # a LoRA / token stream starts from the frames' own inverted latents
                    for s, stream in enumerate(latents.split(count))
                ]
            )
        injection.start_latents = latents  # the regions blend the (AdaIN'd) starts of a frame's streams
        extra = [regional, *conditioners] if regional is not None else list(conditioners)
        for conditioner in extra:
            conditioner.prepare(self, **call)
        latents = injection.start_latents.to(device=device, dtype=dtype)
        timesteps = injection.sampling_timesteps
        self.scheduler.set_timesteps(steps, device=device)
        conditioning = self.unet_conditioning(streams * count, dtype, height, width)
        if control is not None:
            tiles = [to_tensor(gray_tile(PIL.Image.fromarray(f), width, height)) for f in frames]
            control_pixels = ((torch.stack(tiles) + 1) / 2).to(device=device, dtype=control[0].dtype)
            control_pixels = control_pixels.repeat(streams, 1, 1, 1)
        motion = sampler is not self.unet
        if shared_before:
            weights = torch.tensor(
                [(shared_before - o) / (shared_before + 1) for o in range(shared_before)],
                device=device,
                dtype=dtype,
            ).view(-1, 1, 1, 1)
        record: list[torch.Tensor] | None = [] if shared_after else None
        if state is not None:
            state.frames, state.holds_first = count, holds_first
        all_conditioners = [injection, *extra]
        with (
            self._sampling_unet(sampler),  # every conditioner acts on the UNet that samples
            cross_frame_processors(
                sampler, cross_layers if state is not None else [], state or CrossFrameState()
            ),
            attached(self, [injection]),
            anchored_injection(sampler, state)
            if state is not None and state.include_injected
            else nullcontext(),
            attached(self, extra),
        ):
            text_embedding_hook_last(sampler)  # after the conditioners' pre-hooks (e.g. guidance rows)
            for i, t in enumerate(timesteps):
                t = t.to(device)
                if state is not None:
                    state.step = i
                for conditioner in all_conditioners:
                    conditioner.on_step_begin(i, int(t), latents)
                residuals: dict[str, Any] = {}
                if control is not None and i / len(timesteps) < control[2]:
                    down, mid = control[0](
                        latents.to(control[0].dtype),
                        t,
                        encoder_hidden_states=conditioning["encoder_hidden_states"].to(control[0].dtype),
                        controlnet_cond=control_pixels,
                        conditioning_scale=control[1],
                        return_dict=False,
                    )
                    residuals = {
                        "down_block_additional_residuals": down,
                        "mid_block_additional_residual": mid,
                    }
                if motion:  # (streams, C, frames, h, w): each style stream is one video
                    sample = latents.reshape(streams, count, *latents.shape[1:]).permute(0, 2, 1, 3, 4)
                    noise = sampler(sample, t, **conditioning, **residuals, return_dict=False)[0]
                    noise = noise.permute(0, 2, 1, 3, 4).reshape(latents.shape)
                else:
                    noise = sampler(latents, t, **conditioning, **residuals, return_dict=False)[0]
                latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
                if shared_before and carried is not None:
                    previous = carried[i].to(latents.dtype)
                    fused = latents.reshape(streams, count, *latents.shape[1:])
                    fused[:, :shared_before] = weights * previous + (1 - weights) * fused[:, :shared_before]
                    latents = fused.reshape(latents.shape)
                for conditioner in all_conditioners:
                    latents = conditioner.on_step_end(i, int(t), latents)
                if callback_on_step_end is not None:
                    outputs = callback_on_step_end(self, i, t, {"latents": latents})
                    latents = outputs.pop("latents", latents)
                if record is not None:
                    record.append(
                        latents.reshape(streams, count, *latents.shape[1:])[:, count - shared_after :].clone()
                    )
                bar.update()
        return latents, record
