"""Planning a batch job of (content, style) pairs: input expansion, output names, resume, atomic PNGs.

Nothing here loads a model or imports torch, so every check runs before any model work.

- Inputs: a file is taken as given; a folder contributes its image files (``IMAGE_EXTENSIONS``, sorted
  by name, not recursive); other files in a folder are skipped and reported as notices.
- Outputs: ``{content_stem}__{style_stem}.png``, written atomically (temp file + ``os.replace``) with the
  job's parameters in the PNG text chunks (``stylekit:*`` keys plus one ``parameters`` JSON blob).
- Resume: an output that already exists with the same settings is skipped; one written with other
  settings (or not by stylekit) is an error unless the caller overwrites.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stylekit.files import TEMP_SUFFIX, atomic_path

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".pnm"}
)
PARAMETERS_KEY = "parameters"
TEXT_PREFIX = "stylekit:"

# Settings that change the pixels of an output; an existing output is reused only if they all match.
RESULT_SETTINGS = (
    "model",
    "steps",
    "gamma",
    "temperature",
    "layers",
    "seed",
    "adain",
    "attention_injection",
    "query_preservation",
    "height",
    "width",
    "content_sha256",
    "style_sha256",
)


class InputError(ValueError):
    """Bad command-line input: names the argument and what was expected (the CLI exits with 2)."""


@dataclass(frozen=True)
class Pair:
    """One output of the job: a content file, a style file and the output file name."""

    content: Path
    style: Path

    @property
    def name(self) -> str:
        """The output file name, ``{content_stem}__{style_stem}.png``."""
        return f"{self.content.stem}__{self.style.stem}.png"


def expand_paths(items: Sequence[str | Path], argument: str) -> tuple[list[Path], list[str]]:
    """Expand files and folders into a de-duplicated list of files, in the order given.

    Args:
        items: paths as given on the command line (files or folders).
        argument: the argument name used in messages (e.g. ``"CONTENT"`` or ``"--style"``).

    Returns:
        (files, notices): files as ``Path`` objects (a folder contributes its image files sorted by name),
        and human-readable notices about skipped non-image files.

    Raises:
        InputError: a path does not exist, or a folder holds no image file.
    """
    files: list[Path] = []
    notices: list[str] = []
    seen: set[Path] = set()
    for item in items:
        path = Path(item)
        if not path.exists():
            raise InputError(f"{argument}: no such file or folder: {path}")
        if path.is_dir():
            entries = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
            if not images:
                extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
                raise InputError(f"{argument}: no image files ({extensions}) in folder: {path}")
            if len(images) < len(entries):
                notices.append(
                    f"{argument}: skipping {len(entries) - len(images)} non-image file(s) in folder {path}"
                )
        else:
            images = [path]
        for image in images:
            key = image.resolve()
            if key not in seen:
                seen.add(key)
                files.append(image)
    if not files:
        raise InputError(f"{argument}: expected at least one image file or folder")
    return files, notices


def plan_pairs(contents: Sequence[Path], styles: Sequence[Path]) -> list[Pair]:
    """Every (content, style) pair, content-major (the pipeline's output order).

    Raises:
        InputError: two pairs would write the same output file (e.g. ``a.png`` and ``a.jpg``).
    """
    pairs = [Pair(content, style) for content in contents for style in styles]
    owners: dict[str, Pair] = {}
    for pair in pairs:
        other = owners.setdefault(pair.name, pair)
        if other is not pair:
            raise InputError(
                f"CONTENT/--style: ({other.content}, {other.style}) and ({pair.content}, {pair.style}) would "
                f"both write {pair.name}; expected file stems that give distinct output names"
            )
    return pairs


def style_batches(pairs: Sequence[Pair], batch_size: int) -> list[list[Pair]]:
    """Group pairs that share a style (style order of first appearance, contents in order) into
    batches of at most ``batch_size`` pairs: one pipeline call per batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size: expected an integer >= 1, got {batch_size}")
    by_style: dict[Path, list[Pair]] = {}
    for pair in pairs:
        by_style.setdefault(pair.style, []).append(pair)
    batches: list[list[Pair]] = []
    for group in by_style.values():
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    return batches


def file_sha256(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def png_text(parameters: Mapping[str, Any]) -> dict[str, str]:
    """PNG text chunks for an output: ``stylekit:<key>`` per parameter and a ``parameters`` JSON blob."""
    text = {f"{TEXT_PREFIX}{key}": _as_text(value) for key, value in parameters.items()}
    text[PARAMETERS_KEY] = json.dumps(dict(parameters), sort_keys=True)
    return text


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder, fsync and ``os.replace``.

    An interruption (exception, KeyboardInterrupt) leaves either the previous file or the complete
    new one, never a partial file; the temp file is removed. The file gets the usual permissions
    (0666 minus the umask).
    """
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_png_atomic(image: Any, path: Path, text: Mapping[str, str]) -> None:
    """Save a PIL image as a PNG with text chunks, atomically (see ``write_atomic``)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    write_atomic(path, buffer.getvalue())


def remove_stale_temps(out_dir: Path, pairs: Iterable[Pair]) -> int:
    """Delete temp files left by a killed run for these outputs; returns how many were removed."""
    removed = 0
    for pair in pairs:
        for stale in glob.glob(
            os.path.join(glob.escape(str(out_dir)), f".{glob.escape(pair.name)}.*{TEMP_SUFFIX}")
        ):
            Path(stale).unlink(missing_ok=True)
            removed += 1
    return removed


def read_parameters(path: Path) -> dict[str, Any] | None:
    """The ``parameters`` JSON of a stylekit PNG, or None if the file is not one (or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            blob = image.text.get(PARAMETERS_KEY) if hasattr(image, "text") else None
    except (OSError, SyntaxError, ValueError):
        return None
    if blob is None:
        return None
    try:
        parameters = json.loads(blob)
    except json.JSONDecodeError:
        return None
    return parameters if isinstance(parameters, dict) else None


def pending_pairs(
    pairs: Sequence[Pair],
    out_dir: Path,
    settings_for: Any,
    overwrite: bool,
) -> tuple[list[Pair], list[Pair]]:
    """Split pairs into (to do, already done) by looking at ``out_dir``.

    Args:
        pairs: the job.
        out_dir: the output folder.
        settings_for: ``f(pair) -> dict`` of the ``RESULT_SETTINGS`` the pair would be written with.
        overwrite: redo every pair regardless of existing files.

    Raises:
        InputError: an output exists but was written with other settings or not by stylekit.
    """
    for pair in pairs:
        if (out_dir / pair.name).is_dir():
            raise InputError(f"-o: {out_dir / pair.name} is a folder; an output image cannot replace it")
    if overwrite:
        return list(pairs), []
    todo: list[Pair] = []
    done: list[Pair] = []
    for pair in pairs:
        path = out_dir / pair.name
        if not path.exists():
            todo.append(pair)
            continue
        existing = read_parameters(path)
        if existing is None:
            raise InputError(
                f"-o: {path} exists and is not a stylekit output; expected a new or stylekit-written "
                "file (use --overwrite to replace it)"
            )
        wanted = settings_for(pair)
        changed = [key for key in RESULT_SETTINGS if key in wanted and existing.get(key) != wanted[key]]
        if changed:
            key = changed[0]
            raise InputError(
                f"-o: {path} exists from a run with other settings ({key}={existing.get(key)!r}, now "
                f"{wanted[key]!r}); use --overwrite or another output folder"
            )
        done.append(pair)
    return todo, done
