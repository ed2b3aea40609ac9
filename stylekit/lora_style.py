"""``LoRAStyle``: trained content/style LoRAs as a conditioner, composable with StyleID and the rest.

``prepare`` reads and checks every adapter file against the pipeline's UNet (a LoRA for another
architecture fails here, before any model work); ``attach`` loads the adapters with stock
``pipe.load_lora_weights(..., adapter_name=...)``, weights them with ``pipe.set_adapters`` (a number or
the diffusers per-block dict, e.g. ``{"up": {"block_1": [0.0, 1.0]}}``) and optionally fuses them; on exit
the pipeline is restored exactly: adapters it already had keep their scales and activation, ours are
deleted (all LoRA layers are unloaded when it had none), fused base weights are written back bit for bit,
and every parameter's ``requires_grad`` is set back (peft's load freezes them).

    from stylekit.lora_style import LoRAStyle
    lora = LoRAStyle(content="out/content", style="out/style", style_weight=0.8)
    pipe(content_image=..., style=..., conditioners=[lora])          # with StyleID, in one call
    with lora.applied(text_pipe):                                     # or around any diffusers pipeline
        text_pipe("a [c] in [s] style")
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from stylekit.conditioning import ConditionerBase, StyleCondition, schedule_position
from stylekit.lora import check_lora_fits, lora_file, read_info

Weight = float | Mapping[str, Any]


@dataclass(frozen=True)
class AdapterSpec:
    """One adapter of a ``LoRAStyle``: a folder/file, its weight (number or per-block dict) and active steps."""

    name: str
    path: Path
    weight: Weight = 1.0
    steps: tuple[float, float] = (0.0, 1.0)


def _check_weight(weight: Weight, argument: str) -> Weight:
    if isinstance(weight, Mapping):
        return weight
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"{argument}: expected a finite number or a per-block dict, got {weight!r}")
    return float(weight)


class LoRAStyle(ConditionerBase):
    """Content and style LoRAs (diffusers format) applied for one pipeline call.

    Args:
        content, style: adapter folders (``pytorch_lora_weights.safetensors`` inside) or files; either may
            be None.
        content_weight, style_weight: a number, or a diffusers per-block dict (``{"down": ..., "mid": ...,
            "up": {"block_1": [w0, w1]}}``). ResNet (LoCon) layers take the weight of the attention block of
            the same level and index (diffusers' rule), the mid block's ResNets the ``"mid"`` weight; ResNets
            of levels without attention blocks (SD's ``up_blocks.0``) have no key and stay at 1.0.
        fuse: fuse the weighted adapters into the UNet for the call (faster sampling; base weights are
            restored exactly afterwards).
        adapters: more adapters, ``name -> path`` or ``name -> (path, weight)``.
        content_steps, style_steps: (start, end) fraction of the schedule where that adapter acts (unfused
            only; default the whole schedule), e.g. ``style_steps=(0.5, 1.0)``: the content adapter lays out
            the image alone and the style adapter joins for the second half. Works in our pipelines (driven
            by ``on_step_begin``) and in any diffusers pipeline (a UNet pre-hook finds each call's timestep
            in the scheduler's schedule).
    """

    def __init__(
        self,
        content: str | Path | None = None,
        style: str | Path | None = None,
        *,
        content_weight: Weight = 1.0,
        style_weight: Weight = 1.0,
        fuse: bool = False,
        adapters: Mapping[str, str | Path | tuple[str | Path, Weight]] | None = None,
        content_steps: tuple[float, float] = (0.0, 1.0),
        style_steps: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        specs: list[AdapterSpec] = []
        if content is not None:
            weight = _check_weight(content_weight, "content_weight")
            specs.append(AdapterSpec("content", Path(content), weight, tuple(content_steps)))
        if style is not None:
            weight = _check_weight(style_weight, "style_weight")
            specs.append(AdapterSpec("style", Path(style), weight, tuple(style_steps)))
        for name, value in (adapters or {}).items():
            path, weight = value if isinstance(value, tuple) else (value, 1.0)
            specs.append(AdapterSpec(str(name), Path(path), _check_weight(weight, f"adapters[{name!r}]")))
        self._init(specs, fuse)

    def _init(self, specs: Sequence[AdapterSpec], fuse: bool) -> None:
        if not specs:
            raise ValueError("LoRAStyle: expected at least one adapter (content=, style= or adapters=)")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"LoRAStyle: adapter names must be unique, got {names}")
        for spec in specs:
            lora_file(spec.path)  # exists, is safetensors
            if len(spec.steps) != 2 or not 0.0 <= spec.steps[0] < spec.steps[1] <= 1.0:
                raise ValueError(
                    f"LoRAStyle: {spec.name} steps must be (start, end) with 0 <= start < end <= 1, "
                    f"got {spec.steps}"
                )
        self.specs = list(specs)
        if fuse and self.windowed:
            raise ValueError("LoRAStyle: fuse=True cannot limit adapters to part of the schedule (steps)")
        self.fuse = fuse
        self._checked_for: int | None = None
        self._pipe: Any = None
        self._active: dict[str, bool] = {}
        self._num_steps = 0
        self._position: float | None = None  # set by on_step_begin when a pipeline of ours drives the steps

    @property
    def windowed(self) -> bool:
        """Whether an adapter acts on only part of the schedule."""
        return any(s.steps != (0.0, 1.0) for s in self.specs)

    @classmethod
    def from_conditions(
        cls, conditions: StyleCondition | Sequence[StyleCondition], fuse: bool = False
    ) -> LoRAStyle:
        """Adapters from ``StyleCondition(lora=..., weight=..., steps=...)``; the adapter's role (from its
        ``adapter_info.json``) names it, else ``style``/``style_1``/...."""
        conditions = [conditions] if isinstance(conditions, StyleCondition) else list(conditions)
        specs: list[AdapterSpec] = []
        for index, condition in enumerate(conditions):
            if condition.lora is None:
                raise ValueError(
                    f"conditions[{index}]: LoRAStyle needs StyleCondition.lora (an adapter path)"
                )
            role = (
                str(read_info(condition.lora).get("role", "style"))
                if Path(condition.lora).exists()
                else "style"
            )
            name = role if role not in {s.name for s in specs} else f"{role}_{index}"
            specs.append(
                AdapterSpec(name, Path(condition.lora), float(condition.weight), tuple(condition.steps))
            )
        out = cls.__new__(cls)
        out._init(specs, fuse)
        return out

    # ----------------------------------------------------------------------------------- prepare
    def prepare(self, pipe: Any, **call: Any) -> None:
        """Read and check every adapter against ``pipe.unet`` (cached per UNet); note the step count."""
        self._num_steps = int(call.get("num_inference_steps", 0) or 0)
        self._position = None
        if self._checked_for == id(pipe.unet):
            return
        for spec in self.specs:
            check_lora_fits(pipe.unet, spec.path)
        self._checked_for = id(pipe.unet)

    # ----------------------------------------------------------------------------------- attach
    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        if self._checked_for != id(pipe.unet):
            self.prepare(pipe)
        unet = pipe.unet
        previous = set(getattr(unet, "peft_config", {}) or {})
        clash = previous & {s.name for s in self.specs}
        if clash:
            raise ValueError(
                f"LoRAStyle: the pipeline already has adapter(s) named {sorted(clash)} (loaded by the user or by "
                "another LoRAStyle in this call); give each LoRAStyle its own names with adapters={name: path}, "
                "or put the LoRAs into one LoRAStyle"
            )
        snapshot = _snapshot_layers(unet)
        wrapped_before = set(snapshot)
        trainable = _requires_grad_flags(pipe)  # peft's load freezes every base parameter
        base_weights: dict[str, torch.Tensor] = {}
        loaded: list[str] = []
        fused = False
        step_hook: Any = None
        try:
            for spec in self.specs:
                file = lora_file(spec.path)
                with _quiet_diffusers():  # "no text encoder keys" is expected: adapters are UNet-only
                    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name=spec.name)
                loaded.append(spec.name)
            _set_requires_grad(trainable)  # the call runs with the base parameters as they were
            if self.fuse:
                base_weights = {
                    name: module.get_base_layer().weight.detach().clone()
                    for name, module in unet.named_modules()
                    if hasattr(module, "lora_A") and any(s.name in module.lora_A for s in self.specs)
                }
            self._pipe = pipe
            self._active = {s.name: True for s in self.specs}
            self._apply_weights(previous, snapshot)
            if self.fuse:
                pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=loaded)
                fused = True
            elif self.windowed:
                step_hook = unet.register_forward_pre_hook(self._step_hook, with_kwargs=True)
            yield
        finally:
            if step_hook is not None:
                step_hook.remove()
            self._pipe = None
            self._position = None
            if fused:
                pipe.unfuse_lora(components=["unet"])
            if loaded:
                if previous:
                    pipe.delete_adapters(loaded)
                    _unwrap_new_layers(unet, wrapped_before)
                else:
                    pipe.unload_lora_weights()
            with torch.no_grad():
                modules = dict(unet.named_modules())
                for name, weight in base_weights.items():
                    module = modules[name]
                    target = module.get_base_layer() if hasattr(module, "get_base_layer") else module
                    target.weight.copy_(weight)
            _restore_layers(unet, snapshot)
            _set_requires_grad(trainable)

    @contextmanager
    def applied(self, pipe: Any) -> Iterator[Any]:
        """``prepare`` + ``attach`` around any diffusers pipeline (e.g. text-to-image); yields the pipeline."""
        self.prepare(pipe)
        with self.attach(pipe):
            yield pipe

    def _apply_weights(self, previous: set[str], snapshot: dict[str, tuple[dict, Any]]) -> None:
        pipe = self._pipe
        prev_active = sorted(_active_names(snapshot) & previous)
        names = prev_active + [s.name for s in self.specs]
        weights: list[Any] = [1.0] * len(prev_active) + [
            _component_weight(s.weight) if self._active[s.name] else 0.0 for s in self.specs
        ]
        pipe.set_adapters(names, adapter_weights=weights)
        _weight_mid_resnets(pipe.unet, dict(zip(names, weights, strict=True)))
        # adapters the pipeline already had keep their own (possibly per-block) scales
        for name, module in pipe.unet.named_modules():
            if name in snapshot and hasattr(module, "scaling"):
                for adapter in prev_active:
                    if adapter in snapshot[name][0]:
                        module.scaling[adapter] = snapshot[name][0][adapter]

    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None:
        if self._pipe is None or self.fuse or not self._num_steps:
            return
        self._position = step_index / self._num_steps
        self._activate(self._position)

    def _step_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        """Outside our pipelines (no ``on_step_begin``): the step's place in the scheduler's schedule."""
        if self._position is not None or self._pipe is None:
            return
        timestep = args[1] if len(args) > 1 else kwargs["timestep"]
        self._activate(schedule_position(self._pipe.scheduler, timestep))

    def _activate(self, position: float) -> None:
        """Turn each adapter on or off for the step at ``position`` (0 = start of the schedule)."""
        active = {s.name: s.steps[0] <= position < s.steps[1] for s in self.specs}
        if active != self._active:
            self._active = active
            previous = set(getattr(self._pipe.unet, "peft_config", {}) or {}) - set(active)
            self._apply_weights(previous, self._step_snapshot)

    @property
    def _step_snapshot(self) -> dict[str, tuple[dict, Any]]:
        return _snapshot_layers(self._pipe.unet) if self._pipe is not None else {}


@contextmanager
def _quiet_diffusers() -> Iterator[None]:
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _component_weight(weight: Weight) -> Weight:
    """A per-block dict (``{"down": .., "mid": .., "up": ..}``) is the UNet's: ``{"unet": dict}`` for
    ``pipe.set_adapters``; dicts keyed by component pass through."""
    if isinstance(weight, Mapping) and not {"unet", "text_encoder", "text_encoder_2"} & set(weight):
        return {"unet": dict(weight)}
    return weight


def _weight_mid_resnets(unet: Any, weights: Mapping[str, Weight]) -> None:
    """Per-block dicts: give the mid block's ResNet LoRA layers the ``"mid"`` weight. diffusers weights a
    ResNet layer like the attention block of the same level and index, which the mid block's ResNets do not
    match (they would stay at 1.0)."""
    for adapter, weight in weights.items():
        unet_weight = weight.get("unet", weight) if isinstance(weight, Mapping) else None
        if not isinstance(unet_weight, Mapping) or "mid" not in unet_weight:
            continue
        for name, module in unet.named_modules():
            if name.startswith("mid_block.resnets.") and adapter in getattr(module, "lora_A", {}):
                module.set_scale(adapter, float(unet_weight["mid"]))


def _unwrap_new_layers(unet: Any, wrapped_before: set[str]) -> None:
    """Put the plain base layer back where only our (now deleted) adapters had wrapped a module."""
    for name, module in list(unet.named_modules()):
        if name not in wrapped_before and hasattr(module, "lora_A") and not module.lora_A:
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name) if parent_name else unet, child, module.get_base_layer())


def _requires_grad_flags(pipe: Any) -> list[tuple[torch.nn.Parameter, bool]]:
    """Every parameter of the pipeline's torch components with its ``requires_grad``: loading a LoRA
    freezes them all, which would leave a UNet the user goes on to train frozen (and frozen parameters move
    some CPU outputs by ~1e-6: a weight-0 LoRA would not equal no LoRA exactly)."""
    modules = [m for m in pipe.components.values() if isinstance(m, torch.nn.Module)]
    return [(p, p.requires_grad) for m in modules for p in m.parameters()]


def _set_requires_grad(flags: Sequence[tuple[torch.nn.Parameter, bool]]) -> None:
    for parameter, flag in flags:
        parameter.requires_grad_(flag)


def _snapshot_layers(unet: Any) -> dict[str, tuple[dict, Any]]:
    """Per LoRA layer: (scaling dict copy, active adapter names) — what ``set_adapters`` changes."""
    return {
        name: (
            dict(module.scaling),
            list(module.active_adapters) if hasattr(module, "active_adapters") else None,
        )
        for name, module in unet.named_modules()
        if hasattr(module, "scaling") and hasattr(module, "lora_A")
    }


def _active_names(snapshot: Mapping[str, tuple[dict, Any]]) -> set[str]:
    return {a for _, active in snapshot.values() if active for a in active}


def _restore_layers(unet: Any, snapshot: Mapping[str, tuple[dict, Any]]) -> None:
    for name, module in unet.named_modules():
        if name in snapshot and hasattr(module, "scaling"):
            scaling, active = snapshot[name]
            module.scaling.clear()
            module.scaling.update(scaling)
            if active is not None and hasattr(module, "set_adapter"):
                module.set_adapter(active)
