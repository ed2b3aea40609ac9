"""Train a style extractor on the synthetic world with accelerate.

    accelerate launch -m stylekit.extractors.train --config stylekit/extractors/configs/world.toml
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m stylekit.extractors.train ...

Every :class:`TrainConfig` field is a flag (``--max_steps 100``); a ``--config`` file (YAML or TOML) sets
them too, and flags win over the file. Each step renders a grid batch (:mod:`stylekit.extractors.data`):
positives = same style / other content, hard negatives = same content and seed / other styles, views =
random crops (style-preserving). The loss is computed on the *global* batch (embeddings gathered across
processes), so a 2-process run follows the 1-process loss curve at the same global batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from stylekit.files import make_readable, replace_path

from . import losses as L
from .config import ExtractorConfig
from .data import grid_batch
from .model import StyleExtractor
from .ops import dann_alpha


@dataclass
class TrainConfig:
    """Options of an extractor training run (defaults = the bundled world extractor).

    Data: ``n_styles x n_contents`` images per global step (every content in every style), rendered at
    ``render_size`` and cropped to ``crop`` (a style-preserving view), styles from the train part of
    ``split``. Loss: ``supcon_weight`` x SupCon on composite style ids + ``multilabel_weight`` x CSD's
    weighted multi-label SupCon (palette/texture/stroke tags) + ``hard_negative_weight`` x FontDiffuser's
    paired InfoNCE (same content, other styles as negatives) + ``token_weight`` x SupCon on the mean local
    token + ``content_weight`` x content-class cross-entropy through the gradient-reversal layer.
    """

    output_dir: str = "runs/extractor"
    export_dir: str | None = None
    seed: int = 0
    max_steps: int = 600
    n_styles: int = 16
    n_contents: int = 8
    render_size: int = 64
    crop: int | None = 56
    split: str | None = "style"
    widths: tuple[int, ...] = (16, 32, 64, 128)
    stem: int = 2
    pooled_stages: tuple[int, ...] = (0, 1, 2, 3)
    embed_dim: int = 64
    head_hidden: int = 256
    content_head: bool = True
    temperature: float = 0.1
    supcon_weight: float = 1.0
    multilabel_weight: float = 1.0
    hard_negative_weight: float = 1.0
    token_weight: float = 0.1
    content_weight: float = 0.5
    grl_gamma: float = 10.0
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 30
    grad_clip: float = 3.0
    checkpointing_steps: int = 200
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    overwrite_output_dir: bool = False
    log_every: int = 10
    report_to: str = "tensorboard"
    threads: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in fields(self):  # types first (config files): a clear message instead of a late TypeError
            setattr(self, f.name, _typed(f.name, getattr(self, f.name)))
        for name in ("max_steps", "n_styles", "n_contents", "log_every", "checkpointing_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.n_styles < 2 or self.n_contents < 2:
            raise ValueError("n_styles and n_contents must be >= 2 (positives and hard negatives need both)")
        if self.crop is not None and not 8 <= self.crop <= self.render_size:
            raise ValueError(f"crop: expected 8..render_size ({self.render_size}) or None, got {self.crop}")
        if self.report_to not in ("tensorboard", "none"):
            raise ValueError(f"report_to: expected 'tensorboard' or 'none', got {self.report_to!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: expected a number > 0, got {self.temperature}")
        for name in ("learning_rate",):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: expected a number > 0, got {getattr(self, name)}")
        weights = (
            "supcon_weight",
            "multilabel_weight",
            "hard_negative_weight",
            "token_weight",
            "content_weight",
        )
        for name in (*weights, "grad_clip", "weight_decay", "grl_gamma"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise ValueError(f"{name}: expected a number >= 0, got {getattr(self, name)}")
        if not any(getattr(self, name) for name in weights[:4]):
            raise ValueError(f"loss weights: at least one of {', '.join(weights[:4])} must be > 0")
        if self.checkpoints_total_limit is not None and self.checkpoints_total_limit < 0:
            raise ValueError(
                f"checkpoints_total_limit: expected an integer >= 0 (0 or none: keep all), got "
                f"{self.checkpoints_total_limit}"
            )
        for name in ("warmup_steps", "threads"):
            if (getattr(self, name) or 0) < 0:
                raise ValueError(f"{name}: expected an integer >= 0, got {getattr(self, name)}")
        if self.split is not None:
            from stylekit.data.splits import get_split

            if not get_split(self.split).style_only:
                raise ValueError(
                    f"split: expected a split of styles alone ('style', 'factor') or none, got {self.split!r}"
                )
        self.extractor_config()  # the architecture's own checks (stem, widths, embed_dim, ...)
        from .data import train_style_count

        available = train_style_count(self.split)
        if self.n_styles > available:
            raise ValueError(
                f"n_styles: the train part of split {self.split!r} has {available} styles, got {self.n_styles}"
            )

    def extractor_config(self) -> ExtractorConfig:
        """The architecture this run trains."""
        return ExtractorConfig(
            backbone="cnn",
            image_size=self.render_size,
            widths=self.widths,
            stem=self.stem,
            pooled_stages=self.pooled_stages,
            embed_dim=self.embed_dim,
            head_hidden=self.head_hidden,
            content_head=self.content_head,
        )


def _typed(name: str, value: Any) -> Any:
    """``value`` as field ``name``'s type (numbers given as strings converted, a tuple from a list or a
    "16,32" string); ``ValueError`` naming the field otherwise."""
    inner, optional = _base_type(name)
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null", ""):
        value = None
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name}: expected a value, got None")
    wrong = ValueError(f"{name}: expected {getattr(inner, '__name__', inner)}, got {value!r}")
    if typing.get_origin(inner) is tuple:
        items = re.split(r"[,\s]+", value.strip()) if isinstance(value, str) else value
        if isinstance(items, int) and not isinstance(items, bool):
            items = [items]  # one stage
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{name}: expected a list of integers, got {value!r}")
        return tuple(_typed_int(name, v) for v in items if v != "")
    if typing.get_origin(inner) is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{name}: expected a mapping, got {value!r}")
        return value
    if inner is Any:
        return value
    if inner is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return value
    if inner is int:
        return _typed_int(name, value)
    if inner is float:
        if isinstance(value, bool):
            raise wrong
        try:
            return float(value)
        except (TypeError, ValueError):
            raise wrong from None
    if inner is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if not isinstance(value, str):
            raise wrong
        return value
    return value


def _typed_int(name: str, value: Any) -> int:
    """An integer from an int, a whole float or a string of either (YAML reads ``1e3`` as a string)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if isinstance(number, float) and not number.is_integer():
            raise ValueError
        return int(number)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None


