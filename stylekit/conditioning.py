"""The common conditioning interface.

What the user gives is data (``StyleCondition``); what acts on the model is a ``Conditioner``.
A conditioner prepares (expensive, cacheable work), attaches to the pipeline for one call (a context
manager that restores the pipeline exactly, also when the call raises) and may hook each step.
"""

from __future__ import annotations

import functools
import math
import numbers
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

ImageLike = Image.Image | np.ndarray | torch.Tensor | str | Path


@dataclass(frozen=True, eq=False)
class StyleCondition:
    """One style reference and where it applies.

    Attributes:
        image: the style image (PIL, HxWxC array, CxHxW tensor in [0, 1], or a path).
        embedding: a precomputed style embedding (1-D tensor/array) from a style extractor.
        text: a style description ("watercolour, thick outlines").
        lora: a trained style/content adapter (a folder or ``.safetensors`` path).
        mask: where the style applies (HxW array/tensor/image/path; None = everywhere).
        weight: strength in [0, 1] relative to other conditions (blend / overlap weight).
        steps: (start, end) fractions of the denoising schedule where the condition is active,
            0 <= start < end <= 1.
    """

    image: ImageLike | None = None
    embedding: torch.Tensor | np.ndarray | None = None
    text: str | None = None
    lora: str | Path | None = None
    mask: ImageLike | None = None
    weight: float = 1.0
    steps: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if all(x is None for x in (self.image, self.embedding, self.text, self.lora)):
            raise ValueError("StyleCondition needs at least one of image, embedding, text or lora")
        if self.image is not None and not isinstance(
            self.image, (Image.Image, np.ndarray, torch.Tensor, str, Path)
        ):
            raise TypeError(
                f"StyleCondition.image: expected a PIL image, array, tensor or path, got {type(self.image).__name__}"
            )
        if self.embedding is not None:
            if not isinstance(self.embedding, (torch.Tensor, np.ndarray)):
                raise TypeError(
                    f"StyleCondition.embedding: expected a tensor or array, got {type(self.embedding).__name__}"
                )
            shape = tuple(self.embedding.shape)
            if not bool(torch.isfinite(torch.as_tensor(self.embedding)).all()):
                raise ValueError("StyleCondition.embedding: contains NaN or infinite values")
            if len(shape) not in (1, 2) or 0 in shape:
                raise ValueError(f"StyleCondition.embedding: expected shape (D,) or (tokens, D), got {shape}")
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise ValueError("StyleCondition.text: expected a non-empty string")
        if self.lora is not None and not isinstance(self.lora, (str, Path)):
            raise TypeError(f"StyleCondition.lora: expected a path, got {type(self.lora).__name__}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, numbers.Real):
            raise ValueError(f"StyleCondition.weight: expected a number in [0, 1], got {self.weight!r}")
        if not math.isfinite(self.weight) or not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"StyleCondition.weight: expected a number in [0, 1], got {self.weight}")
        if len(self.steps) != 2:
            raise ValueError(f"StyleCondition.steps: expected (start, end), got {self.steps!r}")
        start, end = (float(x) for x in self.steps)
        if not 0.0 <= start < end <= 1.0:
            raise ValueError(f"StyleCondition.steps: expected 0 <= start < end <= 1, got {self.steps!r}")

    def active_at(self, step_index: int, num_steps: int) -> bool:
        """Whether the condition acts at ``step_index`` of a ``num_steps`` schedule."""
        position = step_index / max(num_steps, 1)
        return self.steps[0] <= position < self.steps[1]


