"""LoRA blocks, targeting and files: the shared vocabulary of the split trainers and ``LoRAStyle``.

A *block* is a UNet attention block or ResNet, named as diffusers names modules (``up_blocks.0.attentions.1``,
``mid_block.attentions.0``, ``up_blocks.1.resnets.0``). A LoRA targets the attention projections (``to_q``,
``to_k``, ``to_v``, ``to_out.0`` of ``attn1`` and ``attn2``) of the attention blocks its role owns and the
``conv1``/``conv2`` convolutions of its ResNets (LoCon-style). Files are the diffusers LoRA format
(``pytorch_lora_weights.safetensors``, keys ``unet.<module>.lora.down.weight`` / ``lora.up.weight``;
convolutions keep peft's ``lora_A``/``lora_B`` names, as diffusers writes them), read by stock
``pipe.load_lora_weights``; ``save_adapter(kohya=True)`` also writes the A1111/ComfyUI layout with ``.alpha``.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHT_NAME = "pytorch_lora_weights_kohya.safetensors"
INFO_NAME = "adapter_info.json"
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
CONVOLUTIONS = ("conv1", "conv2")
ROLES = ("content", "style")

# Content / style blocks of the B-LoRA split per architecture. SDXL: the B-LoRA paper's blocks. SD 1.x / mini:
# measured on mini (``python -m stylekit.adapters.lora_block_probe``, ``benchmarks/lora_quality.py``,
# docs/lora.md): a new subject's outline is learned only through ResNet convolutions, and only with
# ``up_blocks.2``'s among them; a style half on ``up_blocks.2``'s attention erases that outline when composed,
# one on the finest level's attention (``up_blocks.3``) keeps it and still carries the style. So content = the
# coarse attention blocks (the bottleneck, as the B-LoRA authors suggest for SD 1.5, and ``up_blocks.1``) plus
# every decoder ResNet (LoCon-style), style = ``up_blocks.3``'s attention blocks. Not a clean split.
BLORA_BLOCKS: dict[str, dict[str, tuple[str, ...]]] = {
    "sdxl": {"content": ("up_blocks.0.attentions.0",), "style": ("up_blocks.0.attentions.1",)},
    "sd": {
        "content": ("mid_block.attentions.0", "up_blocks.1.attentions.*", "up_blocks.*.resnets.*"),
        "style": ("up_blocks.3.attentions.*",),
    },
}

_BLOCK_RE = re.compile(r"^((?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.(?:attentions|resnets)\.\d+)")


def architecture_of(unet: Any) -> str:
    """``"sdxl"`` for a UNet with SDXL's ``text_time`` added conditioning, else ``"sd"``."""
    return "sdxl" if getattr(unet.config, "addition_embed_type", None) == "text_time" else "sd"


def lora_blocks(unet: Any) -> list[str]:
    """Names of every block a LoRA can target: attention blocks (``Transformer2DModel``s) and ResNets, in
    module order."""
    return [
        name
        for name, module in unet.named_modules()
        if _BLOCK_RE.fullmatch(name)
        and (hasattr(module, "transformer_blocks") or all(hasattr(module, c) for c in CONVOLUTIONS))
    ]


def attention_blocks(unet: Any) -> list[str]:
    """Names of the UNet's attention blocks, in module order."""
    return [block for block in lora_blocks(unet) if ".attentions." in block]


def check_blocks(unet: Any, blocks: Iterable[str], argument: str = "blocks") -> tuple[str, ...]:
    """Validate block names (attention blocks or ResNets) against the UNet and expand ``*`` patterns
    (``up_blocks.*.resnets.*``: every decoder ResNet, in module order); repeats are dropped.

    Raises:
        ValueError: a name (or pattern) matches none of the UNet's blocks (the message lists them).
    """
    blocks = tuple(blocks)
    if not blocks:
        raise ValueError(f"{argument}: expected at least one block name")
    known = lora_blocks(unet)
    out: list[str] = []
    for block in blocks:
        matches = [name for name in known if fnmatch.fnmatchcase(name, block)]
        if not matches:
            raise ValueError(
                f"{argument}: the UNet has no attention block or ResNet {block!r}; it has {known}"
            )
        out += [m for m in matches if m not in out]
    return tuple(out)


