"""Train content/style LoRAs with accelerate: B-LoRA, Break-for-Make and DreamBooth-LoRA.

    accelerate launch -m stylekit.adapters.train_lora --method blora --pretrained_model_name_or_path mini \\
        --instance_data_dir my_style/ --instance_prompt "a picture in [v] style" --output_dir out/

Methods (``docs/lora.md``):

- ``blora``: one peft LoRA on the content blocks and the style blocks, trained jointly; written as two
  adapters, ``OUT/content`` and ``OUT/style``.
- ``b4m`` ``--b4m_stage break --b4m_role content|style``: partly learnable projections (half of every down's
  columns and up's rows frozen, shared by seed); content trains down at ``--learning_rate`` and up at
  ``--learning_rate_2``, style the reverse; ``--aux_data_dir`` sets are fitted in the same steps.
  ``--b4m_stage make --content_lora A --style_lora B``: fuse the style up with the content down and
  fine-tune on the instance set plus the aux sets; written to ``OUT/fused``.
- ``dreambooth``: LoRA on every attention block (or ``--lora_blocks``) with prior preservation
  (``--with_prior_preservation --class_data_dir --class_prompt``) and auxiliary in-style sets; ``OUT/<role>``.

Flags follow diffusers' DreamBooth-LoRA scripts; ``--config run.toml|yaml`` supplies defaults that explicit
flags override. Checkpoints (``OUT/checkpoint-N``, ``accelerator.save_state`` into a temporary folder, then
renamed) resume with ``--resume_from_checkpoint latest`` to exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from stylekit.files import atomic_path, ensure_folder, write_json_atomic
from stylekit.lora import (
    LORA_WEIGHT_NAME,
    ROLES,
    architecture_of,
    attention_blocks,
    block_of,
    check_blocks,
    default_blocks,
    save_adapter,
    target_modules,
)
from stylekit.training.memory import RegionPeakMemory

from .lora_b4m import riemannian_precondition
from .lora_data import (
    ImageSet,
    PromptCache,
    cache_latents,
    draw_batch,
    load_bucketed_sets,
    load_image_set,
    pick_bucket,
)

METHODS = ("blora", "b4m", "dreambooth")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class TrainLoRAConfig:
    """Every setting of a LoRA training run (validated on construction; same names as the CLI flags)."""

    output_dir: str = _help("where adapters, checkpoints, logs and validation images go", default="")
    instance_data_dir: str = _help(
        "folder of training images (png/jpg/webp/...; name.txt = caption)", default=""
    )
    instance_prompt: str = _help("prompt of the instance images, e.g. 'a picture in [v] style'", default="")
    method: str = _help(f"one of {METHODS}", default="blora")
    pretrained_model_name_or_path: str = _help(
        "preset (mini, tiny-sd, ...), hub id or folder", default="mini"
    )
    # blocks
    content_blocks: list[str] | None = _help(
        "blora: content blocks: attention blocks and/or ResNets, '*' patterns allowed "
        "(default: the architecture's split)",
        default=None,
    )
    style_blocks: list[str] | None = _help(
        "blora: style blocks, as --content_blocks (default: the architecture's split)", default=None
    )
    lora_blocks: list[str] | None = _help(
        "b4m/dreambooth: blocks to train, as --content_blocks (default: every attention block)",
        default=None,
    )
    adapter_role: str = _help(
        "dreambooth: name of the written adapter folder (style or content)", default="style"
    )
    # b4m
    b4m_stage: str = _help("b4m: 'break' (train one adapter) or 'make' (fuse and fine-tune)", default="break")
    b4m_role: str = _help("b4m break: 'content' (trains down) or 'style' (trains up)", default="content")
    content_lora: str | None = _help("b4m make: the content adapter folder", default=None)
    style_lora: str | None = _help("b4m make: the style adapter folder", default=None)
    learning_rate_2: float = _help("b4m: lr of the secondary projection", default=1e-5)
    # auxiliary / prior sets
    aux_data_dir: list[str] = _help(
        "auxiliary image folders (b4m multi-correspondence, dreambooth dual binding)", default_factory=list
    )
    aux_prompt: list[str] = _help("one prompt per --aux_data_dir", default_factory=list)
    aux_loss_weight: float = _help("loss weight of the auxiliary sets", default=1.0)
    with_prior_preservation: bool = _help(
        "add the class set's loss (DreamBooth prior preservation)", default=False
    )
    class_data_dir: str | None = _help("class (prior) images", default=None)
    class_prompt: str | None = _help("prompt of the class images", default=None)
    prior_loss_weight: float = _help("weight of the prior loss", default=1.0)
    style_loss_weight: float = _help(
        "weight of the style-contrastive loss on the predicted x0 (0 = off)", default=0.0
    )
    style_loss_temperature: float = _help("InfoNCE temperature of the style-contrastive loss", default=0.1)
    # LoRA
    rank: int = _help("LoRA rank r", default=4)
    lora_alpha: float | None = _help("LoRA alpha (default: rank, i.e. scale 1)", default=None)
    lora_dropout: float = _help("LoRA dropout", default=0.0)
    # optimisation
    resolution: int = _help("training resolution (images cover-resized and centre-cropped)", default=0)
    aspect_buckets: bool = _help(
        "group instance images into aspect-ratio buckets of about resolution**2 pixels (one bucket per batch)",
        default=False,
    )
    bucket_max_ratio: float = _help(
        "aspect_buckets: the most elongated bucket (long side / short)", default=2.0
    )
    train_batch_size: int = _help("rows per set per process per micro-step", default=1)
    gradient_accumulation_steps: int = _help("micro-steps per optimizer step", default=1)
    learning_rate: float = _help("learning rate (primary projection for b4m)", default=1e-4)
    lr_scheduler: str = _help(f"one of {SCHEDULERS}", default="constant")
    lr_warmup_steps: int = _help("warm-up optimizer steps", default=0)
    max_train_steps: int = _help("optimizer steps", default=500)
    adam_beta1: float = _help("AdamW beta1", default=0.9)
    adam_beta2: float = _help("AdamW beta2", default=0.999)
    adam_weight_decay: float = _help("AdamW weight decay", default=1e-2)
    adam_epsilon: float = _help("AdamW epsilon", default=1e-8)
    max_grad_norm: float = _help("gradient clipping norm (0 = off)", default=1.0)
    use_8bit_adam: bool = _help("bitsandbytes AdamW8bit (CUDA only)", default=False)
    riemannian_precondition: bool = _help(
        "precondition each LoRA layer's gradients by its r x r factors before the optimizer step "
        "(Riemannian-preconditioned LoRA; the official B4M make stage's AdamWr)",
        default=False,
    )
    riemannian_reg: float = _help("damping added to the r x r factors before inversion", default=1e-2)
    mixed_precision: str | None = _help(f"one of {PRECISIONS} (default: accelerate config)", default=None)
    gradient_checkpointing: bool = _help("UNet gradient checkpointing", default=False)
    seed: int = _help("seed of the data order, noise, timesteps and LoRA init", default=0)
    # checkpoints, validation, logging
    checkpointing_steps: int = _help("save a resumable checkpoint every N steps (0 = never)", default=500)
    checkpoints_total_limit: int | None = _help("keep at most this many checkpoints", default=None)
    resume_from_checkpoint: str | None = _help("'latest' or a checkpoint folder", default=None)
    overwrite_output_dir: bool = _help(
        "start afresh in an --output_dir that holds this run's adapter folders or checkpoints (its checkpoints "
        "are deleted first); without it such a run is refused",
        default=False,
    )
    validation_prompt: str | None = _help("prompt of the validation images", default=None)
    validation_steps: int = _help("validation images every N steps (and at the end)", default=100)
    num_validation_images: int = _help("validation images per round", default=2)
    validation_inference_steps: int = _help("sampling steps of the validation images", default=25)
    report_to: str = _help("'tensorboard', 'wandb', 'all' or 'none'", default="none")
    logging_dir: str = _help("log folder under output_dir", default="logs")
    output_kohya_format: bool = _help(
        "also write pytorch_lora_weights_kohya.safetensors (A1111/ComfyUI)", default=False
    )
    num_threads: int = _help("torch CPU threads (0 = leave as is)", default=0)
    config: str | None = _help("TOML/YAML file with any of these options (flags override it)", default=None)

    def __post_init__(self) -> None:
        if self.config is not None:  # parse_config reads the file and records its path afterwards
            raise ValueError(
                "config: TrainLoRAConfig does not read files; use parse_config(['--config', PATH, ...]) or "
                "TrainLoRAConfig(**read_config_file(PATH), ...)"
            )
        for name in ("output_dir", "instance_data_dir", "instance_prompt", "pretrained_model_name_or_path"):
            if not str(getattr(self, name) or "").strip():
                raise ValueError(f"--{name}: required")
        choices = {
            "method": METHODS,
            "lr_scheduler": SCHEDULERS,
            "b4m_stage": ("break", "make"),
            "b4m_role": ROLES,
            "adapter_role": ROLES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name}: expected one of {allowed}, got {getattr(self, name)!r}")
        if self.mixed_precision is not None and self.mixed_precision not in PRECISIONS:
            raise ValueError(f"--mixed_precision: expected one of {PRECISIONS}, got {self.mixed_precision!r}")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"--rank: expected an integer >= 1, got {self.rank!r}")
        for name in (
            "train_batch_size",
            "gradient_accumulation_steps",
            "max_train_steps",
            "validation_steps",
            "num_validation_images",
            "validation_inference_steps",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name}: expected an integer >= 1, got {value!r}")
        for name in ("checkpointing_steps", "lr_warmup_steps", "resolution", "num_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name}: expected an integer >= 0, got {getattr(self, name)!r}")
        if self.resolution % 8:
            raise ValueError(
                f"--resolution: expected a multiple of 8 (the VAE's downscale factor), got {self.resolution}"
            )
        for name in ("learning_rate", "learning_rate_2"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"--{name}: expected a positive number, got {value!r}")
        if not (math.isfinite(self.riemannian_reg) and self.riemannian_reg >= 0):
            raise ValueError(f"--riemannian_reg: expected a number >= 0, got {self.riemannian_reg!r}")
        if not (math.isfinite(self.bucket_max_ratio) and self.bucket_max_ratio >= 1):
            raise ValueError(f"--bucket_max_ratio: expected a number >= 1, got {self.bucket_max_ratio!r}")
        if self.aspect_buckets and self.style_loss_weight > 0:
            raise ValueError(
                "--aspect_buckets with --style_loss_weight > 0 is not supported; drop one of them"
            )
        if self.style_loss_weight < 0 or self.style_loss_temperature <= 0:
            raise ValueError("--style_loss_weight: expected >= 0; --style_loss_temperature: expected > 0")
        if self.lora_alpha is not None and self.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha: expected a positive number, got {self.lora_alpha!r}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout: expected a number in [0, 1), got {self.lora_dropout!r}")
        if len(self.aux_prompt) != len(self.aux_data_dir):
            raise ValueError(
                f"--aux_prompt: expected one prompt per --aux_data_dir ({len(self.aux_data_dir)}), got {len(self.aux_prompt)}"
            )
        if self.with_prior_preservation and not (self.class_data_dir and self.class_prompt):
            raise ValueError("--with_prior_preservation needs --class_data_dir and --class_prompt")
        if self.method == "b4m" and self.b4m_stage == "make" and not (self.content_lora and self.style_lora):
            raise ValueError(
                "--b4m_stage make needs --content_lora and --style_lora (the two break adapters)"
            )
        if self.use_8bit_adam and not torch.cuda.is_available():
            raise ValueError("--use_8bit_adam needs CUDA (bitsandbytes); drop the flag on CPU")
        if self.report_to not in ("none", "tensorboard", "wandb", "all"):
            raise ValueError(f"--report_to: expected tensorboard, wandb, all or none, got {self.report_to!r}")
        installed = {  # what accelerate can log to ("all" = every installed one)
            "tensorboard": any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")),
            "wandb": importlib.util.find_spec("wandb") is not None,
        }
        if self.report_to in installed and not installed[self.report_to]:
            raise ValueError(
                f"--report_to {self.report_to}: it is not installed (pip install {self.report_to})"
            )
        if self.report_to == "all" and not any(installed.values()):
            raise ValueError("--report_to all: neither tensorboard nor wandb is installed")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 1:
            raise ValueError(
                f"--checkpoints_total_limit: expected an integer >= 1 (or leave it out for no limit), got "
                f"{self.checkpoints_total_limit!r}"
            )
        self._check_method_flags()

    def _check_method_flags(self) -> None:
        """Refuse flags the chosen method would ignore."""
        ignored = {
            "blora": ("lora_blocks", "content_lora", "style_lora"),
            "b4m": ("content_blocks", "style_blocks"),
            "dreambooth": ("content_blocks", "style_blocks", "content_lora", "style_lora"),
        }[self.method]
        for name in ignored:
            if getattr(self, name):
                raise ValueError(f"--{name}: not used by --method {self.method}; drop it")
        if self.method != "dreambooth" and self.adapter_role != "style":
            raise ValueError(
                "--adapter_role: only --method dreambooth names its adapter so (blora writes content and "
                "style, b4m takes --b4m_role); drop it"
            )
        if self.method == "b4m" and self.b4m_stage == "break" and (self.content_lora or self.style_lora):
            raise ValueError(
                "--content_lora / --style_lora: only the make stage (--b4m_stage make) reads them"
            )
        if not self.with_prior_preservation and (self.class_data_dir or self.class_prompt):
            raise ValueError(
                "--class_data_dir / --class_prompt: used only with --with_prior_preservation; add it or drop them"
            )

    def adapter_roles(self) -> tuple[str, ...]:
        """The adapter folders this run writes under ``output_dir``."""
        if self.method == "blora":
            return ("content", "style")
        if self.method == "b4m":
            return ("fused",) if self.b4m_stage == "make" else (self.b4m_role,)
        return (self.adapter_role,)

    @property
    def alpha(self) -> float:
        return float(self.lora_alpha if self.lora_alpha is not None else self.rank)


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (one flag per ``TrainLoRAConfig`` field)."""
    parser = argparse.ArgumentParser(
        prog="accelerate launch -m stylekit.adapters.train_lora", description=__doc__.splitlines()[0]
    )
    for f in fields(TrainLoRAConfig):
        flag, text = f"--{f.name}", f.metadata.get("help", "")
        kind = str(f.type)
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind.startswith("list"):
            parser.add_argument(flag, nargs="+", default=None, help=text)
        else:
            base = kind.split("|")[0].strip()
            convert = {"int": int, "float": float}.get(base, str)
            parser.add_argument(flag, type=convert, default=None, help=text)
    return parser


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a TOML (``.toml``) or YAML (``.yaml``/``.yml``) file; keys are the flag names.

    Raises:
        ValueError: unreadable file, unknown extension, or an unknown key.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: file not found: {path}")
    if path.suffix == ".toml":
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(path.read_text())
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
    else:
        raise ValueError(f"--config: expected a .toml, .yaml or .yml file, got {path}")
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a table/mapping of options")
    known = {f.name: str(f.type) for f in fields(TrainLoRAConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"--config: unknown option(s) {unknown} in {path}")
    return {key: _config_value(key, value, known[key], path) for key, value in data.items()}


def _config_value(key: str, value: Any, kind: str, path: Path) -> Any:
    """A config-file value as its flag's type: numbers written as strings (YAML reads ``1e-3`` as one) are
    converted like the flag would be; anything else of the wrong type is refused, naming the key."""
    base = kind.split("|")[0].strip()
    optional = "None" in kind

    def wrong(expected: str) -> ValueError:
        return ValueError(f"--config: {key} in {path}: expected {expected}, got {value!r}")

    if value is None:
        if optional:
            return None
        raise wrong(base)
    if base == "bool":
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if base in ("int", "float"):
        if isinstance(value, bool):
            raise wrong(f"a number ({base})")
        try:
            number = float(value) if base == "float" else value
            if base == "int" and isinstance(value, str):
                number = int(value)
        except (TypeError, ValueError):
            raise wrong(f"a number ({base})") from None
        if base == "int" and (isinstance(number, float) or not isinstance(number, int)):
            raise wrong("an integer")
        return number
    if key == "mixed_precision" and value is False:
        return "no"  # YAML 1.1 reads an unquoted no as false
    if base.startswith("list"):
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, list) or any(
            isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in items
        ):
            raise wrong("a list of strings (quote yes/no/on/off: YAML reads them as booleans)")
        return [str(v) for v in items]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise wrong("a string (quote yes/no/on/off: YAML reads them as booleans)")
    return str(value)