# --------------------------------------------------------------------------------------------- config IO
def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``), TOML (``.toml``) or JSON file into a dict of TrainConfig options."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--config: file not found: {path}")
    text = path.read_text()
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as error:  # pragma: no cover
            raise ImportError(
                "YAML configs need PyYAML (pip install pyyaml); TOML works without it"
            ) from error
        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise ValueError(f"--config: expected a .yaml, .yml, .toml or .json file, got {path.name}")
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of options")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"--config: unknown options {unknown} in {path}")
    return data


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(inner type, optional) of a field annotation (resolved from the string annotation)."""
    hint = typing.get_type_hints(TrainConfig)[annotation] if isinstance(annotation, str) else annotation
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return inner, True
    return hint, False


def _parser_for(name: str) -> Any:
    inner, optional = _base_type(name)
    origin = typing.get_origin(inner)

    def parse(text: str) -> Any:
        if optional and text.lower() in ("none", "null", ""):
            return None
        if inner is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
        if origin is tuple:
            return tuple(int(v) for v in re.split(r"[,\s]+", text.strip()) if v)
        if origin is dict:
            return json.loads(text)
        return inner(text)

    return parse


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Defaults < ``--config`` file < command-line flags."""
    parser = argparse.ArgumentParser(
        prog="python -m stylekit.extractors.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", default=None, help="YAML or TOML file of options (flags override it)")
    for f in fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else "{}"
        parser.add_argument(
            f"--{f.name}", type=_parser_for(f.name), default=argparse.SUPPRESS, help=f"default: {default}"
        )
    args = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    config_path = args.pop("config")
    if config_path:
        values.update(load_config_file(config_path))
    values.update(args)
    return TrainConfig(**values)


