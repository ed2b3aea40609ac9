"""``StyleVideoPipeline``: text (+ style conditions) to video with an AnimateDiff motion adapter.

diffusers' ``AnimateDiffPipeline`` does the work (prompt encoding, classifier-free guidance, motion UNet,
FreeNoise, FreeInit, LoRA loading, decoding); this subclass adds the common conditioning interface:

- ``style=`` (an image or ``StyleCondition``): StyleID key/value injection. The style image is DDIM-inverted
  once through the motion UNet (as a one-frame video) with its self-attention K/V captured (and cached in
  the pipeline's ``inversion_cache``); while the video is generated, every frame's targeted self-attention
  attends to the style's K/V of the same timestep (temperature on the query; no content, so no query
  preservation). ``StyleCondition.steps`` limits the injection to part of the schedule.
- ``conditioners=``: any other conditioners, attached for the call; their ``on_step_end`` sees the video
  latents ``(B, C, F, h, w)``.

The UNet's attention processors are restored after every call, also on error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    AnimateDiffPipeline,
    AutoencoderKL,
    DDIMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from diffusers.schedulers import KarrasDiffusionSchedulers
from transformers import CLIPImageProcessor, CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from stylekit.attention import InjectionController, InjectionSettings, installed_processors, resolve_layers
from stylekit.attention.conditioner import encode_latents, fp32_for_inversion
from stylekit.attention.targeting import LayerSpec
from stylekit.cache import CacheKey, InversionCache, image_digest, scheduler_digest
from stylekit.conditioning import (
    Conditioner,
    ConditionerBase,
    ImageLike,
    StyleCondition,
    as_condition,
    attached,
)
from stylekit.images import fit_to_size, load_image, to_tensor
from stylekit.inversion import ddim_invert
from stylekit.models import model_fingerprint
from stylekit.video_models import check_motion_adapter, motion_unet


class VideoStyleInjection(ConditionerBase):
    """StyleID K/V injection from one style image into every frame of a generated video.

    Args:
        layers: processor names of the motion UNet's targeted spatial self-attention layers.
        temperature: attention temperature on injected layers (> 0).
        steps: ``(start, end)`` fractions of the schedule where injection is active.
        cache: an ``InversionCache`` (None: invert every call).
    """

    def __init__(
        self,
        layers: Sequence[str],
        temperature: float = 1.5,
        steps: tuple[float, float] = (0.0, 1.0),
        cache: InversionCache | None = None,
        backend: str = "sdpa",
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
        self.style_id = ""
        self.timesteps: list[int] = []

    def prepare(self, pipe: Any, *, styles: torch.Tensor, num_inference_steps: int, **_: Any) -> None:
        """Invert ``styles[0]`` ((3, H, W) pixels in [-1, 1]) through the motion UNet, or take it from the cache."""
        device = pipe._execution_device
        unet = pipe.unet
        inversion_scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
        store_dtype = torch.float16 if device.type == "cuda" else torch.float32
        pixels = styles[:1]
        key = CacheKey(
            image_sha256=image_digest(pixels[0]),
            model=f"{model_fingerprint(unet)}:{model_fingerprint(pipe.vae)}",
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

        handle = pipe.unet.register_forward_pre_hook(pre_hook, with_kwargs=True)
        controller.mode = "inject"
        try:
            with installed_processors(pipe.unet, self.layers, controller):
                yield
        finally:
            handle.remove()
            controller.mode = "off"


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

    @torch.no_grad()
    def __call__(  # type: ignore[override]
        self,
        prompt: str | list[str] | None = None,
        style: StyleCondition | ImageLike | None = None,
        temperature: float = 1.5,
        layers: LayerSpec = None,
        conditioners: Sequence[Conditioner] = (),
        cache: InversionCache | bool = True,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        callback_on_step_end: Callable[..., dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Generate a video from ``prompt``, styled by ``style`` and ``conditioners``.

        Args:
            prompt: the text prompt(s), as in ``AnimateDiffPipeline``.
            style: a style image or ``StyleCondition(image=...)`` for StyleID K/V injection (None: none).
            temperature: attention temperature on injected layers.
            layers: the injected layers (preset, block dict or names; default: the model's StyleID preset).
            conditioners: further conditioners attached for the call.
            cache: True = the pipeline's ``inversion_cache``; an ``InversionCache``; False = none.
            num_inference_steps, height, width, callback_on_step_end, **kwargs: ``AnimateDiffPipeline``'s
                arguments (``num_frames``, ``guidance_scale``, ``generator``, ``output_type``, ...).

        Returns:
            ``AnimateDiffPipelineOutput`` (``frames``), as the stock pipeline.
        """
        factor = int(self.vae_scale_factor)
        height = height or int(self.unet.config.sample_size) * factor
        width = width or int(self.unet.config.sample_size) * factor
        active: list[Conditioner] = []
        if style is not None:
            condition = as_condition(style)
            if condition.image is None:
                raise ValueError("style: StyleID injection needs StyleCondition.image (a reference image)")
            if condition.mask is not None:
                raise ValueError("style: masks are not supported by StyleVideoPipeline yet")
            image = load_image(condition.image, "style.image")
            InjectionSettings(temperature=temperature)  # range check
            names = resolve_layers(layers, self.unet.attn_processors.keys(), "sd")
            inversion_cache = self.inversion_cache if cache is True else (cache or None)
            injection = VideoStyleInjection(names, temperature, condition.steps, inversion_cache)  # type: ignore[arg-type]
            pixels = to_tensor(fit_to_size(image, width, height))[None]
            injection.prepare(self, styles=pixels, num_inference_steps=num_inference_steps)
            active.append(injection)
        for conditioner in conditioners:
            conditioner.prepare(self, num_inference_steps=num_inference_steps, height=height, width=width)
            active.append(conditioner)

        def on_step_end(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if "latents" in tensors:
                for conditioner in conditioners:
                    tensors["latents"] = conditioner.on_step_end(step, int(timestep), tensors["latents"])
            if callback_on_step_end is not None:
                tensors = callback_on_step_end(pipe, step, timestep, tensors)
            return tensors

        use_callback = callback_on_step_end is not None or bool(conditioners)
        with attached(self, active):
            return super().__call__(
                prompt,
                height=height,
                width=width,
                num_inference_steps=num_inference_steps,
                callback_on_step_end=on_step_end if use_callback else None,
                **kwargs,
            )