def parse_config(argv: Sequence[str] | None = None) -> TrainLoRAConfig:
    """Flags (over a ``--config`` file, over the defaults) -> a validated ``TrainLoRAConfig``."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    if args.get("config"):
        values.update(read_config_file(args["config"]))
    values.update({k: v for k, v in args.items() if v is not None and k != "config"})
    config = TrainLoRAConfig(**values)
    config.config = args.get("config")  # recorded (logs, hyperparameters), already read
    return config


# --------------------------------------------------------------------------------------------- training
@dataclass
class Roles:
    """Which LoRA module names each written adapter owns (one peft adapter is trained)."""

    blocks: dict[str, tuple[str, ...]]  # role -> blocks

    def role_of(self, key: str) -> str | None:
        block = block_of(key)
        for role, blocks in self.blocks.items():
            if block in blocks:
                return role
        return None


def resolve_roles(config: TrainLoRAConfig, unet: Any) -> Roles:
    """Role -> blocks for the run (validated against the UNet)."""
    if config.method == "blora":
        split = default_blocks(unet, "blora")
        content = check_blocks(unet, config.content_blocks or split["content"], "--content_blocks")
        style = check_blocks(unet, config.style_blocks or split["style"], "--style_blocks")
        overlap = set(content) & set(style)
        if overlap:
            raise ValueError(f"--content_blocks and --style_blocks overlap: {sorted(overlap)}")
        return Roles({"content": content, "style": style})
    blocks = check_blocks(unet, config.lora_blocks or attention_blocks(unet), "--lora_blocks")
    (role,) = config.adapter_roles()
    return Roles({role: blocks})


def set_sources(config: TrainLoRAConfig) -> list[tuple[str, str, str, str, float]]:
    """(folder, prompt, set name, flag, loss weight) of the instance, class and aux sets, in that order."""
    sources = [(config.instance_data_dir, config.instance_prompt, "instance", "--instance_data_dir", 1.0)]
    if config.with_prior_preservation:
        assert config.class_data_dir and config.class_prompt
        sources.append(
            (
                config.class_data_dir,
                config.class_prompt,
                "class",
                "--class_data_dir",
                config.prior_loss_weight,
            )
        )
    for i, (folder, prompt) in enumerate(zip(config.aux_data_dir, config.aux_prompt, strict=True)):
        sources.append((folder, prompt, f"aux{i}", "--aux_data_dir", config.aux_loss_weight))
    return sources


def bucket_step(pipe: Any) -> int:
    """Bucket sides are multiples of this: the VAE factor times the UNet's downsampling (8 for SD/SDXL-like)."""
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.down_block_types) - 1)


