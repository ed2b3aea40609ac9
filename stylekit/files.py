"""Atomic writes with the permissions of ordinary files.

``tempfile.mkstemp`` / ``mkdtemp`` create owner-only entries (0600 / 0700); a file written through one and
renamed into place would keep that mode. Everything stylekit writes goes through :func:`atomic_path`, which
gives the result the mode a plain ``open()`` / ``mkdir()`` would have under the process's umask.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process's umask. Read from ``/proc/self/status`` where there is one: ``os.umask`` can only read
    it by setting it, and another thread creating a file meanwhile would get mode 0666 / 0777."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)  # the brief value is the strict one
    os.umask(mask)
    return mask


def make_readable(path: str | Path) -> None:
    """Give ``path`` (and, for a folder, everything in it) the umask's default mode: files 0666 & ~umask,
    folders 0777 & ~umask. Symbolic links (and what they point to) are left alone."""
    mask = current_umask()
    root = Path(path)
    entries = [root, *root.rglob("*")] if root.is_dir() and not root.is_symlink() else [root]
    for entry in entries:
        if not entry.is_symlink():
            os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


@contextmanager
def atomic_path(target: str | Path, folder: bool = False, suffix: str = TEMP_SUFFIX) -> Iterator[Path]:
    """Yield a temporary path next to ``target`` (an empty folder when ``folder``); when the block ends
    without an error it gets the umask's default mode and is renamed onto ``target``, otherwise it is
    removed and ``target`` is left as it was. The parent folder is created if missing.

    A folder ``target`` that exists is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}."
    if folder:
        temp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
        os.close(fd)
        temp = Path(name)
    try:
        yield temp
        make_readable(temp)
        replace_path(temp, target)
    except BaseException:
        _remove(temp)
        raise


def ensure_folder(path: str | Path, argument: str, error: type[Exception] = ValueError) -> Path:
    """Create the folder ``path`` (and its parents) for the option ``argument``; raise ``error`` naming the
    option when it is a file, cannot be created, or is not writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise error(f"{argument}: expected a folder, got a file: {path}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as failure:
        raise error(f"{argument}: cannot create folder {path} ({failure.strerror or failure})") from None
    if not os.access(path, os.W_OK):
        raise error(f"{argument}: the folder {path} is not writable")
    return path


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as temp:
        temp.write_text(json.dumps(data, indent=1, default=str))


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_path(temp: Path, target: Path) -> None:
    """Rename the finished ``temp`` onto ``target`` (a file, or a folder that may already exist: the old
    folder is set aside first and deleted only once the new one is in place)."""
    if not (temp.is_dir() and target.exists()):
        os.replace(temp, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old = aside / target.name
    os.replace(target, old)
    try:
        os.replace(temp, target)
    except BaseException as error:
        try:
            os.replace(old, target)
        except OSError:  # never delete the only copy: say where it is
            raise OSError(f"replacing {target} failed ({error}); its previous content is in {old}") from error
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
