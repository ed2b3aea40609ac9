"""Motion adapters (AnimateDiff ``MotionAdapter``) and the motion UNet built from an image UNet.

- ``check_motion_adapter(unet, adapter)`` raises a clear ``MotionAdapterMismatch`` when an adapter was
  made for another UNet (block count, channels, layers per block, group norm, heads) -- before any
  weights are copied (stock ``UNetMotionModel.from_unet2d`` checks only the block and layer counts and
  otherwise fails deep inside ``load_state_dict``).
- ``motion_unet(unet, adapter)`` is ``UNetMotionModel.from_unet2d`` plus support for image UNets with
  ``addition_embed_type="text"`` (the bundled ``mini``), whose pooled-text embedding the stock motion
  UNet silently drops; it is re-added by a hook so the motion UNet reproduces the image UNet.
- ``tiny_motion_adapter(unet)`` builds a random-weight adapter that fits ``unet`` (tests, training start).
- ``scaled_motion_modules(model, scale)`` scales the temporal layers' contribution for a call (the "motion
  scale" of ComfyUI's AnimateDiff-Evolved): 1 = as trained, 0 = the spatial UNet alone.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from stylekit.models import model_fingerprint


class MotionAdapterMismatch(ValueError):
    """The motion adapter was made for a UNet of a different shape."""


def _per_block(value: Any, count: int) -> list[Any]:
    return [value] * count if isinstance(value, int) else list(value)


def check_motion_adapter(unet: Any, adapter: Any) -> None:
    """Raise ``MotionAdapterMismatch`` unless ``adapter`` fits the image UNet ``unet``."""
    from diffusers import MotionAdapter

    if not isinstance(adapter, MotionAdapter):
        raise TypeError(f"motion_adapter: expected a diffusers MotionAdapter, got {type(adapter).__name__}")
    u, a = unet.config, adapter.config
    blocks = len(u.block_out_channels)
    problems = []
    if list(a.block_out_channels) != list(u.block_out_channels):
        problems.append(
            f"block_out_channels {list(a.block_out_channels)} vs the UNet's {list(u.block_out_channels)}"
        )
    elif _per_block(a.motion_layers_per_block, blocks) != _per_block(u.layers_per_block, blocks):
        problems.append(
            f"motion_layers_per_block {a.motion_layers_per_block} vs the UNet's layers_per_block {u.layers_per_block}"
        )
    else:
        for channels, heads in zip(
            u.block_out_channels, _per_block(a.motion_num_attention_heads, blocks), strict=True
        ):
            if channels % heads:
                problems.append(f"{heads} motion heads do not divide {channels} channels")
        if any(c % u.norm_num_groups for c in u.block_out_channels):
            problems.append(f"the UNet's norm_num_groups {u.norm_num_groups} do not divide its channels")
        if a.motion_norm_num_groups != u.norm_num_groups:
            problems.append(
                f"motion_norm_num_groups {a.motion_norm_num_groups} vs the UNet's norm_num_groups "
                f"{u.norm_num_groups} (the motion UNet would normalise with the UNet's groups)"
            )
        if a.conv_in_channels and a.conv_in_channels < u.in_channels:
            problems.append(f"conv_in_channels {a.conv_in_channels} < the UNet's in_channels {u.in_channels}")
    if problems:
        raise MotionAdapterMismatch(
            "motion_adapter does not fit this UNet (made for another model?): " + "; ".join(problems)
        )


def tiny_motion_adapter(unet: Any, seed: int = 0, **overrides: Any) -> Any:
    """A random-weight ``MotionAdapter`` shaped for ``unet`` (2 heads, the UNet's norm groups).

    ``overrides`` are extra ``MotionAdapter`` config entries (e.g. ``motion_max_seq_length=16``).
    """
    from diffusers import MotionAdapter

    config = {
        "block_out_channels": tuple(unet.config.block_out_channels),
        "motion_layers_per_block": unet.config.layers_per_block,
        "motion_norm_num_groups": unet.config.norm_num_groups,
        "motion_num_attention_heads": 2,
        "motion_max_seq_length": 32,
        **overrides,
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MotionAdapter(**config).eval()


def motion_unet(unet: Any, adapter: Any) -> Any:
    """``UNetMotionModel`` from an image UNet and a motion adapter (checked first), same dtype/device.

    For an image UNet with ``addition_embed_type="text"`` the pooled-text embedding is kept (a hook adds
    ``unet.add_embedding(encoder_hidden_states)`` to the time embedding, as ``UNet2DConditionModel`` does).
    """
    from diffusers import UNetMotionModel

    check_motion_adapter(unet, adapter)
    adapter = adapter.to(device=unet.device)
    model = UNetMotionModel.from_unet2d(unet, adapter).to(unet.device).eval()
    if getattr(unet.config, "addition_embed_type", None) == "text":
        model.add_embedding = copy.deepcopy(unet.add_embedding)
        _keep_text_embedding(model)
    return model


def _keep_text_embedding(model: Any) -> None:
    """Hooks that add the pooled text embedding of the first frame's prompt (one per video)."""
    state: dict[str, Any] = {}

    def remember(module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        hidden = args[2] if len(args) > 2 else kwargs.get("encoder_hidden_states")
        state["frames"] = int(sample.shape[2])
        state["hidden"] = hidden

    def add(module: Any, args: tuple, output: torch.Tensor) -> torch.Tensor:
        hidden = state.get("hidden")
        if hidden is None:
            return output
        per_video = hidden[:: state["frames"]] if hidden.shape[0] != output.shape[0] else hidden
        return output + model.add_embedding(per_video).to(output.dtype)

    state["handle"] = model.register_forward_pre_hook(remember, with_kwargs=True)

    def register_last() -> None:
        state["handle"].remove()
        state["handle"] = model.register_forward_pre_hook(remember, with_kwargs=True)

    model.__dict__["_text_embedding_hook_last"] = register_last
    model.time_embedding.register_forward_hook(add)


def text_embedding_hook_last(model: Any) -> None:
    """Move a motion UNet's pooled-text pre-hook (``motion_unet`` for ``mini``) after the pre-hooks added
    since, so it sees the batch they pass on (e.g. three-pass style guidance adds rows). No-op otherwise."""
    register_last = model.__dict__.get("_text_embedding_hook_last")
    if register_last is not None:
        register_last()


def check_motion_scale(scale: Any) -> float:
    """``motion_scale`` as a finite float >= 0, else a ValueError."""
    if (
        isinstance(scale, bool)
        or not isinstance(scale, (int, float))
        or not math.isfinite(scale)
        or scale < 0
    ):
        raise ValueError(f"motion_scale: expected a finite number >= 0, got {scale!r}")
    return float(scale)


@contextmanager
def scaled_motion_modules(model: Any, scale: float) -> Iterator[None]:
    """Within the block, every temporal transformer of the motion UNet ``model`` (diffusers'
    ``AnimateDiffTransformer3D``, which returns ``x + f(x)``) returns ``x + scale * f(x)``.

    ``scale`` 1 installs nothing (the model as trained); 0 leaves only the spatial UNet (its output equals the
    image UNet's). Hooks are removed on exit, also on error.
    """
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    scale = check_motion_scale(scale)
    if scale == 1.0:
        yield
        return

    def scaled(module: Any, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden + scale * (output - hidden)

    handles = [
        module.register_forward_hook(scaled, with_kwargs=True)
        for module in model.modules()
        if isinstance(module, AnimateDiffTransformer3D)
    ]
    if not handles:
        raise ValueError("motion_scale: the model has no motion modules (not a motion UNet)")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class MotionUNetCache:
    """Keeps the last motion UNet built per (image UNet, adapter) weights, so repeated calls reuse it."""

    def __init__(self) -> None:
        self._key: tuple[str, str, str, str] | None = None
        self._model: Any = None

    def get(self, unet: Any, adapter: Any) -> Any:
        weight = next(unet.parameters())  # its device / dtype: ``unet.dtype`` walks every module
        key = (model_fingerprint(unet), model_fingerprint(adapter), str(weight.device), str(weight.dtype))
        if key != self._key:
            self._model = None  # free the old one first
            self._model = motion_unet(unet, adapter)
            self._key = key
        return self._model


def scaled_motion_delta(base: Any, tuned: Any, scale: float) -> Any:
    """A ``MotionAdapter`` with weights ``base + scale * (tuned - base)``.

    StyleMaster's still-video motion adapter is applied with a negative scale: fine-tune ``base`` on
    still videos (``train_motion --still --init_adapter BASE``), then ``scaled_motion_delta(base, still, -0.5)``
    moves away from stillness (more motion, stronger stylisation). ``scale=1`` gives ``tuned``, 0 ``base``.
    Both adapters must share one config.
    """
    from diffusers import MotionAdapter

    for name, adapter in (("base", base), ("tuned", tuned)):
        if not isinstance(adapter, MotionAdapter):
            raise TypeError(f"{name}: expected a diffusers MotionAdapter, got {type(adapter).__name__}")
    strip = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
    if strip(base.config) != strip(tuned.config):
        raise MotionAdapterMismatch("scaled_motion_delta: base and tuned adapters have different configs")
    out = MotionAdapter.from_config(base.config)
    tuned_state = tuned.state_dict()
    out.load_state_dict(
        {k: v + float(scale) * (tuned_state[k].to(v.dtype) - v) for k, v in base.state_dict().items()}
    )
    return out.to(dtype=base.dtype).eval()