def load_sets(config: TrainLoRAConfig, resolution: int) -> list[ImageSet]:
    """The instance set, then the class set (prior preservation), then the aux sets (validated)."""
    return [
        load_image_set(folder, prompt, resolution, name, flag, weight)
        for folder, prompt, name, flag, weight in set_sources(config)
    ]


def prompt_encoder(pipe: Any) -> Any:
    """``f(prompts) -> UNet conditioning kwargs`` (SD: ``encoder_hidden_states``; SDXL: plus
    ``added_cond_kwargs`` with the pooled embeddings; the size time ids depend on the batch:
    ``size_time_ids``)."""
    device = pipe.unet.device

    @torch.no_grad()
    def encode(prompts: list[str]) -> dict[str, Any]:
        if architecture_of(pipe.unet) == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(
                prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
            )
            return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled}}
        embeds, _ = pipe.encode_prompt(prompts, device, 1, False)
        return {"encoder_hidden_states": embeds}

    return encode


def size_time_ids(pipe: Any, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """SDXL's (1, 6) size/crop time ids for ``height`` x ``width`` training images (original = target size,
    no crop)."""
    dim = int(pipe.text_encoder_2.config.projection_dim)
    return pipe._get_add_time_ids(
        (height, width), (0, 0), (height, width), dtype, text_encoder_projection_dim=dim
    )


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints (``checkpoint-N`` folders), fewest steps first."""
    if not output_dir.is_dir():
        return []
    found = [
        (int(m[1]), p) for p in output_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


RESUME_MAY_CHANGE = frozenset(
    {
        "output_dir",
        "max_train_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "validation_prompt",
        "validation_steps",
        "num_validation_images",
        "validation_inference_steps",
        "report_to",
        "logging_dir",
        "output_kohya_format",
        "num_threads",
        "gradient_checkpointing",
        "mixed_precision",  # the LoRA weights and optimizer state stay fp32 either way
        "config",
    }
)
PATH_FLAGS = ("instance_data_dir", "class_data_dir", "aux_data_dir", "content_lora", "style_lora")
"""Flags a resumed run may change; every other flag shapes the training and must match the checkpoint's."""


def check_make_inputs(config: TrainLoRAConfig) -> None:
    """B4M make: both break adapters exist, were written by b4m break runs, and have this run's ``--rank``."""
    from stylekit.lora import lora_file, read_info

    for flag, role in (("content_lora", "content"), ("style_lora", "style")):
        path = getattr(config, flag)
        try:
            lora_file(path)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"--{flag}: {error}") from None
        info = read_info(path)
        if info.get("method", "b4m") != "b4m" or info.get("role", role) != role:
            raise ValueError(
                f"--{flag}: {path} is a {info.get('method')} {info.get('role')} adapter; expected the b4m "
                f"{role} break run's"
            )
        if info.get("rank", config.rank) != config.rank:
            raise ValueError(
                f"--{flag}: {path} has rank {info['rank']}, this run --rank {config.rank}; use the break runs' "
                "--rank"
            )


