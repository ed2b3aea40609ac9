"""Model registry and presets.

``load_pipeline`` is the one entry point: a preset name (``tiny-sd``, ``tiny-sd-v``, ``tiny-sdxl``,
``mini``), an alias of a real model (``sd15``, ``sd21``, ``sdxl``), a hub id or a local diffusers folder,
returned as the pipeline class that ``kind`` names. Tiny presets are random-weight components built
from config with a fixed seed, fully offline (including their CLIP tokenizer).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ASSETS = Path(__file__).parent / "assets"
MINI_PATH = ASSETS / "mini"
MOTION_ADAPTER_MINI_PATH = (
    ASSETS / "motion_adapter_mini"
)  # a diffusers MotionAdapter for mini (docs/video.md)

ALIASES: dict[str, str] = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd21": "stabilityai/stable-diffusion-2-1",
    "sd21-base": "stabilityai/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}

KINDS: dict[str, tuple[str, str]] = {
    "style-injection": ("StyleInjectionPipeline", "StyleInjectionXLPipeline"),
    "text-to-image": ("StableDiffusionPipeline", "StableDiffusionXLPipeline"),
}


@dataclass(frozen=True)
class PresetInfo:
    """What ``stylekit models`` lists about a preset."""

    name: str
    architecture: str  # "sd" or "sdxl"
    description: str


PRESETS: dict[str, PresetInfo] = {
    "tiny-sd": PresetInfo("tiny-sd", "sd", "random weights, SD 1.x layout, epsilon, 64x64 (tests)"),
    "tiny-sd-v": PresetInfo("tiny-sd-v", "sd", "random weights, SD 1.x layout, v-prediction (tests)"),
    "tiny-sdxl": PresetInfo("tiny-sdxl", "sdxl", "random weights, SDXL layout, two text encoders (tests)"),
    "mini": PresetInfo("mini", "sd", "small real model trained on the synthetic style world (bundled)"),
}


def _ddim_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def _tiny_vae():
    from diffusers import AutoencoderKL

    # Four levels: a downsampling factor of 8, as in Stable Diffusion.
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
    )


def _tiny_text_encoder(tokenizer, hidden_size: int = 32, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden_size,
    )
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(config).eval()


def _gentle_output(unet: Any, scale: float = 0.02) -> Any:
    """Scale a random UNet's output convolution down. A random network's prediction swings with the
    timestep far more than a trained one's, which makes DDIM inversion diverge; a small output keeps
    the tiny presets well conditioned, so invariants can be tested with tight tolerances."""
    with torch.no_grad():
        unet.conv_out.weight.mul_(scale)
        unet.conv_out.bias.mul_(scale)
    return unet


def build_tiny_sd(prediction_type: str = "epsilon", seed: int = 0) -> dict[str, Any]:
    """Components of a random-weight SD 1.x-layout model (4 UNet levels, 3 attentions per up block).

    Returns a dict of diffusers/transformers modules keyed like ``StableDiffusionPipeline`` arguments.
    """
    from diffusers import UNet2DConditionModel

    from stylekit.tokenizer import build_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_clip_tokenizer()
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(16, 16, 32, 32),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32,
            attention_head_dim=2,
            norm_num_groups=8,
        )
        vae = _tiny_vae()
        text_encoder = _tiny_text_encoder(tokenizer)
    return {
        "unet": _gentle_output(unet).eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _ddim_scheduler(prediction_type),
    }


def build_tiny_sdxl(seed: int = 0) -> dict[str, Any]:
    """Components of a random-weight SDXL-layout model: attention-free top level, two text encoders,
    ``text_time`` added conditioning; ``up_blocks.0`` and ``up_blocks.1`` carry attention as in SDXL.
    """
    from diffusers import UNet2DConditionModel

    from stylekit.tokenizer import build_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_clip_tokenizer()
        tokenizer_2 = build_clip_tokenizer()
        text_encoder = _tiny_text_encoder(tokenizer, hidden_size=32)
        text_encoder_2 = _tiny_text_encoder(tokenizer_2, hidden_size=32, projection=True)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=2,
            block_out_channels=(16, 32, 32),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2),
            cross_attention_dim=64,
            attention_head_dim=(2, 4, 8),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,
            norm_num_groups=8,
        )
        vae = _tiny_vae()
    return {
        "unet": _gentle_output(unet).eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": _ddim_scheduler("epsilon"),
    }


_BUILDERS: dict[str, Callable[[], dict[str, Any]]] = {
    "tiny-sd": lambda: build_tiny_sd("epsilon"),
    "tiny-sd-v": lambda: build_tiny_sd("v_prediction"),
    "tiny-sdxl": build_tiny_sdxl,
}


def _pipeline_class(kind: str, architecture: str):
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not known; expected one of {sorted(KINDS)}")
    name = KINDS[kind][1 if architecture == "sdxl" else 0]
    if name.startswith("StyleInjection"):
        import stylekit.pipelines as module
    else:
        import diffusers as module
    return getattr(module, name)


def _architecture_of(name_or_path: str) -> str:
    """'sdxl' when the model folder/hub repo has a second text encoder, else 'sd'. A local folder must hold
    ``model_index.json`` and every component it lists; offline, a name that is not a folder must be cached."""
    from diffusers import DiffusionPipeline

    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")
        index = json.loads((folder / "model_index.json").read_text())
        for component, spec in index.items():
            listed = isinstance(spec, list) and spec[0] is not None and not component.startswith("_")
            if listed and not (folder / component).is_dir():
                raise FileNotFoundError(
                    f"{folder}: model_index.json lists {component!r} but {folder / component} is missing"
                )
    try:
        config = DiffusionPipeline.load_config(name_or_path)
    except OSError as error:
        if not folder.exists() and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise FileNotFoundError(
                f"{name_or_path!r} is neither a local folder nor in the Hugging Face cache, and the hub is offline "
                "(HF_HUB_OFFLINE=1); download it first or give a diffusers folder"
            ) from error
        raise
    return "sdxl" if config.get("text_encoder_2") not in (None, [None, None]) else "sd"


def _finish(pipe, dtype: torch.dtype | None, device: str | torch.device | None, kind: str):
    from diffusers import DDIMScheduler

    if kind == "style-injection" and not isinstance(pipe.scheduler, DDIMScheduler):
        # StyleID inverts and samples with deterministic DDIM (eta = 0).
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    if dtype is None and pipe.unet.dtype == torch.float32:
        # A folder may store components in lower precision (the bundled mini keeps some in fp16 to stay
        # small); with an fp32 UNet they compute in fp32 too. (An fp16 UNet's folder is left as stored.)
        for module in pipe.components.values():
            if (
                isinstance(module, torch.nn.Module)
                and getattr(module, "dtype", torch.float32) != torch.float32
            ):
                module.to(dtype=torch.float32)
    if dtype == pipe.unet.dtype:
        dtype = None  # casting to the dtype it already has only makes diffusers warn
    if dtype is not None or device is not None:
        pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=None)
    return pipe


def load_pipeline(
    name_or_path: str,
    kind: str = "style-injection",
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **from_pretrained_kwargs: Any,
):
    """Load a pipeline by preset name, alias, hub id or local folder.

    Args:
        name_or_path: ``tiny-sd``, ``tiny-sd-v``, ``tiny-sdxl``, ``mini``, an alias in ``ALIASES``,
            a hub id or a diffusers folder.
        kind: ``"style-injection"`` (``StyleInjectionPipeline`` / ``StyleInjectionXLPipeline``) or
            ``"text-to-image"`` (stock ``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``).
        dtype: weights dtype (e.g. ``torch.float16`` on CUDA); None keeps the stored dtype (fp32 for presets).
        device: where to move the pipeline; None leaves it on CPU.
        from_pretrained_kwargs: passed to ``from_pretrained`` for hub ids and folders.

    Returns:
        A ``DiffusionPipeline`` with a DDIM scheduler when ``kind="style-injection"``.
    """
    dtype = _as_dtype(dtype)
    if name_or_path in _BUILDERS:
        architecture = PRESETS[name_or_path].architecture
        components = _BUILDERS[name_or_path]()
        cls = _pipeline_class(kind, architecture)
        extra = {} if architecture == "sdxl" else {"safety_checker": None, "feature_extractor": None}
        if architecture == "sd":
            extra["requires_safety_checker"] = False
        pipe = cls(**components, **extra)
        pipe.stylekit_model_id = f"preset:{name_or_path}"
        return _finish(pipe, dtype, device, kind)
    if name_or_path == "mini":
        if not (MINI_PATH / "model_index.json").exists():
            raise FileNotFoundError(
                f"the bundled 'mini' model is missing at {MINI_PATH}; reinstall stylekit or use 'tiny-sd'"
            )
        name_or_path = str(MINI_PATH)
        if dtype is None:
            dtype = torch.float32  # stored as fp16 to stay small; compute in fp32 unless asked otherwise
    resolved = ALIASES.get(name_or_path, name_or_path)
    architecture = _architecture_of(resolved)
    cls = _pipeline_class(kind, architecture)
    kwargs: dict[str, Any] = dict(from_pretrained_kwargs)
    if dtype is not None and not {"dtype", "torch_dtype"} & set(kwargs):
        kwargs[dtype_kwarg()] = dtype
    if architecture == "sd" and kind == "style-injection":
        kwargs.setdefault("safety_checker", None)
        kwargs.setdefault("requires_safety_checker", False)
    pipe = cls.from_pretrained(resolved, **kwargs)
    pipe.stylekit_model_id = resolved
    return _finish(pipe, None, device, kind)


DTYPE_NAMES = {"fp16": "float16", "float16": "float16", "half": "float16", "bf16": "bfloat16",
               "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32"}  # fmt: skip


def _as_dtype(dtype: Any) -> torch.dtype | None:
    """``dtype`` as a floating ``torch.dtype`` (names such as ``"fp16"`` or ``"float16"`` accepted), or None."""
    if dtype is None or isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPE_NAMES:
        return getattr(torch, DTYPE_NAMES[dtype.lower().removeprefix("torch.")])
    raise ValueError(f"dtype: expected a floating torch.dtype or one of {sorted(DTYPE_NAMES)}, got {dtype!r}")


@functools.cache
def dtype_kwarg() -> str:
    """How ``from_pretrained`` takes a dtype: ``dtype`` where diffusers deprecates ``torch_dtype``."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def model_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's config, parameter names and shapes and a strided sample of every weight
    (64 values per tensor).

    Computed afresh on every call (a few milliseconds: the samples are gathered on the weights' device and
    copied once). A memo keyed on parameter versions would miss edits made through ``.data``, which is how
    diffusers' ``fuse_lora`` changes weights, and the inversion cache would then return stale results.
    """
    named = [(n, p) for n, p in module.named_parameters()]
    with torch.no_grad():
        samples = [
            p.detach().reshape(-1)[:: max(1, p.numel() // 64)][:64].float()
            for _, p in named
            if p.device.type != "meta"
        ]
        copied = torch.cat([s.to(samples[0].device) for s in samples]).cpu() if samples else None
    chunks = iter(copied.split([s.numel() for s in samples]) if copied is not None else ())
    digest = hashlib.sha256(_config_json(module).encode())
    for name, param in named:  # the bytes in the same order as always, so fingerprints stay comparable
        digest.update(name.encode())
        digest.update(str(tuple(param.shape)).encode())
        if param.device.type != "meta":
            digest.update(next(chunks).numpy().tobytes())
    return digest.hexdigest()[:16]


def text_encoder_fingerprint(pipe: Any, fresh: bool = False) -> str:
    """:func:`model_fingerprint` of the pipeline's text encoder(s), computed once per call: kept in the
    pipeline's ``_call_text_fingerprint``, which each StyleID call drops when it starts (``fresh``: compute
    it anew now)."""
    cached = None if fresh else pipe.__dict__.get("_call_text_fingerprint")
    if cached is None:
        encoders = (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None))
        cached = ":".join(model_fingerprint(m) for m in encoders if m is not None)
        pipe.__dict__["_call_text_fingerprint"] = cached
    return cached


def pipeline_fingerprint(pipe: Any) -> str:
    """:func:`model_fingerprint` of every model an inversion depends on: the UNet, the VAE and the text
    encoder(s) (the empty prompt's embedding conditions every inverted step)."""
    text = text_encoder_fingerprint(pipe, fresh=True)
    return f"{model_fingerprint(pipe.unet)}:{model_fingerprint(pipe.vae)}:{text}"


def _config_json(module: torch.nn.Module) -> str:
    """The module's config without private (``_``-prefixed) entries such as ``_name_or_path``."""
    config = getattr(module, "config", None) or {}
    items = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers' or diffusers'
    return json.dumps({k: v for k, v in items.items() if not k.startswith("_")}, sort_keys=True, default=str)
