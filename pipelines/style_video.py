"""``StyleVideoPipeline``: text (+ style conditions) to video with an AnimateDiff motion adapter.

diffusers' ``AnimateDiffPipeline`` does the work (prompt encoding, classifier-free guidance, motion UNet,
FreeNoise, FreeInit, LoRA loading, decoding); this subclass adds the common conditioning interface:

- ``style=`` (an image, a ``StyleCondition`` or a list of them; routed by ``stylekit.video_conditions``):
  ``image`` -> StyleID key/value injection. The style image is DDIM-inverted once through the motion UNet
  (as a one-frame video) with its self-attention K/V captured (and cached in the pipeline's
  ``inversion_cache``); while the video is generated, every frame's targeted self-attention attends to the
  style's K/V of the same timestep (temperature on the query; no content, so no query preservation).
  ``weight`` < 1 blends the injected with the plain attention output, ``mask`` restricts the injection to
  a region, ``steps`` to part of the schedule. ``text`` / ``embedding`` -> style tokens (``style_tokens=``
  adapter, default the bundled one when it fits); ``lora`` -> ``LoRAStyle``.
- ``conditioners=``: any other conditioners, attached for the call; their ``on_step_begin`` /
  ``on_step_end`` see the step index, timestep and the video latents ``(B, C, F, h, w)`` (``on_step_begin``
  gets the UNet's input, i.e. the latents doubled under classifier-free guidance).

The UNet's attention processors and LoRA state are restored after every call, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from stylekit.attention import InjectionController, InjectionSettings, installed_processors, resolve_layers
from stylekit.attention.conditioner import encode_latents, fp32_for_inversion
from stylekit.attention.targeting import LayerSpec
from stylekit.cache import CacheKey, InversionCache, image_digest, scheduler_digest
from stylekit.conditioning import (
    Conditioner,
    ConditionerBase,
    attached,
    one_call_at_a_time,
)
from stylekit.images import fit_to_size, load_image, to_tensor
from stylekit.inversion import ddim_invert
from stylekit.lora_style import LoRAStyle
from stylekit.models import pipeline_fingerprint
from stylekit.regions import load_masks
from stylekit.tokens import StyleTokens, resolve_adapter
from stylekit.tokens.scales import ScaleSpec
from stylekit.video_conditions import StyleArgument, as_conditions, route_conditions
from stylekit.video_models import (
    check_motion_adapter,
    check_motion_scale,
    motion_unet,
    scaled_motion_modules,
    text_embedding_hook_last,
)


class VideoStyleInjection(ConditionerBase):
    """StyleID K/V injection from one style image into every frame of a generated video.

    Args:
        layers: processor names of the motion UNet's targeted spatial self-attention layers.
        temperature: attention temperature on injected layers (> 0).
        steps: ``(start, end)`` fractions of the schedule where injection is active.
        cache: an ``InversionCache`` (None: invert every call).
        weight: share of the injected attention output in [0, 1] (the rest is the layer's plain output).
        masks: ``(F, h, w)`` latent-resolution region masks in [0, 1] per frame (one frame: every frame);
            outside, targeted layers keep their plain self-attention. None: everywhere.
    """

    def __init__(
        self,
        layers: Sequence[str],
        temperature: float = 1.5,
        steps: tuple[float, float] = (0.0, 1.0),
        cache: InversionCache | None = None,
        backend: str = "sdpa",
        weight: float = 1.0,
        masks: torch.Tensor | None = None,
    ) -> None:
        self.layers = tuple(layers)
        self.settings = InjectionSettings(
            gamma=0.0,
            temperature=temperature,
            query_preservation=False,
            backend=backend,  # type: ignore[arg-type]
        )
        self.steps = steps
        self.cache = cache
        self.controller = InjectionController(self.settings)
        # (F or 1, h, w) share of the injected output; (1, 1, 1) = the same everywhere; None = all of it
        self.token_masks = weight * (masks.float() if masks is not None else torch.ones(1, 1, 1))
        if masks is None and weight == 1.0:
            self.token_masks = None
        self.style_id = ""
        self.timesteps: list[int] = []

    def prepare(self, pipe: Any, *, styles: torch.Tensor, num_inference_steps: int, **_: Any) -> None:
        """Invert ``styles[0]`` ((3, H, W) pixels in [-1, 1]) through the motion UNet, or take it from the cache."""
        device = pipe._execution_device
        inversion_scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        inversion_scheduler.set_timesteps(num_inference_steps)
        pipe.scheduler.set_timesteps(num_inference_steps, device=device)  # the call sets the same again
        inverted = {int(t) for t in inversion_scheduler.timesteps}
        missing = [int(t) for t in pipe.scheduler.timesteps if int(t) not in inverted]
        if missing:  # checked here, before the inversion, instead of at the first sampling step
            raise ValueError(
                f"style injection: {type(pipe.scheduler).__name__} samples timestep {missing[0]}, which the "
                "style's DDIM inversion does not reach; use a DDIM scheduler (the style is inverted on the DDIM "
                "schedule)"
            )
        store_dtype = torch.float16 if device.type == "cuda" else torch.float32
        pixels = styles[:1]
        key = CacheKey(
            image_sha256=image_digest(pixels[0]),
            model=pipeline_fingerprint(pipe),
            scheduler=scheduler_digest(inversion_scheduler.config),
            steps=num_inference_steps,
            layers=self.layers,
            dtype=str(store_dtype),
            resolution=(int(pixels.shape[-2]), int(pixels.shape[-1])),
            role="style",
            strategy="features",
            timing="video-corrected",
        )
        self.style_id = key.digest
        tensors = self.cache.get(key) if self.cache is not None else None
        if tensors is None:
            tensors = self._invert(pipe, pixels, inversion_scheduler, num_inference_steps, store_dtype)
            if self.cache is not None:
                self.cache.put(key, tensors)
        self.controller.bank.load(self.style_id, tensors, device)
        self.timesteps = [int(t) for t in tensors["timesteps"].tolist()]

    def _invert(
        self, pipe: Any, pixels: torch.Tensor, scheduler: Any, steps: int, store_dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        device = pipe._execution_device
        controller = InjectionController(self.settings, store_dtype=store_dtype)
        controller.capture_rows = [(self.style_id, ("k", "v"))]
        pipe.__dict__["_call_device"] = device
        try:
            with fp32_for_inversion(pipe):
                unet = pipe.unet
                latents = encode_latents(pipe.vae, pixels.to(device=device, dtype=pipe.vae.dtype)).to(
                    unet.dtype
                )
                empty, _ = pipe.encode_prompt("", device, 1, False)
                empty = empty.to(unet.dtype)

                def model(sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
                    return unet(sample[:, :, None], timestep, encoder_hidden_states=empty, return_dict=False)[
                        0
                    ][:, :, 0]

                def before_eval(_: int, timestep: int) -> None:
                    controller.timestep = timestep

                controller.mode = "capture"
                with (
                    installed_processors(unet, self.layers, controller),
                    pipe.progress_bar(total=steps) as bar,
                ):
                    ddim_invert(model, scheduler, latents, steps, False, before_eval, bar.update)
        finally:
            controller.mode = "off"
            pipe.__dict__.pop("_call_device", None)
        return controller.bank.to_tensors(self.style_id)

    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        controller = self.controller
        schedule = self.timesteps

        def pre_hook(module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            t = int(timestep.reshape(-1)[0]) if torch.is_tensor(timestep) else int(timestep)
            if t not in schedule:
                raise ValueError(
                    f"style injection: timestep {t} was not inverted; use a DDIM scheduler with the same "
                    "num_inference_steps (the style is inverted on the DDIM schedule)"
                )
            rows = int(sample.shape[0]) * int(sample.shape[2])
            position = (len(schedule) - 1 - schedule.index(t)) / len(schedule)  # 0 at the first sampling step
            active = self.steps[0] <= position < self.steps[1]
            controller.timestep = t
            controller.pairs = [("", self.style_id)] * rows
            controller.row_active = [active] * rows
            controller.token_masks = self._row_masks(sample)

        handle = pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
        controller.mode = "inject"
        try:
            with installed_processors(pipe.unet, self.layers, controller):
                yield
        finally:
            handle.remove()
            controller.mode = "off"
            controller.token_masks = None

    def _row_masks(self, sample: torch.Tensor) -> torch.Tensor | None:
        """``(B * F, h, w)`` masks for the rows of a ``(B, C, F, h, w)`` UNet sample (row ``b * F + f``)."""
        masks = self.token_masks
        if masks is None:
            return None
        batch, frames, size = int(sample.shape[0]), int(sample.shape[2]), tuple(sample.shape[-2:])
        if len(masks) == 1:
            masks = masks.expand(frames, *size)
        elif len(masks) != frames:
            raise ValueError(f"style.mask: masks for {len(masks)} frames, but the UNet runs {frames} frames")
        return masks.to(sample.device).repeat(batch, 1, 1)


class StyleVideoPipeline(AnimateDiffPipeline):
    """``AnimateDiffPipeline`` + the conditioning interface (module docstring).

    ``unet`` may be an image UNet (converted with the ``motion_adapter``, which is checked against it and
    keeps ``mini``'s pooled-text embedding) or a ``UNetMotionModel``.
    """

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel | UNetMotionModel,
        motion_adapter: MotionAdapter,
        scheduler: KarrasDiffusionSchedulers,
        feature_extractor: CLIPImageProcessor = None,
        image_encoder: CLIPVisionModelWithProjection = None,
    ) -> None:
        if isinstance(unet, UNet2DConditionModel):
            if motion_adapter is None:
                raise ValueError("motion_adapter: StyleVideoPipeline needs a MotionAdapter for an image UNet")
            check_motion_adapter(unet, motion_adapter)
            unet = motion_unet(unet, motion_adapter)
        super().__init__(
            vae, text_encoder, tokenizer, unet, motion_adapter, scheduler, feature_extractor, image_encoder
        )

    @property
    def inversion_cache(self) -> InversionCache:
        cache = self.__dict__.get("_inversion_cache")
        if cache is None:
            cache = self.__dict__["_inversion_cache"] = InversionCache()
        return cache

    @property
    def style_tokens(self) -> Any:
        """The default style-token adapter for ``text`` / ``embedding`` styles (None: the bundled one when it
        fits the UNet). Set it to a ``StyleTokenAdapter`` or its folder."""
        return self.__dict__.get("_style_tokens")

    @style_tokens.setter
    def style_tokens(self, adapter: Any) -> None:
        self.__dict__["_style_tokens"] = adapter

    def _token_adapter(self, adapter: Any) -> Any:
        """``stylekit.tokens.resolve_adapter`` for this UNet (the bundled adapter is loaded once per pipeline)."""
        adapter = self.style_tokens if adapter is None else adapter
        if adapter is not None:
            return resolve_adapter(adapter, self.unet)
        bundled = self.__dict__.get("_bundled_style_tokens")
        if bundled is None or bundled[0] is not self.unet:
            bundled = self.__dict__["_bundled_style_tokens"] = (
                self.unet,
                resolve_adapter(None, self.unet),
            )
        return bundled[1]

    @torch.no_grad()
    @one_call_at_a_time
    def __call__(  # type: ignore[override]
        self,
        prompt: str | list[str] | None = None,
        style: StyleArgument = None,
        temperature: float = 1.5,
        layers: LayerSpec = None,
        conditioners: Sequence[Conditioner] = (),
        cache: InversionCache | bool = True,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        style_tokens: Any = None,
        style_tokens_scale: ScaleSpec = 1.0,
        style_guidance_scale: float | None = None,
        motion_scale: float = 1.0,
        **kwargs: Any,
    ) -> Any:
        """Generate a video from ``prompt``, styled by ``style`` and ``conditioners``.

        Args:
            prompt: the text prompt(s), as in ``AnimateDiffPipeline``.
            style: a style image, a ``StyleCondition`` or a list of them (None: none). ``image``: StyleID
                injection (one per call; ``weight`` blends it, ``mask`` restricts it to a region);
                ``text`` / ``embedding``: style tokens; ``lora``: a LoRA adapter (``weight`` = its scale).
            temperature: attention temperature on injected layers.
            layers: the injected layers (preset, block dict or names; default: the model's StyleID preset).
            conditioners: further conditioners attached for the call (e.g. ``StyleTokens``, ``LoRAStyle``).
            cache: True = the pipeline's ``inversion_cache``; an ``InversionCache``; False = none.
            style_tokens: the ``StyleTokenAdapter`` (or folder) for text/embedding styles (None: the
                pipeline's ``style_tokens``, else the bundled adapter when it fits the UNet).
            style_tokens_scale: ``StyleTokens.scale`` (a number, per-block dict or preset).
            style_guidance_scale: ``StyleTokens.style_guidance_scale`` (StyleMaster's separate guidance).
            motion_scale: the temporal layers' contribution (``stylekit.video_models.scaled_motion_modules``):
                1 = as trained, 0 = none (the frames are then generated independently).
            num_inference_steps, height, width, callback_on_step_end, **kwargs: ``AnimateDiffPipeline``'s
                arguments (``num_frames``, ``guidance_scale``, ``generator``, ``output_type``, ...).

        Returns:
            ``AnimateDiffPipelineOutput`` (``frames``), as the stock pipeline.
        """
        factor = int(self.vae_scale_factor)
        height = height or int(self.unet.config.sample_size) * factor
        width = width or int(self.unet.config.sample_size) * factor
        num_frames = int(kwargs.get("num_frames", 16))
        motion_scale = check_motion_scale(motion_scale)
        routed = route_conditions(as_conditions(style))
        InjectionSettings(temperature=temperature)  # range check
        derived: list[Conditioner] = []
        if routed.tokens:
            derived.append(
                StyleTokens(
                    self._token_adapter(style_tokens),
                    routed.tokens,
                    scale=style_tokens_scale,
                    style_guidance_scale=style_guidance_scale,
                )
            )
        if routed.loras:
            derived.append(LoRAStyle.from_conditions(routed.loras))
        injection = None
        condition = routed.injection
        if condition is not None and float(condition.weight) > 0.0:
            if getattr(self, "free_noise_enabled", False):
                raise ValueError(
                    "style: a style image (StyleID injection) does not combine with FreeNoise: its one-frame "
                    "inversion cannot go through FreeNoise's context windows; call pipe.disable_free_noise(), "
                    "or style the video with style tokens or a LoRA (they work with FreeNoise)"
                )
            image = load_image(condition.image, "style.image")
            masks = None
            if condition.mask is not None:
                pixels = load_masks(condition.mask, num_frames, height, width, argument="style.mask")
                masks = F.adaptive_avg_pool2d(pixels[:, None], (height // factor, width // factor))[:, 0]
            names = resolve_layers(layers, self.unet.attn_processors.keys(), "sd")
            inversion_cache = self.inversion_cache if cache is True else (cache or None)
            injection = VideoStyleInjection(
                names,
                temperature,
                condition.steps,  # type: ignore[arg-type]
                inversion_cache,
                weight=float(condition.weight),
                masks=masks,
            )
        call = {
            "num_inference_steps": num_inference_steps,
            "height": height,
            "width": width,
            "num_frames": num_frames,
            "batch_size": _batch_size(prompt, kwargs),
        }
        active: list[Conditioner] = [*derived, *conditioners]
        for conditioner in active:  # checks (adapters, LoRAs) before any model work
            conditioner.prepare(self, **call)
        if injection is not None:
            pixels = to_tensor(fit_to_size(image, width, height))[None]
            injection.prepare(self, styles=pixels, num_inference_steps=num_inference_steps)
            active.append(
                injection
            )  # attached last: its hook sees the final batch (e.g. three-pass guidance)

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if "latents" in tensors:
                for conditioner in active:
                    tensors["latents"] = conditioner.on_step_end(step, int(timestep), tensors["latents"])
            if callback_on_step_end is not None:
                tensors = callback_on_step_end(pipe, step, timestep, tensors)
            return tensors

        def on_step_begin(module: Any, args: tuple, hook_kwargs: dict) -> None:
            sample = args[0] if args else hook_kwargs["sample"]
            timestep = args[1] if len(args) > 1 else hook_kwargs["timestep"]
            t = int(torch.as_tensor(timestep).reshape(-1)[0])
            schedule = [int(x) for x in self.scheduler.timesteps.tolist()]
            if t in schedule:
                for conditioner in active:
                    conditioner.on_step_begin(schedule.index(t), t, sample)

        use_callback = callback_on_step_end is not None or bool(active)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            kwargs.setdefault("callback_on_step_end_tensor_inputs", callback_on_step_end.tensor_inputs)
        inputs = list(kwargs.get("callback_on_step_end_tensor_inputs", ["latents"]))
        if active and "latents" not in inputs:  # the conditioners' on_step_end work on the latents
            kwargs["callback_on_step_end_tensor_inputs"] = [*inputs, "latents"]
        handle = self.unet.register_forward_pre_hook(on_step_begin, with_kwargs=True)
        try:
            with attached(self, active), scaled_motion_modules(self.unet, motion_scale):
                text_embedding_hook_last(self.unet)
                return super().__call__(
                    prompt,
                    height=height,
                    width=width,
                    num_inference_steps=num_inference_steps,
                    callback_on_step_end=on_step_end if use_callback else None,
                    **kwargs,
                )
        finally:
            handle.remove()


def _batch_size(prompt: str | list[str] | None, kwargs: dict[str, Any]) -> int:
    """Videos per UNet half (prompts x ``num_videos_per_prompt``), as ``AnimateDiffPipeline`` counts them."""
    if prompt is None:
        embeds = kwargs.get("prompt_embeds")
        count = int(embeds.shape[0]) if embeds is not None else 1
    else:
        count = 1 if isinstance(prompt, str) else len(prompt)
    return count * int(kwargs.get("num_videos_per_prompt") or 1)