def run_identity(config: TrainLoRAConfig) -> dict[str, Any]:
    """The flags a checkpoint records and a resumed run must repeat (JSON values; folders as absolute paths,
    so ``imgs``, ``imgs/`` and ``/abs/imgs`` are one folder)."""

    def folder(value: str | None) -> str | None:
        return str(Path(value).resolve()) if value else value

    identity = {k: v for k, v in asdict(config).items() if k not in RESUME_MAY_CHANGE}
    for key in PATH_FLAGS:
        value = identity[key]
        identity[key] = [folder(v) for v in value] if isinstance(value, list) else folder(value)
    return identity


def check_output_dir(config: TrainLoRAConfig) -> None:
    """Refuse a fresh run into an ``output_dir`` whose checkpoints it would replace or delete, or whose adapter
    folders for this run exist already (unless ``--overwrite_output_dir``)."""
    out = Path(config.output_dir)
    if config.overwrite_output_dir:
        return
    found = list_checkpoints(out)
    if found:
        raise ValueError(
            f"--output_dir: {out} holds checkpoints of an earlier run ({found[-1].name}); resume it with "
            "--resume_from_checkpoint latest and its flags, use another --output_dir, or pass "
            "--overwrite_output_dir to delete them and start again"
        )
    existing = [role for role in config.adapter_roles() if (out / role).exists()]
    if existing:
        raise ValueError(
            f"--output_dir: {out / existing[0]} exists (an earlier run's adapter); use another --output_dir or "
            "pass --overwrite_output_dir to replace it"
        )


