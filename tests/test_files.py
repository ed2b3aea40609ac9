"""Atomic writes leave ordinary permissions (the umask's), never mkstemp's owner-only 0600 / 0700."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from stylekit.cache import CacheKey, InversionCache
from stylekit.files import atomic_path, write_json_atomic
from stylekit.video_io import write_video


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_videos_are_written_with_the_umask_mode(tmp_path: Path, umask_022: None, name: str) -> None:
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    out = write_video(tmp_path / name, frames, fps=4)
    if out.is_dir():
        assert mode(out) == 0o755
        assert {mode(f) for f in out.iterdir()} == {0o644}
    else:
        assert mode(out) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_json_and_cache_files_are_written_with_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert mode(tmp_path / "summary.json") == 0o644
    cache = InversionCache(tmp_path / "cache")
    key = CacheKey(
        image_sha256="0" * 64,
        model="m",
        scheduler="s",
        steps=1,
        layers=(),
        dtype="torch.float32",
        resolution=(8, 8),
        role="content",
        strategy="features",
        timing="corrected",
    )
    cache.put(key, {"latents": torch.zeros(1, 4)})
    assert [mode(f) for f in (tmp_path / "cache").iterdir()] == [0o644]


def test_a_failed_write_leaves_the_old_target(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target, folder=True) as temp:
        (temp / "new.txt").write_text("new")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_path(target, folder=True) as temp:
        (temp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]
