"""Break-for-Make (B4M) on peft LoRA layers: partly learnable projections and the "make" fusion.

In every LoRA layer (peft: ``lora_A`` = down ``(r, in)``, ``lora_B`` = up ``(out, r)``; on a ResNet
convolution down ``(r, in, kh, kw)`` and up ``(out, r, 1, 1)``) the first half of the down *columns* (input
channels) and of the up *rows* (output channels) is frozen. On square ``to_q``/``to_k``/``to_v`` layers the frozen
blocks are an orthogonal basis (as in the official code); elsewhere down is N(0, 1/r) and up is 0. The
frozen values come from a generator seeded by ``(seed, module name)``, so a content run and a style run
with the same seed share them exactly, which the make stage relies on.

The frozen half is a real frozen tensor: :func:`split_frozen_halves` replaces each ``lora_A``/``lora_B``
projection of the peft layer by a :class:`PartlyFrozenProjection`, whose only trainable parameter is the
learnable half, a view into a full-size weight buffer (gradients and optimizer state are half-size; no
per-step copy); the forward pass applies the same full-size weight as before.
:func:`merge_frozen_halves` puts plain full-size ``nn.Linear`` / ``nn.Conv2d`` projections back (for saving in
the diffusers format with peft's own state-dict functions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

ORTH_PROJECTIONS = (".to_q", ".to_k", ".to_v")
FROZEN_DIM = {"lora_A": 1, "lora_B": 0}  # down: leading columns frozen; up: leading rows frozen


def _module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def lora_layers(unet: torch.nn.Module, adapter: str = "default") -> Iterator[tuple[str, torch.nn.Module]]:
    """(module name, peft LoRA layer) pairs that carry ``adapter``."""
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            yield name, module


def lora_projections(
    unet: torch.nn.Module, adapter: str = "default"
) -> Iterator[tuple[str, str, torch.nn.Module]]:
    """(module name, ``lora_A``/``lora_B``, the projection module) for every LoRA layer."""
    for name, layer in lora_layers(unet, adapter):
        for kind in FROZEN_DIM:
            yield name, kind, getattr(layer, kind)[adapter]


class _JoinedWeight(torch.autograd.Function):
    """Forward: the full-size weight buffer, whose trailing block *is* the learnable parameter (shared
    storage, so no copy per step); backward: the trailing block of the gradient goes to that parameter."""

    @staticmethod
    def forward(ctx: Any, learnable: torch.Tensor, full: torch.Tensor, dim: int, size: int) -> torch.Tensor:
        ctx.dim, ctx.size = dim, size
        return full.view_as(full)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        return grad.narrow(ctx.dim, ctx.size, grad.shape[ctx.dim] - ctx.size), None, None, None


class PartlyFrozenProjection(torch.nn.Module):
    """A bias-free linear or 2-D convolution whose weight's leading ``size`` entries along ``dim`` are frozen.

    ``full`` (a buffer) holds the whole weight; ``learnable``, the only parameter, is a view of its trailing
    block (same storage: optimizer updates land in ``full`` in place), so gradients and optimizer state
    cover only the learnable block while the forward pass applies the same full-size tensor.

    Args:
        layer: the ``nn.Linear`` or ``nn.Conv2d`` (no bias) it replaces; its weight storage is taken over.
        dim, size: the frozen block is ``weight.narrow(dim, 0, size)``.
    """

    def __init__(self, layer: torch.nn.Linear | torch.nn.Conv2d, dim: int, size: int) -> None:
        super().__init__()
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)) or layer.bias is not None:
            raise ValueError(f"B4M: expected a bias-free Linear or Conv2d LoRA projection, got {layer}")
        self.dim, self.size = dim, size
        self.conv: dict[str, Any] | None = (
            {k: getattr(layer, k) for k in ("stride", "padding", "dilation", "groups")}
            if isinstance(layer, torch.nn.Conv2d)
            else None
        )
        weight = layer.weight
        self.register_buffer("full", weight.detach())  # takes over the replaced layer's storage
        self.learnable = torch.nn.Parameter(self.full.narrow(dim, size, weight.shape[dim] - size))

    @property
    def frozen(self) -> torch.Tensor:
        """The frozen leading block (a view of ``full``)."""
        return self.full.narrow(self.dim, 0, self.size)

    @property
    def weight(self) -> torch.Tensor:
        """The full-size weight (gradients flow to ``learnable`` only)."""
        return _JoinedWeight.apply(self.learnable, self.full, self.dim, self.size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv is None:
            return torch.nn.functional.linear(x, self.weight)
        return torch.nn.functional.conv2d(x, self.weight, None, **self.conv)

    def to_plain(self) -> torch.nn.Module:
        """A plain ``nn.Linear`` / ``nn.Conv2d`` holding a copy of the current full-size weight."""
        weight = self.full.detach().clone()
        if self.conv is None:
            layer: torch.nn.Module = torch.nn.utils.skip_init(
                torch.nn.Linear, weight.shape[1], weight.shape[0], bias=False
            )
        else:
            layer = torch.nn.utils.skip_init(
                torch.nn.Conv2d,
                weight.shape[1] * self.conv["groups"],
                weight.shape[0],
                tuple(weight.shape[2:]),
                bias=False,
                **self.conv,
            )
        layer.weight = torch.nn.Parameter(weight, requires_grad=True)
        return layer

    def _apply(self, fn: Any, recurse: bool = True) -> PartlyFrozenProjection:
        # ``.to()`` / ``.double()`` replace ``full`` and ``learnable`` separately: make the parameter (same
        # object, so an optimizer built later still holds it) a view of the moved buffer again.
        super()._apply(fn, recurse)
        block = self.full.narrow(self.dim, self.size, self.full.shape[self.dim] - self.size)
        if self.learnable.data_ptr() != block.data_ptr():
            self.learnable.data = block
        return self


def is_split(linear: torch.nn.Module) -> bool:
    """Whether a LoRA projection is split into a frozen and a learnable block."""
    return isinstance(linear, PartlyFrozenProjection)


def learnable_parameter(linear: torch.nn.Module) -> torch.nn.Parameter:
    """The trainable tensor of a LoRA projection: the learnable block when split, else the whole weight."""
    return linear.learnable if isinstance(linear, PartlyFrozenProjection) else linear.weight  # type: ignore[return-value]


@torch.no_grad()
def set_full_weight(linear: torch.nn.Module, value: torch.Tensor) -> None:
    """Write a full-size weight into a LoRA projection (both blocks when split)."""
    target = linear.full if isinstance(linear, PartlyFrozenProjection) else linear.weight
    target.copy_(value.to(target.dtype))  # type: ignore[union-attr]


def split_frozen_halves(unet: torch.nn.Module, adapter: str = "default") -> int:
    """Replace every LoRA projection of ``adapter`` by a :class:`PartlyFrozenProjection` (frozen leading half);
    returns the number of frozen entries. Call after the final values are in place (init, make-stage load)
    and before building the optimizer."""
    frozen = 0
    for _, layer in list(lora_layers(unet, adapter)):
        for kind, dim in FROZEN_DIM.items():
            projection = getattr(layer, kind)[adapter]
            split = PartlyFrozenProjection(projection, dim, projection.weight.shape[dim] // 2)
            getattr(layer, kind)[adapter] = split
            frozen += split.frozen.numel()
    if not frozen:
        raise ValueError(f"B4M: the UNet carries no LoRA layers of adapter {adapter!r}")
    return frozen


@torch.no_grad()
def merge_frozen_halves(unet: torch.nn.Module, adapter: str = "default") -> None:
    """Undo :func:`split_frozen_halves`: plain full-size peft ``nn.Linear`` / ``nn.Conv2d`` projections with
    the current values."""
    for _, layer in list(lora_layers(unet, adapter)):
        for kind in FROZEN_DIM:
            split = getattr(layer, kind)[adapter]
            if isinstance(split, PartlyFrozenProjection):
                getattr(layer, kind)[adapter] = split.to_plain()


@torch.no_grad()
def init_partly_learnable(unet: torch.nn.Module, seed: int, adapter: str = "default") -> None:
    """Initialise every LoRA layer of ``adapter`` for B4M (values only; :func:`split_frozen_halves` freezes).

    Down ``(r, in)``: columns ``[:in // 2]`` frozen, ``[in // 2:]`` learnable (N(0, 1/r)). Up ``(out, r)``:
    rows ``[:out // 2]`` frozen, ``[out // 2:]`` learnable (0). Convolutions alike along their input / output
    channels. Square q/k/v layers: the frozen blocks are disjoint row subsets of one orthogonal
    ``(2 * max(in, out), r)`` matrix.
    """
    found = False
    for name, layer in lora_layers(unet, adapter):
        down = layer.lora_A[adapter].weight
        up = layer.lora_B[adapter].weight
        rank, fan_in = down.shape[:2]
        fan_out = up.shape[0]
        generator = torch.Generator().manual_seed(_module_seed(seed, name))
        new_down = torch.randn(down.shape, generator=generator) / rank**0.5
        new_up = torch.zeros(up.shape)
        h_in, h_out = fan_in // 2, fan_out // 2
        if down.ndim == 2 and fan_in == fan_out and name.endswith(ORTH_PROJECTIONS):
            basis = torch.empty(2 * max(fan_in, fan_out), rank)
            torch.nn.init.orthogonal_(basis, generator=generator)
            order = torch.randperm(basis.shape[0], generator=generator)
            new_down[:, :h_in] = basis[order[:h_in]].T
            new_up[:h_out] = basis[order[h_in : h_in + h_out]]
        down.copy_(new_down.to(down.dtype))
        up.copy_(new_up.to(up.dtype))
        found = True
    if not found:
        raise ValueError(f"B4M: the UNet carries no LoRA layers of adapter {adapter!r}")


def projection_groups(
    unet: torch.nn.Module, role: str, adapter: str = "default"
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(primary, secondary) parameters of a break run: content trains mainly down, style mainly up."""
    downs = [learnable_parameter(layer.lora_A[adapter]) for _, layer in lora_layers(unet, adapter)]
    ups = [learnable_parameter(layer.lora_B[adapter]) for _, layer in lora_layers(unet, adapter)]
    if role == "content":
        return downs, ups
    if role == "style":
        return ups, downs
    raise ValueError(f"b4m_role: expected 'content' or 'style', got {role!r}")


def make_fused_state(
    content: Mapping[str, torch.Tensor], style: Mapping[str, torch.Tensor], atol: float = 1e-6
) -> dict[str, torch.Tensor]:
    """The make stage's starting adapter: the content adapter's down and the style adapter's up.

    Args:
        content, style: peft state dicts (``...lora_A.weight`` / ``...lora_B.weight`` keys) of the two
            break runs.

    Raises:
        ValueError: the two adapters do not cover the same layers with the same shapes, or their frozen
            halves differ (they were not trained with the same seed, rank and blocks).
    """
    if set(content) != set(style):
        missing = sorted(set(content) ^ set(style))[:3]
        raise ValueError(f"b4m make: the content and style adapters cover different layers (e.g. {missing})")
    fused: dict[str, torch.Tensor] = {}
    for key, c in content.items():
        s = style[key]
        if c.shape != s.shape:
            raise ValueError(
                f"b4m make: {key} has shape {tuple(c.shape)} vs {tuple(s.shape)} (different rank?)"
            )
        if ".lora_A" in key:
            half = c.shape[1] // 2
            if not torch.allclose(c[:, :half], s[:, :half], atol=atol):
                raise ValueError(
                    f"b4m make: the frozen down columns of {key} differ; train both adapters with the same "
                    "--seed, --rank and blocks"
                )
            fused[key] = c.clone()
        else:
            fused[key] = s.clone()
    return fused


def _full_matrix(projection: torch.nn.Module) -> torch.Tensor:
    """A LoRA projection's full-size weight as a matrix (a convolution's down flattened to ``(r, in*k*k)``,
    its 1x1 up to ``(out, r)``)."""
    weight = projection.full if isinstance(projection, PartlyFrozenProjection) else projection.weight
    return weight.detach().flatten(1)


@torch.no_grad()
def riemannian_precondition(unet: torch.nn.Module, reg: float, adapter: str = "default") -> int:
    """Precondition every LoRA layer's gradients in place (Riemannian-preconditioned LoRA, Zhang & Pilanci
    2024; B4M's make stage uses it as AdamWr): ``g_A <- (B^T B + reg I)^-1 g_A`` and ``g_B <- g_B (A A^T +
    reg I)^-1`` with the *full* ``r x r`` factors, frozen halves included. A split projection's learnable block
    is a set of whole columns of ``g_A`` / rows of ``g_B``, so preconditioning it equals slicing the
    preconditioned full gradient. Same formula as peft's ``create_riemannian_optimizer`` (which sees only 2-D
    parameters, so it would miss convolutions and use only the learnable halves). Returns the layers done."""
    done = 0
    for _, layer in lora_layers(unet, adapter):
        down, up = layer.lora_A[adapter], layer.lora_B[adapter]
        a, b = _full_matrix(down).float(), _full_matrix(up).float()
        eye = torch.eye(a.shape[0], device=a.device)
        for projection, factor, left in ((down, b.T @ b, True), (up, a @ a.T, False)):
            param = learnable_parameter(projection)
            if param.grad is None:
                continue
            inverse = torch.linalg.pinv(factor + reg * eye)
            grad = param.grad.flatten(1) if left else param.grad.reshape(param.grad.shape[0], -1)
            new = inverse @ grad.float() if left else grad.float() @ inverse
            param.grad.copy_(new.reshape(param.grad.shape).to(param.grad.dtype))
        done += 1
    return done
