"""Break-for-Make (B4M) on peft LoRA layers: partly learnable projections and the "make" fusion.

In every LoRA layer (peft: ``lora_A`` = down ``(r, in)``, ``lora_B`` = up ``(out, r)``) the first half of
the down *columns* and of the up *rows* is frozen. On square ``to_q``/``to_k``/``to_v`` layers the frozen
blocks are an orthogonal basis (as in the official code); elsewhere down is N(0, 1/r) and up is 0. The
frozen values come from a generator seeded by ``(seed, module name)``, so a content run and a style run
with the same seed share them exactly, which the make stage relies on. Frozen entries get zero gradient
and are written back after every optimizer step (so weight decay cannot move them either).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch

ORTH_PROJECTIONS = (".to_q", ".to_k", ".to_v")


def _module_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def lora_layers(unet: torch.nn.Module, adapter: str = "default") -> Iterator[tuple[str, torch.nn.Module]]:
    """(module name, peft LoRA layer) pairs that carry ``adapter``."""
    for name, module in unet.named_modules():
        if hasattr(module, "lora_A") and adapter in getattr(module, "lora_A", {}):
            yield name, module


@dataclass
class FrozenHalves:
    """The frozen leading block of every B4M parameter: parameter -> (dim, size); ``values`` their values.

    Down ``(r, in)``: columns ``[:size]`` (dim 1); up ``(out, r)``: rows ``[:size]`` (dim 0).
    """

    blocks: dict[torch.nn.Parameter, tuple[int, int]]
    values: dict[torch.nn.Parameter, torch.Tensor]

    def frozen_count(self) -> int:
        """Number of frozen entries."""
        return sum(int(p.shape[1 - dim]) * size for p, (dim, size) in self.blocks.items())

    def snapshot(self) -> None:
        """Take the current frozen values (after an init or a load)."""
        self.values = {p: p.detach().narrow(dim, 0, size).clone() for p, (dim, size) in self.blocks.items()}

    def zero_grads(self) -> None:
        """Zero the gradient of every frozen entry (call after backward, before clipping / stepping)."""
        for param, (dim, size) in self.blocks.items():
            if param.grad is not None:
                param.grad.narrow(dim, 0, size).zero_()

    @torch.no_grad()
    def restore(self) -> None:
        """Write the frozen values back (call after every optimizer step)."""
        for param, (dim, size) in self.blocks.items():
            param.data.narrow(dim, 0, size).copy_(self.values[param])


@torch.no_grad()
def init_partly_learnable(unet: torch.nn.Module, seed: int, adapter: str = "default") -> FrozenHalves:
    """Initialise every LoRA layer of ``adapter`` for B4M and return its frozen halves.

    Down ``(r, in)``: columns ``[:in // 2]`` frozen, ``[in // 2:]`` learnable (N(0, 1/r)). Up ``(out, r)``:
    rows ``[:out // 2]`` frozen, ``[out // 2:]`` learnable (0). Square q/k/v layers: the frozen blocks are
    disjoint row subsets of one orthogonal ``(2 * max(in, out), r)`` matrix.
    """
    blocks: dict[torch.nn.Parameter, tuple[int, int]] = {}
    for name, layer in lora_layers(unet, adapter):
        down = layer.lora_A[adapter].weight
        up = layer.lora_B[adapter].weight
        rank, fan_in = down.shape
        fan_out = up.shape[0]
        generator = torch.Generator().manual_seed(_module_seed(seed, name))
        new_down = torch.randn(rank, fan_in, generator=generator) / rank**0.5
        new_up = torch.zeros(fan_out, rank)
        h_in, h_out = fan_in // 2, fan_out // 2
        if fan_in == fan_out and name.endswith(ORTH_PROJECTIONS):
            basis = torch.empty(2 * max(fan_in, fan_out), rank)
            torch.nn.init.orthogonal_(basis, generator=generator)
            order = torch.randperm(basis.shape[0], generator=generator)
            new_down[:, :h_in] = basis[order[:h_in]].T
            new_up[:h_out] = basis[order[h_in : h_in + h_out]]
        down.copy_(new_down.to(down.dtype))
        up.copy_(new_up.to(up.dtype))
        blocks[down] = (1, h_in)
        blocks[up] = (0, h_out)
    if not blocks:
        raise ValueError(f"B4M: the UNet carries no LoRA layers of adapter {adapter!r}")
    frozen = FrozenHalves(blocks, {})
    frozen.snapshot()
    return frozen


def projection_groups(
    unet: torch.nn.Module, role: str, adapter: str = "default"
) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """(primary, secondary) parameters of a break run: content trains mainly down, style mainly up."""
    downs = [layer.lora_A[adapter].weight for _, layer in lora_layers(unet, adapter)]
    ups = [layer.lora_B[adapter].weight for _, layer in lora_layers(unet, adapter)]
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