def resolve_resume(config: TrainLoRAConfig) -> Path | None:
    """The checkpoint to resume from (None: start fresh, after :func:`check_output_dir`; 'latest' with none
    found also starts fresh). A checkpoint written with other training flags is refused."""
    which = config.resume_from_checkpoint
    out = Path(config.output_dir)
    if not which or (which == "latest" and not list_checkpoints(out)):
        check_output_dir(config)
        return None
    if which == "latest":
        path = list_checkpoints(out)[-1]
    else:
        path = Path(which) if Path(which).exists() else out / which
        if not (path / "training_state.json").is_file():
            raise ValueError(
                f"--resume_from_checkpoint: {which!r} is not a checkpoint folder (no training_state.json)"
            )
    state = json.loads((path / "training_state.json").read_text())
    step = int(state["global_step"])
    recorded, current = state.get("run", {}), run_identity(config)
    first = ("method", "b4m_stage", "b4m_role", "adapter_role", "pretrained_model_name_or_path")
    ordered = sorted(
        recorded.items(), key=lambda item: first.index(item[0]) if item[0] in first else len(first)
    )
    for key, value in ordered:  # checkpoints from before this record have none; the run's kind first
        if key in current and current[key] != value:
            raise ValueError(
                f"--resume_from_checkpoint: {path.name} was written with --{key} {value!r}, this run has "
                f"{current[key]!r}; resume with the flags it was started with (only "
                f"{', '.join(sorted(RESUME_MAY_CHANGE - {'config', 'output_dir', 'resume_from_checkpoint'}))} "
                "may change), or start a new --output_dir"
            )
    if step > config.max_train_steps:
        raise ValueError(
            f"--resume_from_checkpoint: {path.name} is at step {step}, past --max_train_steps "
            f"{config.max_train_steps}; raise --max_train_steps or start a new --output_dir"
        )
    return path


