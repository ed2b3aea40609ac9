"""``StyleInjectionPipeline``: training-free StyleID style transfer for SD 1.x / 2.x.

The pipeline is thin: it validates inputs, lets the ``AttentionInjection`` conditioner (and any extra
conditioners) prepare and attach, and runs a plain DDIM denoising loop on the empty prompt without
guidance, as StyleID does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import BaseOutput

from stylekit.attention import AttentionInjection, InjectionSettings, Row, preset_of, resolve_layers
from stylekit.attention.targeting import LayerSpec
from stylekit.cache import STRATEGIES, InversionCache
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
from stylekit.models import text_encoder_fingerprint
from stylekit.regions import RegionalStyle


@dataclass
class StyleInjectionPipelineOutput(BaseOutput):
    """Output of the StyleID pipelines.

    Attributes:
        images: stylized images (PIL list, (B, H, W, 3) numpy in [0, 1], or a tensor, per ``output_type``).
        pairs: ``(content_index, style_index)`` of each image, content-major.
        unet_evals: UNet evaluations spent in this call, counted as batch rows.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor
    pairs: list[tuple[int, int]]
    unet_evals: int


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def style_slots(
    style_images: Sequence[PIL.Image.Image | None], fallback: PIL.Image.Image, width: int, height: int
) -> torch.Tensor:
    """The styles' pixels (S, 3, height, width) in [0, 1]. A region without a reference image (LoRA / style
    tokens, ``None``) runs with the injection off; its slot borrows another style's image (inverted anyway),
    else ``fallback`` (inverted once more, as a style)."""
    placeholder = next((im for im in style_images if im is not None), fallback)
    return torch.stack(
        [to_tensor(fit_to_size(placeholder if im is None else im, width, height)) for im in style_images]
    )