def target_modules(unet: Any, blocks: Iterable[str], projections: Sequence[str] = PROJECTIONS) -> list[str]:
    """Full module names a LoRA on ``blocks`` (validated) targets, for ``LoraConfig``: the attention
    projections of attention blocks, ``conv1``/``conv2`` of ResNets."""
    prefixes = tuple(f"{b}." for b in check_blocks(unet, blocks))
    linear_suffixes = tuple(f".{p}" for p in projections)
    conv_suffixes = tuple(f".{c}" for c in CONVOLUTIONS)
    return sorted(
        name
        for name, module in unet.named_modules()
        if name.startswith(prefixes)
        and (
            (
                isinstance(module, torch.nn.Linear)
                and name.endswith(linear_suffixes)
                and (".attn1." in name or ".attn2." in name)
            )
            or (isinstance(module, torch.nn.Conv2d) and ".resnets." in name and name.endswith(conv_suffixes))
        )
    )


def block_of(key: str) -> str | None:
    """The block (attention block or ResNet) a state-dict key / module name lies in (``unet.`` prefix
    allowed), else None."""
    match = _BLOCK_RE.match(key.removeprefix("unet."))
    return match.group(1) if match else None


def default_blocks(unet: Any, method: str) -> dict[str, tuple[str, ...]]:
    """Role -> blocks of a method: ``blora`` the architecture's split; others every attention block."""
    if method == "blora":
        return dict(BLORA_BLOCKS[architecture_of(unet)])
    return {"all": tuple(attention_blocks(unet))}