# -------------------------------------------------------------------------------------------- training
class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the gradient over processes and returns this process's slice, so
    every process computes the global-batch loss and DDP's gradient average equals its exact gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        import torch.distributed as dist

        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        stacked = torch.stack(grads).contiguous()
        dist.all_reduce(stacked)
        return stacked[dist.get_rank()]


def gather_with_grad(x: torch.Tensor, num_processes: int) -> torch.Tensor:
    """Concatenate ``x`` from all processes in rank order (identity for one process), keeping gradients."""
    if num_processes == 1:
        return x
    return torch.cat(_GatherWithGrad.apply(x), dim=0)


def compute_loss(config: TrainConfig, out: Any, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss on a (global) grid batch; returns ``(loss, parts)``."""
    emb, tau = out["embedding"], config.temperature
    parts: dict[str, torch.Tensor] = {}
    if config.supcon_weight:
        parts["supcon"] = config.supcon_weight * L.supcon(emb, batch["style_ids"], tau)
    if config.multilabel_weight:
        parts["multilabel"] = config.multilabel_weight * L.weighted_supcon(emb, batch["style_labels"], tau)
    if config.hard_negative_weight:
        ns, nc = config.n_styles, config.n_contents
        grid = emb.view(ns, nc, -1)
        positive = grid.roll(-1, dims=1).reshape(ns * nc, -1)
        others = torch.stack([torch.cat([grid[:s], grid[s + 1 :]]) for s in range(ns)])  # (ns, ns-1, nc, D)
        negatives = others.permute(0, 2, 1, 3).reshape(ns * nc, ns - 1, -1)
        parts["hard_negative"] = config.hard_negative_weight * L.paired_info_nce(
            emb, positive, negatives, tau
        )
    if config.token_weight:
        pooled_tokens = F.normalize(out["tokens"].mean(1), dim=-1)
        parts["tokens"] = config.token_weight * L.supcon(pooled_tokens, batch["style_ids"], tau)
    if config.content_head and config.content_weight:
        parts["content"] = config.content_weight * F.cross_entropy(
            out["content_logits"], batch["content_ids"]
        )
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


def _checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and path.is_dir() and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


RUN_CONTROL_OPTIONS = frozenset(
    {
        "output_dir",
        "export_dir",
        "max_steps",
        "checkpointing_steps",
        "checkpoints_total_limit",
        "resume_from_checkpoint",
        "overwrite_output_dir",
        "log_every",
    }
)
"""Options of where and how long a trainer runs, which a resumed run may change (the trainers add theirs)."""
RESUME_MAY_CHANGE = RUN_CONTROL_OPTIONS | {"report_to", "threads", "progress"}
"""Options a resumed run may change; the others shape the training and must match the checkpoint's."""


def clear_earlier_run(output_dir: Path) -> None:
    """``--overwrite_output_dir``: delete an earlier run's checkpoints (``latest`` and the checkpoint limit
    must not see them) and empty its ``log.jsonl`` (the new run's lines would follow the old ones)."""
    for _, old in _checkpoints(output_dir):
        shutil.rmtree(old)
    log = output_dir / "log.jsonl"
    if log.is_file():
        log.write_text("")


def run_identity(config: Any, may_change: frozenset[str] = RESUME_MAY_CHANGE) -> dict[str, Any]:
    """The options of a trainer's config dataclass that a checkpoint records and a resumed run must repeat
    (JSON values): all but ``may_change``."""
    values = dataclasses.asdict(config)
    return json.loads(json.dumps({k: v for k, v in values.items() if k not in may_change}, default=str))


def resolve_checkpoint(
    output_dir: Path, resume: str | None, config: Any = None, may_change: frozenset[str] = RESUME_MAY_CHANGE
) -> Path | None:
    """``"latest"`` -> the newest complete ``checkpoint-N`` in ``output_dir`` (None if there is none).

    With ``config``: a fresh run is refused when ``output_dir`` holds checkpoints (unless
    ``overwrite_output_dir``), and a checkpoint written with other training options or past ``max_steps``
    is refused (``ValueError`` naming the option)."""
    found = _checkpoints(output_dir)
    if resume is None or (resume == "latest" and not found):
        if config is not None and found and not getattr(config, "overwrite_output_dir", False):
            raise ValueError(
                f"--output_dir: {output_dir} holds checkpoints of an earlier run ({found[-1][1].name}); resume "
                "it with --resume_from_checkpoint latest, use another --output_dir, or pass "
                "--overwrite_output_dir true to delete them and start again"
            )
        return None
    path = found[-1][1] if resume == "latest" else Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint: {path} is not a complete checkpoint folder")
    if config is not None:
        state = json.loads((path / "trainer_state.json").read_text())
        current = run_identity(config, may_change)
        for key, value in state.get("run", {}).items():
            if key in current and current[key] != value:
                raise ValueError(
                    f"--resume_from_checkpoint: {path.name} was written with --{key} {value!r}, this run has "
                    f"{current[key]!r}; resume with the options it was started with, or start a new --output_dir"
                )
        if int(state["step"]) > config.max_steps:
            raise ValueError(
                f"--resume_from_checkpoint: {path.name} is at step {state['step']}, past --max_steps "
                f"{config.max_steps}; raise --max_steps or start a new --output_dir"
            )
    return path


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(config: TrainConfig) -> dict[str, Any]:
    """Run training under the current accelerate environment; returns a summary (final loss, seconds, paths).

    Writes ``output_dir/log.jsonl`` (one line per ``log_every`` steps: step, loss, parts, lr),
    ``output_dir/checkpoint-N`` (atomic: written to a hidden folder, then renamed), tensorboard events
    (if tensorboard is installed and ``report_to="tensorboard"``) and the final extractor
    (``save_pretrained``) in ``export_dir`` (default ``output_dir/extractor``).
    """
    from accelerate import Accelerator, DistributedDataParallelKwargs
    from accelerate.utils import ProjectConfiguration, set_seed
    from tqdm.auto import tqdm

    if config.threads:
        torch.set_num_threads(int(config.threads))
    output_dir = Path(config.output_dir)
    checkpoint = resolve_checkpoint(output_dir, config.resume_from_checkpoint, config)  # before any work
    log_with = None
    if config.report_to == "tensorboard":
        try:
            import tensorboard  # noqa: F401

            log_with = "tensorboard"
        except ImportError:
            log_with = None
    unused = not config.token_weight or (config.content_head and not config.content_weight)
    accelerator = Accelerator(
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
        # the global batch is split over processes, so the schedule advances once per step, not per process
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=unused)],
    )
    n_proc, rank = accelerator.num_processes, accelerator.process_index
    total = config.n_styles * config.n_contents
    if total % n_proc:
        raise ValueError(f"the global batch ({total} images) must divide evenly over {n_proc} processes")
    share = total // n_proc
    set_seed(config.seed)
    model = StyleExtractor(config.extractor_config())
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if log_with is not None:
        accelerator.init_trackers(
            "extractor", config={k: str(v) for k, v in dataclasses.asdict(config).items()}
        )

    start_step = 0
    if checkpoint is None and config.overwrite_output_dir and accelerator.is_main_process:
        clear_earlier_run(output_dir)
    accelerator.wait_for_everyone()
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start_step = int(json.loads((checkpoint / "trainer_state.json").read_text())["step"])
        accelerator.print(f"resumed from {checkpoint} at step {start_step}")
    elif config.resume_from_checkpoint is not None:
        accelerator.print(f"no checkpoint in {output_dir}; starting from scratch")

    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    log_path = output_dir / "log.jsonl"
    unwrapped = accelerator.unwrap_model(model)
    bar = tqdm(
        range(start_step, config.max_steps),
        initial=start_step,
        total=config.max_steps,
        desc="extractor",
        disable=not (config.progress and accelerator.is_local_main_process),
    )
    started = time.time()
    last: dict[str, Any] = {}
    model.train()
    for step in bar:
        batch = grid_batch(
            config.seed,
            step,
            config.n_styles,
            config.n_contents,
            config.render_size,
            config.crop,
            config.split,
            rows=(rank * share, (rank + 1) * share),
        )
        unwrapped.grl_alpha = dann_alpha(step / config.max_steps, config.grl_gamma)
        out = model(batch.pixels.to(accelerator.device), resize=False)
        local = {"embedding": out.embedding, "tokens": out.tokens, "content_logits": out.content_logits}
        gathered = {k: gather_with_grad(v, n_proc) if v is not None else None for k, v in local.items()}
        labels = {
            "style_ids": accelerator.gather(batch.style_ids.to(accelerator.device)),
            "style_labels": accelerator.gather(batch.style_labels.to(accelerator.device)),
            "content_ids": accelerator.gather(batch.content_ids.to(accelerator.device)),
        }
        loss, parts = compute_loss(config, gathered, labels)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.grad_clip:
            accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        done = step + 1
        if done % config.log_every == 0 or done == config.max_steps:
            last = {"step": done, "loss": float(loss.detach()), **parts, "lr": lr}
            accelerator.log(last, step=done)
            bar.set_postfix(loss=f"{last['loss']:.4f}")
            if accelerator.is_main_process:
                with open(log_path, "a") as handle:
                    handle.write(json.dumps(last) + "\n")
        if done % config.checkpointing_steps == 0 or done == config.max_steps:
            save_checkpoint(
                accelerator, output_dir, done, config.checkpoints_total_limit, run_identity(config)
            )

    seconds = time.time() - started
    accelerator.wait_for_everyone()
    export = Path(config.export_dir) if config.export_dir else output_dir / "extractor"
    if accelerator.is_main_process:
        unwrapped.eval()
        unwrapped.save_pretrained(export)
        summary = {"seconds": round(seconds, 1), "steps": config.max_steps, "processes": n_proc, **last}
        summary["config"] = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("extra",)}
        text = json.dumps(summary) + "\n"
        for folder in (output_dir, export):
            (folder / "train_summary.json").write_text(text)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"seconds": seconds, "export_dir": str(export), "num_processes": n_proc, **last}


def save_checkpoint(
    accelerator: Any,
    output_dir: Path,
    step: int,
    total_limit: int | None,
    identity: dict[str, Any] | None = None,
) -> Path:
    """``accelerator.save_state`` into a hidden folder, then rename it to ``checkpoint-<step>`` (atomic for
    readers: :func:`resolve_checkpoint` only sees complete folders); keep the newest ``total_limit``.
    ``identity`` (:func:`run_identity`) is recorded for the resume check."""
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process and partial.exists():
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / "trainer_state.json").write_text(json.dumps({"step": step, "run": identity or {}}) + "\n")
        make_readable(partial)
        replace_path(partial, final)
        if total_limit:
            for _, old in _checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``accelerate launch -m stylekit.extractors.train``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_args(argv)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