class StyleInjectionMixin:
    """The StyleID call shared by the SD and SDXL pipelines."""

    architecture = "sd"
    default_cache_strategy = "features"
    _callback_tensor_inputs = ["latents"]

    # The pipeline keeps one in-memory cache: a style inverted once is reused by later calls.
    @property
    def inversion_cache(self) -> InversionCache:
        cache = self.__dict__.get("_inversion_cache")
        if cache is None:
            cache = InversionCache()
            self.__dict__["_inversion_cache"] = cache
        return cache

    @inversion_cache.setter
    def inversion_cache(self, cache: InversionCache) -> None:
        self.__dict__["_inversion_cache"] = cache

    def unet_conditioning(
        self, batch_size: int, dtype: torch.dtype, height: int, width: int
    ) -> dict[str, Any]:
        """UNet keyword arguments for the empty prompt (no guidance) for ``batch_size`` rows."""
        raise NotImplementedError

    @property
    def native_resolution(self) -> int:
        """The model's training resolution in pixels (``unet.config.sample_size`` x VAE factor)."""
        return int(self.unet.config.sample_size) * int(self.vae_scale_factor)

    def check_style_inputs(
        self,
        content_image: Any,
        style: Any,
        gamma: float,
        temperature: float,
        num_inference_steps: int,
        layers: LayerSpec,
        height: int | None,
        width: int | None,
        output_type: str,
        cache_strategy: str | None,
    ) -> tuple[
        list[PIL.Image.Image], list[StyleCondition], list[PIL.Image.Image | None], tuple[str, ...], int, int
    ]:
        """Validate every argument and load every image before any model work.

        Returns:
            (content images, style conditions, style images (None for a masked condition without an
            image: a LoRA / style-token region), layer names, height, width).

        Raises:
            ValueError / TypeError naming the argument and what was expected.
        """
        InjectionSettings(gamma=gamma, temperature=temperature)  # range checks
        check_inference_steps(num_inference_steps, self.scheduler)
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type: expected 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if cache_strategy is not None and cache_strategy not in STRATEGIES:
            raise ValueError(f"cache_strategy: expected one of {STRATEGIES}, got {cache_strategy!r}")
        preset = preset_of(layers)
        if preset is not None and preset.architecture != self.architecture:
            raise ValueError(
                f"layers={layers!r} is a preset for {preset.architecture.upper()} models; this pipeline is "
                f"{self.architecture.upper()} (use e.g. {'styleid-xl' if self.architecture == 'sdxl' else 'styleid'})"
            )
        layer_names = resolve_layers(layers, self.unet.attn_processors.keys(), self.architecture)
        factor = int(self.vae_scale_factor)
        height = round_to_factor(int(height or self.native_resolution), factor, "height")
        width = round_to_factor(int(width or self.native_resolution), factor, "width")
        contents = _as_list(content_image)
        if not contents:
            raise ValueError("content_image: expected at least one image")
        conditions = reference_conditions(style)
        content_images = [load_image(c, f"content_image[{i}]") for i, c in enumerate(contents)]
        style_images = [
            None if c.image is None else load_image(c.image, f"style[{i}].image")
            for i, c in enumerate(conditions)
        ]
        return content_images, conditions, style_images, layer_names, height, width

    def decode_to_output(
        self, latents: torch.Tensor, output_type: str, composite: Callable[..., torch.Tensor] | None = None
    ) -> Any:
        """Decode latents with the VAE (fp32 when the VAE asks for upcasting) and post-process.
        ``composite(latents, decode)``, if given, makes the (B, 3, H, W) images in [-1, 1] itself (``decode``
        maps latents to such images; used for the regional pixel composite, which may decode other latents)."""
        if output_type == "latent":
            return latents
        vae = self.vae
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            vae.to(torch.float32)
        try:
            shift = getattr(vae.config, "shift_factor", None) or 0.0

            def decode(z: torch.Tensor) -> torch.Tensor:
                return vae.decode(z.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]

            image = decode(latents) if composite is None else composite(latents, decode)
        finally:
            if upcast:
                vae.to(torch.float16)
        return self.image_processor.postprocess(image.detach(), output_type=output_type)

    @torch.no_grad()
    @one_call_at_a_time
    def __call__(
        self,
        content_image: ImageLike | Sequence[ImageLike],
        style: StyleCondition | ImageLike | Sequence[StyleCondition | ImageLike],
        gamma: float = 0.75,
        temperature: float = 1.5,
        attention_injection: bool = True,
        query_preservation: bool = True,
        adain: bool = True,
        layers: LayerSpec = None,
        num_inference_steps: int = 50,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cache: InversionCache | bool = True,
        cache_strategy: str | None = None,
        conditioners: Sequence[Conditioner] = (),
        style_token_adapter: Any = None,
        region_context: float = 0.0,
        attention_backend: str = "sdpa",
        callback_on_step_end: Callable[[Any, int, Any, dict[str, Any]], dict[str, Any]] | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> StyleInjectionPipelineOutput | tuple:
        """Stylize every content image with every style (content-major order).

        Args:
            content_image: one image or a list (path, PIL, HxWxC array, CxHxW tensor in [0, 1]).
            style: one style image / ``StyleCondition`` or a list; ``StyleCondition.steps`` limits the
                injection to a fraction of the schedule. When a condition has a ``mask``, each style acts
                only in its region (None = everywhere), overlaps blend by ``weight``, the rest stays the
                content, and there is one output per content (``stylekit.regions.RegionalStyle``). A masked
                condition's style may also (or instead of an image) be a LoRA (``lora``) or style tokens
                (``embedding`` / ``text``), per region (``stylekit.regions.RegionAdapters``).
            gamma: query preservation, in [0, 1] (1 keeps the content query).
            temperature: attention temperature T > 0 on injected layers.
            attention_injection / query_preservation / adain: switch each StyleID part (ablations).
            layers: a preset (``styleid``, ``styleid-diffusers``, ``styleid-official``, ``styleid-xl``,
                ...), a block-vocabulary dict or layer names; None = the architecture's default.
            num_inference_steps: DDIM steps N (inversion and sampling).
            height, width: output size (multiples of the VAE factor; default: the model's native size).
                Content and style images are resized to cover it and centre-cropped.
            generator: accepted for API compatibility; StyleID is deterministic (DDIM eta = 0, VAE mode).
            output_type: "pil", "np", "pt" or "latent".
            cache: True = the pipeline's in-memory ``inversion_cache``; an ``InversionCache`` (e.g. on disk);
                False = no reuse.
            cache_strategy: "features" or "trajectory" (default: the pipeline's ``default_cache_strategy``).
            conditioners: extra conditioners composed into this call.
            style_token_adapter: the ``StyleTokenAdapter`` (or its folder) for regions given as ``embedding``
                / ``text``; None = the bundled one (``stylekit.tokens.load_default_adapter``).
            region_context: for masked conditions, the fraction of the schedule each style runs on the
                whole image before it is confined to its region (``RegionalStyle.context``; raise it for
                small regions).
            attention_backend: "sdpa" or "math".
            callback_on_step_end: diffusers-style ``f(pipe, step, timestep, kwargs) -> dict``.

        Returns:
            ``StyleInjectionPipelineOutput`` (or a tuple ``(images,)`` when ``return_dict=False``).
        """
        self._guidance_scale = 1.0  # no classifier-free guidance here (a stock call may have left another)
        contents, conditions, style_images, layer_names, height, width = self.check_style_inputs(
            content_image,
            style,
            gamma,
            temperature,
            num_inference_steps,
            layers,
            height,
            width,
            output_type,
            cache_strategy,
        )
        # Masked conditions: one output per content, each style in its region (validated here, before model work).
        regional = RegionalStyle.from_conditions(
            conditions,
            [im.size for im in contents],
            style_token_adapter=style_token_adapter,
            context=region_context,
        )
        preset = preset_of(layers)
        if regional is not None:
            official = bool(preset and preset.official_timing)
            regional.check_pipeline(self, conditioners, adain=adain, official_timing=official)
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs: unknown names {sorted(unknown)}")
        settings = InjectionSettings(
            gamma, temperature, attention_injection, query_preservation, attention_backend
        )  # type: ignore[arg-type]
        inversion_cache = self.inversion_cache if cache is True else (cache or None)
        injection = AttentionInjection(
            layer_names,
            settings,
            adain=adain,
            strategy=cache_strategy or self.default_cache_strategy,
            official_timing=bool(preset and preset.official_timing),
            cache=inversion_cache,  # type: ignore[arg-type]
        )
        rows = [Row(c, s, conditions[s].steps) for c in range(len(contents)) for s in range(len(conditions))]
        content_pixels = torch.stack([to_tensor(fit_to_size(im, width, height)) for im in contents])
        style_pixels = style_slots(style_images, contents[0], width, height)

        device = self._execution_device
        self.__dict__["_call_device"] = device  # _execution_device is slow to ask; fixed for the call
        self.__dict__.pop("_call_text_fingerprint", None)  # weights may have changed since the last call
        dtype = self.unet.dtype
        evals = [0]

        def count(module: Any, args: tuple, kwargs: dict) -> None:
            sample = args[0] if args else kwargs["sample"]
            evals[0] += int(sample.shape[0])

        counter = self.unet.register_forward_pre_hook(count, with_kwargs=True)
        try:
            call = {
                "contents": content_pixels,
                "content_sizes": [image.size for image in contents],  # (width, height) as given
                "styles": style_pixels,
                "rows": rows,
                "num_inference_steps": num_inference_steps,
                "unet_conditioning": lambda b, dt: self.unet_conditioning(b, dt, height, width),
            }
            injection.prepare(self, **call)
            call["injection"] = injection
            extra = [regional, *conditioners] if regional is not None else list(conditioners)
            for conditioner in extra:
                conditioner.prepare(self, **call)
            latents = injection.start_latents.to(device=device, dtype=dtype)
            timesteps = injection.sampling_timesteps
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            self._num_timesteps = len(timesteps)
            self._interrupt = False
            all_conditioners = [injection, *extra]
            conditioning = self.unet_conditioning(len(rows), dtype, height, width)
            with attached(self, all_conditioners), self.progress_bar(total=len(timesteps)) as bar:
                for i, t in enumerate(timesteps):
                    if self._interrupt:
                        break
                    t = t.to(device)
                    for conditioner in all_conditioners:
                        conditioner.on_step_begin(i, int(t), latents)
                    noise_pred = self.unet(latents, t, **conditioning, return_dict=False)[0]
                    latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                    for conditioner in all_conditioners:
                        latents = conditioner.on_step_end(i, int(t), latents)
                    if callback_on_step_end is not None:
                        tensors = {"latents": latents}
                        values = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                        outputs = callback_on_step_end(self, i, t, values)
                        latents = outputs.pop("latents", latents)
                    bar.update()
        finally:
            counter.remove()
        if regional is not None:
            latents = regional.select(latents)
        images = self.decode_to_output(
            latents, output_type, regional.composite if regional is not None else None
        )
        self.maybe_free_model_hooks()
        pairs = regional.pairs if regional is not None else [(r.content, r.style) for r in rows]
        if not return_dict:
            return (images,)
        return StyleInjectionPipelineOutput(images=images, pairs=pairs, unet_evals=evals[0])


class StyleInjectionPipeline(StyleInjectionMixin, StableDiffusionPipeline):
    """StyleID for SD 1.x / 2.x (epsilon and v-prediction). Loads like ``StableDiffusionPipeline``
    (``from_pretrained``, ``from_pipe``); the call is ``StyleInjectionMixin.__call__``."""

    architecture = "sd"
    default_cache_strategy = "features"

    def unet_conditioning(
        self, batch_size: int, dtype: torch.dtype, height: int, width: int
    ) -> dict[str, Any]:
        device = self.__dict__.get("_call_device") or self._execution_device
        key = (device, text_encoder_fingerprint(self))  # an edited text encoder re-encodes
        cached = self.__dict__.get("_empty_prompt")
        if cached is None or cached[0] != key:
            cached = (key, self.encode_prompt("", device, 1, False)[0])
            self.__dict__["_empty_prompt"] = cached
        return {"encoder_hidden_states": cached[1].to(dtype).expand(batch_size, -1, -1)}