def lora_parameters(unet: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Every LoRA parameter of the UNet by name (``...lora_A.default.weight``)."""
    return {n: p for n, p in unet.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def lora_weights(unet: torch.nn.Module, adapter: str = "default") -> dict[str, torch.Tensor]:
    """Every full-size LoRA weight by parameter name (``...lora_A.default.weight``), B4M halves joined."""
    from .lora_b4m import lora_projections

    return {
        f"{name}.{kind}.{adapter}.weight": linear.weight
        for name, kind, linear in lora_projections(unet, adapter)
    }


def set_lora_weights(unet: torch.nn.Module, state: dict[str, torch.Tensor], adapter: str = "default") -> None:
    """Write full-size LoRA weights (names as :func:`lora_weights`) into the UNet (B4M: both halves)."""
    from .lora_b4m import lora_projections, set_full_weight

    for name, kind, linear in lora_projections(unet, adapter):
        set_full_weight(linear, state[f"{name}.{kind}.{adapter}.weight"])


def peft_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """``get_peft_model_state_dict`` of the trained adapter (keys ``<module>.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in get_peft_model_state_dict(unet).items()}


def peft_keys_to_params(state: dict[str, torch.Tensor], adapter: str = "default") -> dict[str, torch.Tensor]:
    """``<module>.lora_A.weight`` -> ``<module>.lora_A.<adapter>.weight`` (the parameter names)."""
    return {re.sub(r"\.(lora_[AB])\.weight$", rf".\1.{adapter}.weight", k): v for k, v in state.items()}


def read_peft_adapter(path: str | Path) -> dict[str, torch.Tensor]:
    """An adapter folder written by this trainer -> peft-keyed state dict."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_unet_state_dict_to_peft

    state = StableDiffusionPipeline.lora_state_dict(
        str(Path(path) / LORA_WEIGHT_NAME) if Path(path).is_dir() else str(path)
    )
    state = state[0] if isinstance(state, tuple) else state
    unet_state = {k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")}
    return convert_unet_state_dict_to_peft(unet_state)


def attach_lora(
    unet: torch.nn.Module,
    config: TrainLoRAConfig,
    roles: Roles,
    weight_dtype: torch.dtype = torch.float32,
) -> tuple[list[dict[str, Any]], int]:
    """Add the run's peft LoRA (one adapter "default" on every role's blocks) to a frozen ``unet``, ready to
    train: B4M's initialisation, make-stage load and frozen halves; the other weights cast to
    ``weight_dtype``; gradient checkpointing when asked.

    Returns:
        The optimizer's parameter groups (B4M break: primary and secondary projections with their lrs) and
        the number of frozen B4M entries (0 for other methods).
    """
    from peft import LoraConfig

    modules = sorted({m for blocks in roles.blocks.values() for m in target_modules(unet, blocks)})
    lora_config = LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        init_lora_weights="gaussian",
        target_modules=modules,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        unet.add_adapter(lora_config)
    b4m = config.method == "b4m"
    if b4m:
        from .lora_b4m import init_partly_learnable, make_fused_state, projection_groups, split_frozen_halves

        init_partly_learnable(unet, config.seed)
        if config.b4m_stage == "make":
            assert config.content_lora and config.style_lora
            fused = make_fused_state(
                read_peft_adapter(config.content_lora), read_peft_adapter(config.style_lora)
            )
            params = lora_parameters(unet)
            loaded = peft_keys_to_params(fused)
            if set(loaded) != set(params):
                raise ValueError(
                    "--content_lora/--style_lora: the adapters do not cover this run's blocks "
                    "(use the same --lora_blocks and --rank as the break runs)"
                )
            for name, value in loaded.items():
                if value.shape != params[name].shape:
                    raise ValueError(
                        f"--content_lora/--style_lora: {name} is {tuple(value.shape)} there, "
                        f"{tuple(params[name].shape)} here; use the break runs' --rank"
                    )
            with torch.no_grad():
                for name, value in loaded.items():
                    params[name].copy_(value)
    for param in lora_parameters(unet).values():
        param.requires_grad_(True)
        param.data = param.data.float()
    # B4M: the frozen halves become buffers, the trainable parameters only the learnable halves
    frozen_params = split_frozen_halves(unet) if b4m else 0
    if weight_dtype != torch.float32:
        for param in unet.parameters():
            if not param.requires_grad:
                param.data = param.data.to(weight_dtype)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    if config.method == "b4m" and config.b4m_stage == "break":
        primary, secondary = projection_groups(unet, config.b4m_role)
        groups = [
            {"params": primary, "lr": config.learning_rate},
            {"params": secondary, "lr": config.learning_rate_2},
        ]
    else:
        groups = [{"params": list(lora_parameters(unet).values()), "lr": config.learning_rate}]
    return groups, frozen_params


def preflight(config: TrainLoRAConfig) -> Path | None:
    """Every check that needs no model (``stylekit train-lora`` runs it before launching accelerate): the
    image folders, the make stage's break adapters, the output folder and the resume point. Returns the
    checkpoint to resume from (None: start fresh)."""
    load_sets(config, config.resolution or 8)
    if config.method == "b4m" and config.b4m_stage == "make":
        check_make_inputs(config)
    return resolve_resume(config)


def run(config: TrainLoRAConfig) -> dict[str, Any]:
    """Train; returns a summary (final loss history, adapter folders, steps/s)."""
    from accelerate import Accelerator
    from accelerate.logging import get_logger
    from accelerate.utils import ProjectConfiguration
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from peft import LoraConfig
    from tqdm.auto import tqdm

    from stylekit.models import load_pipeline

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(config.output_dir)
    resume = preflight(config)  # bad input fails here, before any model is loaded
    ensure_folder(out, "--output_dir")
    if (
        resume is None
        and config.resume_from_checkpoint == "latest"
        and os.environ.get("LOCAL_RANK", "0") == "0"
    ):
        print(f"--resume_from_checkpoint latest: no checkpoint in {out}; starting at step 0", file=sys.stderr)

    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / config.logging_dir)),
    )
    logger = get_logger("stylekit.train_lora")
    if resume is None and config.overwrite_output_dir and accelerator.is_main_process:
        for old in list_checkpoints(out):  # an earlier run's: `latest` and the limit must not see them
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(
        accelerator.mixed_precision, torch.float32
    )

    pipe = load_pipeline(config.pretrained_model_name_or_path, kind="text-to-image", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    unet, vae = pipe.unet, pipe.vae
    for module in (unet, vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
            module.eval()
    architecture = architecture_of(unet)
    resolution = config.resolution or int(unet.config.sample_size) * int(pipe.vae_scale_factor)
    roles = resolve_roles(config, unet)
    if config.aspect_buckets:
        buckets = load_bucketed_sets(
            set_sources(config), resolution, bucket_step(pipe), config.bucket_max_ratio
        )
    else:
        buckets = {(resolution, resolution): load_sets(config, resolution)}
    bucket_sets = list(buckets.values())
    sets = bucket_sets[0]  # set names and weights (the same in every bucket)

    vae.to(accelerator.device)
    for group in bucket_sets:  # latents cached per bucket
        for image_set in group:
            cache_latents(vae, image_set)
    pipe.to(accelerator.device)
    prompts = PromptCache(prompt_encoder(pipe))
    time_ids: dict[tuple[int, int], torch.Tensor] = {}  # SDXL size conditioning per bucket
    prompts.warm([p for group in bucket_sets for s in group for p in s.prompts])

    b4m = config.method == "b4m"
    groups, frozen_params = attach_lora(unet, config, roles, weight_dtype)
    trainable_params = sum(p.numel() for g in groups for p in g["params"])
    if config.use_8bit_adam:
        import bitsandbytes as bnb

        optimizer_class = bnb.optim.AdamW8bit
    else:
        optimizer_class = torch.optim.AdamW
    optimizer = optimizer_class(
        groups,
        betas=(config.adam_beta1, config.adam_beta2),
        weight_decay=config.adam_weight_decay,
        eps=config.adam_epsilon,
    )
    lr_scheduler = get_scheduler(
        config.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=config.max_train_steps * accelerator.num_processes,
    )
    model, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    def save_hook(models: list[Any], weights: list[Any], output_dir: str) -> None:
        from safetensors.torch import save_file

        for _ in range(len(weights)):
            weights.pop()
        state = {n: w.detach().cpu().contiguous() for n, w in lora_weights(unet).items()}
        save_file(state, os.path.join(output_dir, "lora_state.safetensors"))

    def load_hook(models: list[Any], input_dir: str) -> None:
        from safetensors.torch import load_file

        for _ in range(len(models)):
            models.pop()
        state = load_file(os.path.join(input_dir, "lora_state.safetensors"))
        current = lora_weights(unet)
        if set(state) != set(current):
            raise ValueError(
                f"--resume_from_checkpoint: {input_dir} was written by a run with other blocks/rank"
            )
        for name, tensor in state.items():
            if tensor.shape != current[name].shape:
                raise ValueError(
                    f"--resume_from_checkpoint: {input_dir} was written by a run with another --rank: "
                    f"{name} is {tuple(tensor.shape)} there, {tuple(current[name].shape)} in this run"
                )
        set_lora_weights(unet, state)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)

    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    style_loss = None
    if config.style_loss_weight > 0:
        from .lora_style_loss import StyleContrastiveLoss

        style_loss = StyleContrastiveLoss(
            sets, vae, noise_scheduler, accelerator.device, config.style_loss_temperature
        )
    num_timesteps = int(noise_scheduler.config.num_train_timesteps)
    global_step = 0
    history: list[dict[str, float]] = []
    if resume is not None:
        accelerator.load_state(str(resume))
        state = json.loads((resume / "training_state.json").read_text())
        global_step = int(state["global_step"])
        history = list(state.get("history", []))
        logger.info(f"resumed from {resume} at step {global_step}")
    if accelerator.is_main_process and config.report_to != "none":
        accelerator.init_trackers("train_lora", config={k: str(v) for k, v in asdict(config).items()})

    info = {
        "method": config.method,
        "base_model": config.pretrained_model_name_or_path,
        "architecture": architecture,
        "rank": config.rank,
        "lora_alpha": config.alpha,
        "resolution": resolution,
        "seed": config.seed,
        "instance_prompt": config.instance_prompt,
    }
    bar = tqdm(
        total=config.max_train_steps,
        initial=global_step,
        disable=not accelerator.is_local_main_process,
        desc="train_lora",
    )
    rows = config.train_batch_size
    start_time, start_step = time.perf_counter(), global_step
    loop_memory = RegionPeakMemory(accelerator.device)  # the loop's own memory, after loading and caching
    loop_memory.start()
    model.train()
    while global_step < config.max_train_steps:
        losses: dict[str, float] = {s.name: 0.0 for s in sets}
        total = 0.0
        for micro in range(config.gradient_accumulation_steps):
            batch = draw_batch(
                bucket_sets[pick_bucket(bucket_sets, config.seed, global_step, micro)],
                rows,
                config.seed,
                global_step,
                micro,
                num_timesteps,
                accelerator.process_index,
                accelerator.num_processes,
            )
            device = accelerator.device
            latents = batch.latents.to(device, weight_dtype)
            noise = batch.noise.to(device, weight_dtype)
            timesteps = batch.timesteps.to(device)
            noisy = noise_scheduler.add_noise(latents, noise, timesteps)
            conditioning = prompts(batch.prompts, device, weight_dtype)
            if "added_cond_kwargs" in conditioning:  # SDXL: the batch's (bucket's) image size
                size = tuple(int(n) * int(pipe.vae_scale_factor) for n in latents.shape[-2:])
                if size not in time_ids:
                    time_ids[size] = size_time_ids(pipe, *size, weight_dtype).to(device)
                conditioning["added_cond_kwargs"]["time_ids"] = time_ids[size].repeat(len(latents), 1)
            sync = micro == config.gradient_accumulation_steps - 1
            context = accelerator.no_sync(model) if not sync else _null()
            with context, accelerator.autocast():
                pred = model(noisy, timesteps, **conditioning, return_dict=False)[0]
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                per_row = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
                loss = torch.zeros((), device=device)
                for index, image_set in enumerate(sets):
                    set_loss = per_row[batch.set_index.to(device) == index].mean()
                    loss = loss + image_set.weight * set_loss
                    losses[image_set.name] += float(set_loss.detach()) / config.gradient_accumulation_steps
                if style_loss is not None:
                    instance = batch.set_index.to(device) == 0
                    scr = style_loss(pred[instance], noisy[instance], timesteps[instance])
                    loss = loss + config.style_loss_weight * scr
                    losses["style"] = (
                        losses.get("style", 0.0) + float(scr.detach()) / config.gradient_accumulation_steps
                    )
                loss = loss / config.gradient_accumulation_steps
                accelerator.backward(loss)
            total += float(loss.detach())
        if config.riemannian_precondition:  # before clipping, so the clip bounds the preconditioned step
            riemannian_precondition(unet, config.riemannian_reg)
        if config.max_grad_norm > 0:
            accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        record = {
            "step": global_step,
            "loss": round(total, 6),
            **{f"loss_{k}": round(v, 6) for k, v in losses.items()},
        }
        history.append(record)
        if global_step == start_step + 1:  # steps/s is timed after one warm-up step
            start_time = time.perf_counter()
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        if config.report_to != "none":
            accelerator.log(
                {**{k: v for k, v in record.items() if k != "step"}, "lr": lr_scheduler.get_last_lr()[0]},
                step=global_step,
            )
        if config.checkpointing_steps and global_step % config.checkpointing_steps == 0:
            if accelerator.is_main_process:
                save_checkpoint(
                    accelerator,
                    out,
                    global_step,
                    history,
                    config.checkpoints_total_limit,
                    run_identity(config),
                )
            accelerator.wait_for_everyone()
        if config.validation_prompt and (
            global_step % config.validation_steps == 0 or global_step == config.max_train_steps
        ):
            if accelerator.is_main_process:
                validate(pipe, config, out, global_step, accelerator)
            accelerator.wait_for_everyone()
    bar.close()
    elapsed = time.perf_counter() - start_time
    loop_peak = loop_memory.stop()
    optimizer_state = sum(
        t.numel() for st in optimizer.state.values() for t in st.values() if torch.is_tensor(t) and t.dim()
    )

    written: dict[str, str] = {}
    if b4m:
        from .lora_b4m import merge_frozen_halves

        merge_frozen_halves(unet)  # plain full-size peft weights again, for the diffusers-format files
    if accelerator.is_main_process:
        state = peft_state(accelerator.unwrap_model(model))
        for role, blocks in roles.blocks.items():
            subset = {k: v for k, v in state.items() if roles.role_of(k) == role}
            role_config = LoraConfig(
                r=config.rank,
                lora_alpha=config.alpha,
                init_lora_weights="gaussian",
                target_modules=sorted({k.rsplit(".lora_", 1)[0] for k in subset}),
            )
            folder = save_adapter(
                out / role,
                subset,
                role_config,
                {**info, "role": role, "blocks": list(blocks), "steps": global_step},
                architecture,
                config.output_kohya_format,
            )
            written[role] = str(folder)
        summary = {
            "adapters": written,
            "steps": global_step,
            "history": history,
            # timed after one warm-up step; None when the run had no steps left to time
            "steps_per_second": (global_step - start_step - 1) / max(elapsed, 1e-9)
            if global_step - start_step > 1
            else None,
            "trainable_params": trainable_params,
            "frozen_params": frozen_params,
            "optimizer_state_numel": optimizer_state,
            "num_processes": accelerator.num_processes,
            "loop_memory": loop_peak,
        }
        if config.aspect_buckets:
            summary["buckets"] = {f"{w}x{h}": len(group[0]) for (w, h), group in buckets.items()}
        write_json_atomic(out / "train_summary.json", summary)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {
        "adapters": written,
        "steps": global_step,
        "history": history,
        "num_processes": accelerator.num_processes,
    }


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def save_checkpoint(
    accelerator: Any,
    out: Path,
    step: int,
    history: list[dict[str, float]],
    limit: int | None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename to ``checkpoint-N`` (never half-written);
    keep the newest ``limit``. ``identity``: the run's :func:`run_identity`, checked when resuming."""
    final = out / f"checkpoint-{step}"
    with atomic_path(final, folder=True) as temp:
        accelerator.save_state(str(temp))
        state = {"global_step": step, "history": history, "run": identity or {}}
        write_json_atomic(temp / "training_state.json", state)
    if limit:
        for old in list_checkpoints(out)[:-limit]:
            shutil.rmtree(old, ignore_errors=True)
    return final


