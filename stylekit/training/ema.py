"""Exponential moving average of a module's parameters (kept in fp32, saved as a plain state dict)."""

from __future__ import annotations

import torch


class EMA:
    """EMA of the floating-point parameters of a module, with diffusers' warm-up of the decay.

    The decay at optimizer step ``k`` (counting from 1) is ``min(max_decay, (1 + k) / (10 + k))``, so the
    average follows the weights closely early on and settles to ``max_decay``.
    """

    def __init__(self, module: torch.nn.Module, max_decay: float = 0.999) -> None:
        if not 0.0 <= max_decay < 1.0:
            raise ValueError(f"max_decay: expected a number in [0, 1), got {max_decay!r}")
        self.max_decay = max_decay
        self.shadow = {
            name: param.detach().float().clone()
            for name, param in module.named_parameters()
            if param.is_floating_point()
        }

    def decay(self, step: int) -> float:
        """The decay used by the update after optimizer step ``step`` (>= 1)."""
        return min(self.max_decay, (1.0 + step) / (10.0 + step))

    @torch.no_grad()
    def update(self, module: torch.nn.Module, step: int) -> None:
        """Move the average toward ``module``'s current parameters."""
        weight = 1.0 - self.decay(step)
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach().float(), weight)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module) -> None:
        """Write the averaged parameters into ``module`` (in its dtype)."""
        for name, param in module.named_parameters():
            if name in self.shadow:
                param.copy_(self.shadow[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged parameters (fp32), keyed like ``module.named_parameters()``."""
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict`; the keys must match exactly."""
        if set(state) != set(self.shadow):
            missing, extra = set(self.shadow) - set(state), set(state) - set(self.shadow)
            raise ValueError(
                f"EMA state does not match the module (missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(extra)[:3]})"
            )
        self.shadow = {name: value.float().clone() for name, value in state.items()}
