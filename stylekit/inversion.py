"""Deterministic DDIM inversion (eta = 0) with a callback where attention features are captured.

Timing (the corrected default): with sampling timesteps ``t_0 > ... > t_{N-1}`` (e.g. 981 ... 1), the
inversion walks ``s_i = t_{N-1-i}`` upward. The clean latent is taken as the latent at ``s_0``; step i
evaluates the model at ``(x_{s_i}, s_i)`` (features captured there belong to timestep ``s_i`` and were
computed on the latent sampling will see at ``s_i``) and moves to ``s_{i+1}``. The last evaluation, at
``(x_{t_0}, t_0)``, only captures features; sampling starts from ``x_{t_0}`` and runs all N steps.

``official=True`` reproduces jiwoogit/StyleID's ``run_styleid.py``: the last evaluation also moves the
latent to timestep 999 and that ``x_999`` is used as the start of a sampling run that skips ``t_0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class InversionResult:
    """Output of ``ddim_invert`` for a batch of B latents.

    Attributes:
        timesteps: (N,) long, ascending: the timestep of each model evaluation.
        latents: (N, B, C, h, w): the latent fed to the model at each evaluation (``x_{s_i}``).
        start_latent: (B, C, h, w): where sampling starts (``x_{t_0}``, or ``x_999`` when official).
        sampling_timesteps: (M,) long, descending: the timesteps sampling must run from ``start_latent``.
    """

    timesteps: torch.Tensor
    latents: torch.Tensor
    start_latent: torch.Tensor
    sampling_timesteps: torch.Tensor


def check_inference_steps(steps: Any, scheduler: Any) -> int:
    """``num_inference_steps`` as an int in [1, the scheduler's training timesteps], else a ValueError."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_inference_steps: expected an integer >= 1, got {steps!r}")
    train_steps = int(scheduler.config.num_train_timesteps)
    if steps > train_steps:
        raise ValueError(
            f"num_inference_steps: expected at most the scheduler's {train_steps} training timesteps, got {steps}"
        )
    return steps


def split_prediction(
    model_output: torch.Tensor, sample: torch.Tensor, alpha_prod: torch.Tensor, prediction_type: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, epsilon) predicted from a model output for ``epsilon``, ``v_prediction`` or ``sample`` models."""
    a, b = alpha_prod.sqrt(), (1 - alpha_prod).sqrt()
    if prediction_type == "epsilon":
        eps = model_output
        return (sample - b * eps) / a, eps
    if prediction_type == "v_prediction":
        return a * sample - b * model_output, a * model_output + b * sample
    if prediction_type == "sample":
        x0 = model_output
        return x0, (sample - a * x0) / b
    raise ValueError(f"prediction_type {prediction_type!r} is not supported by DDIM inversion")


def ddim_move(
    model_output: torch.Tensor,
    sample: torch.Tensor,
    alpha_from: torch.Tensor,
    alpha_to: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """Deterministic DDIM update of ``sample`` from noise level ``alpha_from`` to ``alpha_to``."""
    x0, eps = split_prediction(model_output, sample, alpha_from, prediction_type)
    return alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps


@torch.no_grad()
def ddim_invert(
    model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler: Any,
    latents: torch.Tensor,
    num_inference_steps: int,
    official: bool = False,
    before_eval: Callable[[int, int], None] | None = None,
    progress: Callable[[], None] | None = None,
) -> InversionResult:
    """Invert clean latents along the DDIM schedule of ``scheduler``.

    Args:
        model: ``model(latent, timestep) -> output`` (the UNet with empty-prompt conditioning, no guidance).
        scheduler: a diffusers scheduler with ``alphas_cumprod``, ``set_timesteps`` and
            ``config.prediction_type`` / ``config.num_train_timesteps``.
        latents: (B, C, h, w) VAE latents (already scaled), any float dtype; computed in its dtype.
        num_inference_steps: N >= 1.
        official: reproduce the official code's end at timestep 999 (see module docstring).
        before_eval: called as ``before_eval(step_index, timestep)`` before each model evaluation
            (where attention capture is told the current timestep).
        progress: called after each evaluation.

    Returns:
        An ``InversionResult``.
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    sampling = scheduler.timesteps.to(torch.long)
    ascending = sampling.flip(0)
    alphas = scheduler.alphas_cumprod.to(device=latents.device, dtype=torch.float64)
    prediction_type = scheduler.config.prediction_type
    final_timestep = int(scheduler.config.num_train_timesteps) - 1

    def alpha(t: int) -> torch.Tensor:
        return alphas[t].to(latents.dtype)

    sample = latents
    trajectory = []
    n = len(ascending)
    for i in range(n):
        t = int(ascending[i])
        trajectory.append(sample)
        if before_eval is not None:
            before_eval(i, t)
        output = model(sample, ascending[i])
        if progress is not None:
            progress()
        if i + 1 < n:
            sample = ddim_move(output, sample, alpha(t), alpha(int(ascending[i + 1])), prediction_type)
        elif official:
            sample = ddim_move(output, sample, alpha(t), alpha(final_timestep), prediction_type)
    if official:
        start, sampling_timesteps = sample, sampling[1:]
    else:
        start, sampling_timesteps = trajectory[-1], sampling
    return InversionResult(
        timesteps=ascending.cpu(),
        latents=torch.stack(trajectory),
        start_latent=start,
        sampling_timesteps=sampling_timesteps.cpu(),
    )


def adain_latent(content: torch.Tensor, style: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-channel AdaIN of latents: ``(c - mean_c) / std_c * std_s + mean_s`` over (h, w).

    Args:
        content: (B, C, h, w). style: (B, C, h, w) or (1, C, h, w). Unbiased std as in the official code,
        plus ``eps`` against constant channels.

    Returns:
        (B, C, h, w) in ``content``'s dtype.
    """
    c = content.float()
    s = style.float()
    c_mean, c_std = c.mean(dim=(2, 3), keepdim=True), c.std(dim=(2, 3), keepdim=True)
    s_mean, s_std = s.mean(dim=(2, 3), keepdim=True), s.std(dim=(2, 3), keepdim=True)
    return ((c - c_mean) / (c_std + eps) * (s_std + eps) + s_mean).to(content.dtype)