@torch.no_grad()
def validate(pipe: Any, config: TrainLoRAConfig, out: Path, step: int, accelerator: Any) -> list[Path]:
    """Generate ``num_validation_images`` for ``validation_prompt`` (fixed seeds) into ``OUT/validation``."""
    folder = out / "validation"
    folder.mkdir(parents=True, exist_ok=True)
    was_training = pipe.unet.training
    pipe.unet.eval()
    generators = [torch.Generator().manual_seed(config.seed + i) for i in range(config.num_validation_images)]
    # Under --mixed_precision the frozen UNet weights are fp16/bf16 while the text encoder, VAE and latents
    # are fp32: sample under autocast to the UNet's dtype, then decode outside it with the fp32 VAE (an fp16
    # SDXL VAE overflows).
    dtype = pipe.unet.dtype
    with torch.autocast(pipe.device.type, dtype=dtype, enabled=dtype != torch.float32):
        latents = pipe(
            [config.validation_prompt] * config.num_validation_images,
            generator=generators,
            num_inference_steps=config.validation_inference_steps,
            output_type="latent",
        ).images
    pipe.unet.train(was_training)
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor + shift, return_dict=False)[0]
    images = pipe.image_processor.postprocess(pixels, output_type="pil")
    paths = []
    for i, image in enumerate(images):
        path = folder / f"step-{step:06d}-{i}.png"
        image.save(path)
        paths.append(path)
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            import numpy as np

            tracker.writer.add_images(
                "validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC"
            )
    return paths


def main(argv: list[str] | None = None) -> int:
    """CLI entry point (``stylekit train-lora`` wraps ``accelerate launch`` around it). Returns 0 on success."""
    try:
        config = parse_config(argv)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except SystemExit as exit_:  # argparse: --help (0) or a bad flag (2, its message already printed)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        summary = run(config)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if summary["adapters"]:
        print(json.dumps({"adapters": summary["adapters"], "steps": summary["steps"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
