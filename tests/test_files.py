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
def umask_027() -> Iterator[None]:  # not 022: the old code's fixed 0644 / 0755 must not pass
    previous = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("name", ["clip.mp4", "clip.gif", "frames"])
def test_videos_are_written_with_the_umask_mode(tmp_path: Path, umask_027: None, name: str) -> None:
    frames = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    out = write_video(tmp_path / name, frames, fps=4)
    if out.is_dir():
        assert mode(out) == 0o750
        assert {mode(f) for f in out.iterdir()} == {0o640}
    else:
        assert mode(out) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_json_and_cache_files_are_written_with_the_umask_mode(tmp_path: Path, umask_027: None) -> None:
    write_json_atomic(tmp_path / "summary.json", {"a": 1})
    assert mode(tmp_path / "summary.json") == 0o640
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
    assert [mode(f) for f in (tmp_path / "cache").iterdir()] == [0o640]


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


def test_links_in_a_written_folder_are_not_followed(tmp_path: Path, umask_027: None) -> None:
    private = tmp_path / "private.txt"
    private.write_text("secret")
    private.chmod(0o600)
    with atomic_path(tmp_path / "out", folder=True) as temp:
        (temp / "link").symlink_to(private)
        (temp / "dangling").symlink_to(tmp_path / "nowhere")
    assert mode(private) == 0o600
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["dangling", "link"]


def test_a_failed_folder_swap_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stylekit import files

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def flaky(src, dst):  # the new folder cannot be moved in, and the old one cannot be moved back
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) >= 2:
            raise OSError("busy")
        real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(OSError, match="its previous content is in"), atomic_path(target, folder=True) as temp:
        (temp / "new.txt").write_text("new")
    monkeypatch.undo()
    kept = [p for p in tmp_path.rglob("old.txt")]
    assert len(kept) == 1 and kept[0].read_text() == "old"