# --------------------------------------------------------------------------------------------- files
def lora_file(path: str | Path) -> Path:
    """The weights file of an adapter folder (or the file itself).

    Raises:
        FileNotFoundError: no such folder/file, or the folder holds no ``pytorch_lora_weights.safetensors``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LORA_WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"LoRA: expected a folder holding {LORA_WEIGHT_NAME} or a .safetensors file, got {path}"
        )
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA: only .safetensors files are read (nothing is unpickled), got {path}")
    return path


def read_lora(path: str | Path) -> dict[str, torch.Tensor]:
    """Diffusers-format LoRA tensors of a folder or file (kohya files are converted by diffusers)."""
    from diffusers import StableDiffusionPipeline
    from safetensors import SafetensorError

    file = lora_file(path)
    try:
        out = StableDiffusionPipeline.lora_state_dict(str(file))
    except (OSError, RuntimeError, SafetensorError) as error:
        reason = " ".join(str(error).split())[:200]
        raise ValueError(f"LoRA: cannot read {file} as a LoRA (a .safetensors file): {reason}") from None
    return out[0] if isinstance(out, tuple) else out


def check_lora_fits(unet: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """Read a LoRA file and check that every tensor matches a projection or convolution of ``unet`` in shape.

    Returns:
        The state dict (diffusers keys).

    Raises:
        ValueError: a key names a module the UNet lacks, or a shape differs (a LoRA for another
            architecture, e.g. an SDXL LoRA on an SD 1.x model).
    """
    from diffusers.utils import convert_unet_state_dict_to_peft

    state = read_lora(path)
    modules = dict(unet.named_modules())
    unet_state = {
        k: v for k, v in state.items() if k.startswith(("unet.", "down_blocks", "mid_block", "up_blocks"))
    }
    if not unet_state:
        raise ValueError(
            f"LoRA {path}: holds no UNet weights (keys like 'unet.up_blocks...lora.down.weight')"
        )
    # diffusers' kohya conversion gives the old attention-processor names (attn1.processor.to_k_lora.down);
    # ``original`` maps a normalised name back to the file's own key for the messages
    original = convert_unet_state_dict_to_peft({k: k for k in unet_state})
    for key, file_key in original.items():
        tensor = unet_state[file_key]
        name = key.removeprefix("unet.").replace(".processor.", ".")
        for tag in (".lora.down.weight", ".lora.up.weight", ".lora_A.weight", ".lora_B.weight", ".alpha"):
            if name.endswith(tag):
                name = name[: -len(tag)]
                break
        name = name.replace(".lora_A", "").replace(".lora_B", "")
        module = modules.get(name)
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            raise ValueError(
                f"LoRA {path}: was trained for another architecture: key {file_key!r} (as diffusers reads it) names "
                f"module {name!r}, which "
                f"this UNet ({architecture_of(unet).upper()}, blocks {attention_blocks(unet)[:3]}...) lacks"
            )
        if tensor.ndim <= 1:  # .alpha
            continue
        down = ".down." in key or ".lora_A" in key
        if isinstance(module, torch.nn.Linear):
            fits = tensor.ndim == 2 and tensor.shape[1 if down else 0] == (
                module.in_features if down else module.out_features
            )
            kind = f"Linear({module.in_features}, {module.out_features})"
        else:  # down: (r, in, kh, kw); up: (out, r, 1, 1)
            fits = tensor.ndim == 4 and (
                tensor.shape[1] == module.in_channels and tuple(tensor.shape[2:]) == tuple(module.kernel_size)
                if down
                else tensor.shape[0] == module.out_channels
            )
            kind = f"Conv2d({module.in_channels}, {module.out_channels}, kernel {tuple(module.kernel_size)})"
        if not fits:
            raise ValueError(
                f"LoRA {path}: was trained for another architecture: {file_key!r} (as diffusers reads it) has shape "
                f"{tuple(tensor.shape)}, "
                f"but {name} is {kind}"
            )
    return state


def save_adapter(
    directory: str | Path,
    peft_state: Mapping[str, torch.Tensor],
    lora_config: Any,
    info: Mapping[str, Any],
    architecture: str = "sd",
    kohya: bool = False,
) -> Path:
    """Write one adapter folder atomically (diffusers format, optional kohya copy, ``adapter_info.json``).

    Args:
        peft_state: ``get_peft_model_state_dict(unet)`` entries of this adapter (``...lora_A.weight`` keys).
        lora_config: its ``peft.LoraConfig`` (stored as the file's adapter metadata).
        info: JSON-serialisable description (method, role, blocks, base model, steps).
        architecture: ``"sd"`` or ``"sdxl"`` (selects the diffusers pipeline class that writes the file).
        kohya: also write ``pytorch_lora_weights_kohya.safetensors`` (``lora_unet_*`` keys + ``.alpha``).

    Returns:
        The adapter folder.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from safetensors.torch import save_file

    from stylekit.files import atomic_path

    directory = Path(directory)
    state = {k: v.detach().float().cpu().contiguous() for k, v in peft_state.items()}
    with atomic_path(directory, folder=True) as temp:
        writer = StableDiffusionXLPipeline if architecture == "sdxl" else StableDiffusionPipeline
        writer.save_lora_weights(
            temp,
            unet_lora_layers=convert_state_dict_to_diffusers(dict(state)),
            unet_lora_adapter_metadata=lora_config.to_dict(),
        )
        if kohya:
            kohya_state = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in state.items()})
            alpha = float(lora_config.lora_alpha)
            kohya_state = {
                k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous())
                for k, v in kohya_state.items()
            }
            save_file(kohya_state, str(temp / KOHYA_WEIGHT_NAME), metadata={"format": "pt"})
        (temp / INFO_NAME).write_text(json.dumps(dict(info), indent=1, default=str))
    return directory


def read_info(path: str | Path) -> dict[str, Any]:
    """``adapter_info.json`` of an adapter folder ({} when absent)."""
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    info = folder / INFO_NAME
    return json.loads(info.read_text()) if info.is_file() else {}
