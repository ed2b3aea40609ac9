"""Training checkpoints: safetensors + JSON only (nothing is pickled), written atomically.

A checkpoint is a folder ``checkpoint-{step:07d}`` holding ``modules.safetensors`` (the trained modules,
keys ``{module}.{param}``), ``ema.safetensors`` (EMA weights), ``optimizer.safetensors`` (optimizer
tensors) and ``state.json`` (step, optimizer hyper-parameters and scalars, run statistics). It is written
to a temporary folder and renamed into place, so a folder with that name is always complete.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from stylekit.files import atomic_path

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_name(step: int) -> str:
    """Folder name of the checkpoint taken after ``step`` optimizer steps."""
    return f"checkpoint-{step:07d}"


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest (fewest steps) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m[1]), p) for p in directory.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(directory: str | Path, which: str | None) -> Path | None:
    """``which`` = None (start fresh), ``"latest"`` (newest complete checkpoint in ``directory`` or None when
    there is none) or a checkpoint folder path.

    Raises:
        FileNotFoundError: ``which`` names a folder that is not a complete checkpoint.
    """
    if which is None:
        return None
    if which == "latest":
        found = list_checkpoints(directory)
        return found[-1] if found else None
    path = Path(which)
    if not path.is_absolute() and not path.exists():
        path = Path(directory) / which
    if not (path / "state.json").is_file():
        raise FileNotFoundError(
            f"--resume_from_checkpoint: {which!r} is not a checkpoint folder; expected 'latest' or a "
            f"folder holding state.json under {directory}"
        )
    return path


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    for index, entry in meta["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    return {"state": state, "param_groups": meta["param_groups"]}


def _module_tensors(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{key}": value.detach().cpu().contiguous().clone()
        for name, state in modules.items()
        for key, value in state.items()
    }


def _split_modules(tensors: dict[str, torch.Tensor], names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    out: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key, value in tensors.items():
        name, rest = key.split(".", 1)
        out.setdefault(name, {})[rest] = value
    return out


def save_checkpoint(
    directory: str | Path,
    step: int,
    modules: dict[str, dict[str, torch.Tensor]],
    ema: dict[str, dict[str, torch.Tensor]],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Write ``checkpoint-{step}`` under ``directory`` atomically and keep only the newest ``keep``.

    Args:
        modules / ema: module name -> state dict.
        optimizer_state: ``optimizer.state_dict()``.
        state: JSON-serialisable run state (``step`` is added).

    Returns:
        The checkpoint folder.
    """
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    with atomic_path(final, folder=True) as temp:
        save_file(_module_tensors(modules), str(temp / "modules.safetensors"))
        save_file(_module_tensors(ema), str(temp / "ema.safetensors"))
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(temp / "optimizer.safetensors"))
        meta = dict(state, step=step, modules=sorted(modules), ema=sorted(ema), optimizer=opt_meta)
        (temp / "state.json").write_text(json.dumps(meta, indent=1))
    if keep is not None:
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns:
        ``{"modules": {name: state_dict}, "ema": {name: state_dict}, "optimizer": optimizer state dict,
        "state": the JSON state (with ``step``)}``, tensors on CPU.
    """
    path = Path(path)
    meta = json.loads((path / "state.json").read_text())
    modules = _split_modules(load_file(str(path / "modules.safetensors")), meta["modules"])
    ema = _split_modules(load_file(str(path / "ema.safetensors")), meta["ema"])
    optimizer = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), meta.pop("optimizer"))
    return {"modules": modules, "ema": ema, "optimizer": optimizer, "state": meta}