@runtime_checkable
class Conditioner(Protocol):
    """Turns conditions into model behaviour for the duration of one pipeline call.

    ``prepare`` does the expensive, cacheable work (inversions, embeddings); ``attach`` installs
    processors/adapters/hooks and restores the pipeline exactly on exit; ``on_step_end`` may edit the
    latents after each scheduler step (return them unchanged if unused).
    """

    def prepare(self, pipe: Any, **call: Any) -> None: ...

    def attach(self, pipe: Any) -> Any: ...

    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None: ...

    def on_step_end(self, step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor: ...


class ConditionerBase:
    """Convenience base: no-op hooks; subclasses override what they need."""

    def prepare(self, pipe: Any, **call: Any) -> None:
        return None

    @contextmanager
    def attach(self, pipe: Any) -> Iterator[None]:
        yield

    def on_step_begin(self, step_index: int, timestep: int, latents: torch.Tensor) -> None:
        return None

    def on_step_end(self, step_index: int, timestep: int, latents: torch.Tensor) -> torch.Tensor:
        return latents


def schedule_position(scheduler: Any, timestep: Any) -> float:
    """Where ``timestep`` lies in ``scheduler``'s current schedule (0 = its first step), for hooks of
    conditioners inside pipelines that do not call ``on_step_begin`` (stock diffusers); a timestep outside
    the schedule is placed by its value (``1 - t / num_train_timesteps``)."""
    t = int(torch.as_tensor(timestep).reshape(-1)[0])
    schedule = [int(x) for x in scheduler.timesteps.tolist()]
    if t in schedule:
        return schedule.index(t) / len(schedule)
    return 1.0 - t / int(scheduler.config.num_train_timesteps)


_UNET_CALLS: weakref.WeakKeyDictionary[torch.nn.Module, tuple[threading.Lock, list[int | None]]] = (
    weakref.WeakKeyDictionary()
)
_UNET_CALLS_LOCK = threading.Lock()


@contextmanager
def exclusive_unet(pipe: Any) -> Iterator[None]:
    """Hold ``pipe.unet`` for one call. A call changes the UNet's attention processors, adapters and hooks
    until it returns, so a second call on the same UNet (from another thread, from a pipeline sharing it
    through ``from_pipe``, or nested inside the first, e.g. from a callback) is refused with a clear error
    rather than let the two corrupt each other and the UNet."""
    unet = pipe.unet
    with _UNET_CALLS_LOCK:
        lock, owner = _UNET_CALLS.setdefault(unet, (threading.Lock(), [None]))
    if not lock.acquire(blocking=False):
        if owner[0] == threading.get_ident():
            raise RuntimeError(
                f"{type(pipe).__name__}: a call is already running on this UNet in this thread; a nested call "
                "(e.g. from a callback) is not supported"
            )
        raise RuntimeError(
            f"{type(pipe).__name__}: another thread is running a call on this UNet (this pipeline, or one "
            "sharing its UNet through from_pipe); a UNet serves one call at a time (use one pipeline per "
            "thread with its own UNet, or serialize the calls)"
        )
    owner[0] = threading.get_ident()
    try:
        yield
    finally:
        owner[0] = None
        lock.release()


def one_call_at_a_time(call: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for a pipeline's ``__call__``: the call holds the pipeline's UNet (:func:`exclusive_unet`)."""

    @functools.wraps(call)
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        with exclusive_unet(self):
            return call(self, *args, **kwargs)

    return guarded


@contextmanager
def attached(pipe: Any, conditioners: Sequence[Conditioner]) -> Iterator[None]:
    """Attach several conditioners in order; detach in reverse order, also on error."""
    with ExitStack() as stack:
        for conditioner in conditioners:
            stack.enter_context(conditioner.attach(pipe))
        yield


def as_condition(style: StyleCondition | ImageLike) -> StyleCondition:
    """Wrap a bare image/path as ``StyleCondition(image=...)``; pass conditions through."""
    if isinstance(style, StyleCondition):
        return style
    return StyleCondition(image=style)


def reference_conditions(style: Any, needs: str = "StyleID") -> list[StyleCondition]:
    """One style or a list of them as ``StyleCondition``s for a reference-based pipeline (``needs`` names it
    in errors): at least one; each with an ``image``, except that when any condition has a ``mask`` a
    condition may instead carry ``lora`` / ``embedding`` / ``text`` (a LoRA / style-token region)."""
    conditions = [as_condition(s) for s in (list(style) if isinstance(style, (list, tuple)) else [style])]
    if not conditions:
        raise ValueError("style: expected at least one style image or StyleCondition")
    masked = any(c.mask is not None for c in conditions)
    for index, condition in enumerate(conditions):
        if condition.image is None and not masked:
            raise ValueError(
                f"style[{index}]: {needs} needs StyleCondition.image (a reference image); a condition with a "
                "mask may instead carry lora=, embedding= or text= (a LoRA / style-token region)"
            )
    return conditions
