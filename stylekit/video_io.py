"""Reading and writing videos: mp4 (and other ffmpeg containers), gif and folders of frames.

- mp4 / mov / mkv / webm / avi go through ``imageio-ffmpeg`` (the ``video`` extra; it ships an ffmpeg
  binary). Written as H.264 (webm: VP9) (``yuv420p`` for even sizes, ``yuv444p`` otherwise), near-lossless
  (``crf`` 10 by default), and checked after writing (ffmpeg must report every frame): pixel values are
  not exact, frame count and order are. fps is what ffmpeg reports (two decimals: 12.345 reads back as
  12.35), except that the NTSC rates (24000/1001, 30000/1001, ... shown as 23.98, 29.97) are recognised
  and read exactly.
- gif goes through Pillow. GIF stores frame durations in centiseconds; stylekit also writes the exact
  fps and frame count into the GIF comment, so a stylekit gif reads back with the same fps and frame count
  (Pillow merges identical consecutive frames into one longer frame; reading expands them again).
- A folder holds ``00000.png, 00001.png, ...`` plus ``video.json`` (``{"fps": ..., "frames": ...}``);
  reading a folder without ``video.json`` sorts the image files naturally and uses ``default_fps``.

Every write is atomic: frames go to a temporary file (or folder) next to the target that is renamed onto
it only when the whole video was written; on any error the temporary output is removed and an existing
target is left untouched. Bad input (missing/unreadable/empty video, zero frames, frames of different
sizes) raises ``VideoIOError`` (a ``ValueError``) naming the argument, before anything is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch
from PIL import Image

from stylekit.files import atomic_path
from stylekit.images import InputImageError, load_image

FFMPEG_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
GIF_SUFFIXES = (".gif",)
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
META_FILE = "video.json"
DEFAULT_FPS = 8.0
NTSC_FPS = tuple(n * 1000 / 1001 for n in (24, 30, 48, 60, 120))  # ffmpeg prints these to two decimals
CODECS = {".webm": ("libvpx-vp9", ["-b:v", "0"])}  # (encoder, extra flags); every other container: H.264


class VideoIOError(ValueError):
    """A video (or a sequence of frames) is missing, unreadable, empty or inconsistent."""


@dataclass
class Video:
    """Frames and frame rate.

    Attributes:
        frames: uint8 ``(T, H, W, 3)``, T >= 1.
        fps: frames per second (> 0).
    """

    frames: np.ndarray
    fps: float = DEFAULT_FPS

    def __post_init__(self) -> None:
        frames = np.asarray(self.frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise VideoIOError(
                f"Video.frames: expected uint8 (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}"
            )
        if frames.shape[0] == 0:
            raise VideoIOError("Video.frames: the video has zero frames")
        self.fps = check_fps(self.fps)

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.frames.shape[2]), int(self.frames.shape[1])

    def images(self) -> list[Image.Image]:
        """The frames as RGB PIL images."""
        return [Image.fromarray(frame) for frame in self.frames]


def check_fps(fps: Any) -> float:
    """``fps`` as a positive finite float, or ``VideoIOError``."""
    try:
        value = float(fps)
    except (TypeError, ValueError) as error:
        raise VideoIOError(f"fps: expected a positive number, got {fps!r}") from error
    if not np.isfinite(value) or value <= 0:
        raise VideoIOError(f"fps: expected a positive number, got {fps!r}")
    return value


def _kind(path: Path, argument: str) -> str:
    suffix = path.suffix.lower()
    if suffix in FFMPEG_SUFFIXES:
        return "ffmpeg"
    if suffix in GIF_SUFFIXES:
        return "gif"
    if suffix == "" or path.is_dir():
        return "folder"
    raise VideoIOError(
        f"{argument}: unsupported video type {suffix!r} ({path}); expected one of "
        f"{', '.join(FFMPEG_SUFFIXES + GIF_SUFFIXES)} or a folder of frames"
    )


def _ffmpeg() -> Any:
    try:
        import imageio_ffmpeg
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading/writing mp4 needs imageio-ffmpeg: pip install 'stylekit[video]'"
        ) from error
    return imageio_ffmpeg


# --------------------------------------------------------------------------------------------- frames
def as_frames(frames: Any, argument: str = "frames") -> np.ndarray:
    """Frames in any common form -> uint8 ``(T, H, W, 3)``, checked.

    Args:
        frames: a ``Video``; a uint8 ``(T, H, W, 3)`` array or float array in [0, 1]; a float tensor
            ``(T, 3, H, W)`` in [0, 1]; or a sequence of images (PIL, arrays, tensors, paths), each
            converted like ``stylekit.images.load_image`` (RGBA on white, grayscale to RGB, ...).
        argument: the name used in error messages.

    Raises:
        VideoIOError: zero frames, frames of different sizes, or an unreadable frame.
    """
    if isinstance(frames, Video):
        return frames.frames
    if isinstance(frames, torch.Tensor) and frames.ndim == 4:
        frames = frames.detach().cpu().float()
        if frames.shape[1] in (1, 3, 4) and frames.shape[-1] not in (1, 3, 4):
            frames = frames.permute(0, 2, 3, 1)
        frames = frames.numpy()
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        items: Sequence[Any] = list(frames)
    elif isinstance(frames, (list, tuple)):
        items = frames
    else:
        raise VideoIOError(
            f"{argument}: expected a Video, a (T, H, W, 3) array, a (T, 3, H, W) tensor or a list of "
            f"frames, got {type(frames).__name__}"
        )
    if len(items) == 0:
        raise VideoIOError(f"{argument}: the video has zero frames")
    out = []
    for index, item in enumerate(items):
        try:
            image = load_image(item, f"{argument}[{index}]")
        except InputImageError as error:
            raise VideoIOError(str(error)) from error
        if out and image.size != (out[0].shape[1], out[0].shape[0]):
            raise VideoIOError(
                f"{argument}: frame {index} is {image.width}x{image.height} but frame 0 is "
                f"{out[0].shape[1]}x{out[0].shape[0]}; all frames must have the same size"
            )
        out.append(np.asarray(image, dtype=np.uint8))
    return np.stack(out)


def load_video(source: Any, argument: str = "video", default_fps: float = DEFAULT_FPS) -> Video:
    """A video from a path (see ``read_video``), a ``Video`` or frames (see ``as_frames``)."""
    if isinstance(source, Video):
        return source
    if isinstance(source, (str, Path)):
        return read_video(source, argument=argument, default_fps=default_fps)
    return Video(as_frames(source, argument), default_fps)


# --------------------------------------------------------------------------------------------- reading
def read_video(
    path: str | Path,
    max_frames: int | None = None,
    default_fps: float = DEFAULT_FPS,
    argument: str = "video",
) -> Video:
    """Read an mp4 (or another ffmpeg container), a gif or a folder of frames.

    Args:
        path: the file or folder.
        max_frames: read at most this many frames (None = all).
        default_fps: the fps of a folder without ``video.json``.
        argument: the name used in error messages.

    Returns:
        A ``Video`` (uint8 frames, fps).

    Raises:
        VideoIOError: missing, empty, unreadable or zero-frame video; frames of different sizes.
    """
    path = Path(path)
    if not path.exists():
        raise VideoIOError(f"{argument}: file not found: {path}")
    if max_frames is not None and max_frames < 1:
        raise VideoIOError(f"max_frames: expected None or >= 1, got {max_frames}")
    kind = _kind(path, argument)
    if kind != "folder" and path.is_dir():
        raise VideoIOError(f"{argument}: expected a video file, got a folder: {path}")
    if kind != "folder" and path.stat().st_size == 0:
        raise VideoIOError(f"{argument}: the file is empty: {path}")
    reader = {"ffmpeg": _read_ffmpeg, "gif": _read_gif, "folder": _read_folder}[kind]
    frames, fps = reader(path, max_frames, default_fps, argument)
    if len(frames) == 0:
        raise VideoIOError(f"{argument}: the video has zero frames: {path}")
    return Video(as_frames(frames, argument), fps)


def _read_ffmpeg(
    path: Path, max_frames: int | None, default_fps: float, argument: str
) -> tuple[list[np.ndarray], float]:
    ffmpeg = _ffmpeg()
    frames: list[np.ndarray] = []
    try:
        reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = reader.__next__()
        width, height = meta["size"]
        fps = _exact_fps(float(meta.get("fps") or default_fps))
        try:
            for raw in reader:
                frames.append(np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy())
                if max_frames is not None and len(frames) >= max_frames:
                    break
        finally:
            reader.close()
    except (OSError, RuntimeError, StopIteration, ValueError, KeyError) as error:
        raise VideoIOError(f"{argument}: cannot read the video {path}: {_ffmpeg_reason(error)}") from error
    return frames, fps


def _exact_fps(reported: float) -> float:
    """ffmpeg's two-decimal fps, or the NTSC rate it rounds (29.97 -> 30000/1001)."""
    return next((rate for rate in NTSC_FPS if abs(rate - reported) < 0.006), reported)


def _ffmpeg_reason(error: BaseException) -> str:
    """The last line of an ffmpeg error (the lines before it are its banner and stream dump)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def _read_gif(
    path: Path, max_frames: int | None, default_fps: float, argument: str
) -> tuple[list[np.ndarray], float]:
    try:
        with Image.open(path) as gif:
            comment = gif.info.get("comment", b"")
            meta = _parse_meta(comment.decode("utf-8", "replace") if isinstance(comment, bytes) else comment)
            frames, durations = [], []
            for index in range(getattr(gif, "n_frames", 1)):
                gif.seek(index)
                frames.append(np.asarray(gif.convert("RGB")))
                durations.append(float(gif.info.get("duration") or 0.0))
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise VideoIOError(f"{argument}: cannot read the gif {path}: {error}") from error
    if meta is not None:
        fps = meta["fps"]
        # Pillow merges identical consecutive frames; expand them back by their duration.
        repeats = [max(1, round(d * fps / 1000.0)) for d in durations]
        if sum(repeats) == meta["frames"]:
            frames = [frame for frame, n in zip(frames, repeats, strict=True) for _ in range(n)]
    else:
        positive = [d for d in durations if d > 0]
        fps = 1000.0 / float(np.median(positive)) if positive else default_fps
    return frames[:max_frames] if max_frames else frames, fps


def _parse_meta(text: str) -> dict[str, Any] | None:
    try:
        meta = json.loads(text)
        return {"fps": check_fps(meta["fps"]), "frames": int(meta["frames"])}
    except (ValueError, KeyError, TypeError):
        return None


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _read_folder(
    path: Path, max_frames: int | None, default_fps: float, argument: str
) -> tuple[list[np.ndarray], float]:
    files = sorted(
        (p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith(".")),
        key=_natural_key,
    )
    if not files:
        raise VideoIOError(f"{argument}: the folder has no frames ({', '.join(FRAME_SUFFIXES)}): {path}")
    meta_path = path / META_FILE
    meta = _parse_meta(meta_path.read_text()) if meta_path.is_file() else None
    fps = meta["fps"] if meta else default_fps
    files = files[:max_frames] if max_frames else files
    try:
        frames = [np.asarray(load_image(f, f"{argument}/{f.name}")) for f in files]
    except InputImageError as error:
        raise VideoIOError(str(error)) from error
    for file, frame in zip(files, frames, strict=True):
        if frame.shape != frames[0].shape:
            raise VideoIOError(
                f"{argument}: {file.name} is {frame.shape[1]}x{frame.shape[0]} but {files[0].name} is "
                f"{frames[0].shape[1]}x{frames[0].shape[0]}; all frames must have the same size"
            )
    return frames, fps


def iter_video_frames(path: str | Path, argument: str = "video") -> Iterator[np.ndarray]:
    """Yield uint8 ``(H, W, 3)`` frames one by one (mp4 streams; gif and folders are read whole)."""
    path = Path(path)
    if _kind(path, argument) == "ffmpeg" and path.is_file() and path.stat().st_size > 0:
        ffmpeg = _ffmpeg()
        try:
            reader = ffmpeg.read_frames(str(path), pix_fmt="rgb24")
            width, height = reader.__next__()["size"]
        except (OSError, RuntimeError, StopIteration) as error:
            raise VideoIOError(
                f"{argument}: cannot read the video {path}: {_ffmpeg_reason(error)}"
            ) from error
        try:
            for raw in reader:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3).copy()
        finally:
            reader.close()
        return
    yield from read_video(path, argument=argument).frames


# --------------------------------------------------------------------------------------------- writing
def check_output(
    path: str | Path, overwrite: bool = True, argument: str = "output", overwrite_flag: str = "overwrite=True"
) -> None:
    """Raise ``VideoIOError`` unless ``path`` can be written as a video: a known type, an existing parent
    folder, no folder where a file goes, and (unless ``overwrite``) no file or non-empty folder there yet
    (``overwrite_flag``: how the message tells the caller to allow that)."""
    path = Path(path)
    kind = _kind(path, argument)
    if not path.parent.is_dir():
        raise VideoIOError(f"{argument}: the folder {path.parent} does not exist")
    if kind != "folder" and path.is_dir():
        raise VideoIOError(f"{argument}: {path} is a folder; a {path.suffix} video cannot replace it")
    if path.exists() and not overwrite and not (path.is_dir() and not any(path.iterdir())):
        raise VideoIOError(f"{argument}: {path} exists (replace it with {overwrite_flag})")


class VideoWriter:
    """Write frames one at a time, atomically.

    ``with VideoWriter("out.mp4", fps=8) as writer: writer.append(frame)``. Nothing appears at the target
    path until the ``with`` block ends without an error; then the temporary output is renamed onto it.
    On an error (or zero frames) the temporary output is deleted and the target is left as it was.

    Args:
        path: ``.mp4`` (and other ffmpeg containers), ``.gif``, or a folder (no suffix).
        fps: frames per second.
        crf: H.264 quality for ffmpeg containers (0 lossless .. 51 worst).
        overwrite: replace an existing target (a folder target must otherwise be absent or empty).
    """

    def __init__(self, path: str | Path, fps: float = DEFAULT_FPS, crf: int = 10, overwrite: bool = True):
        self.path = Path(path)
        self.fps = check_fps(fps)
        self.kind = _kind(self.path, "output")
        self.crf = int(crf)
        self.overwrite = overwrite
        self.count = 0
        self._size: tuple[int, int] | None = None
        self._tmp: Path | None = None
        self._output: Any = None  # the atomic_path context that owns _tmp
        self._encoder: Any = None
        self._gif_frames: list[Image.Image] = []

    def __enter__(self) -> VideoWriter:
        check_output(self.path, self.overwrite)
        # ffmpeg picks the container from the temporary file's suffix, so it ends in the target's
        self._output = atomic_path(self.path, folder=self.kind == "folder", suffix=f".tmp{self.path.suffix}")
        self._tmp = self._output.__enter__()
        return self

    def append(self, frame: Any) -> None:
        """Add one frame (anything ``stylekit.images.load_image`` reads); all frames must share a size."""
        if self._tmp is None:
            raise RuntimeError("VideoWriter.append outside its with-block")
        array = as_frames([frame], f"frames[{self.count}]")[0]
        size = (array.shape[1], array.shape[0])
        if self._size is None:
            self._size = size
        elif size != self._size:
            raise VideoIOError(
                f"frames: frame {self.count} is {size[0]}x{size[1]} but frame 0 is "
                f"{self._size[0]}x{self._size[1]}; all frames must have the same size"
            )
        if self.kind == "ffmpeg":
            if self._encoder is None:
                self._encoder = self._open_encoder(size)
            self._encoder.send(np.ascontiguousarray(array))
        elif self.kind == "gif":
            self._gif_frames.append(Image.fromarray(array))
        else:
            Image.fromarray(array).save(self._tmp / f"{self.count:05d}.png")
        self.count += 1

    def extend(self, frames: Iterable[Any]) -> None:
        for frame in frames:
            self.append(frame)

    def _open_encoder(self, size: tuple[int, int]) -> Any:
        even = size[0] % 2 == 0 and size[1] % 2 == 0
        codec, flags = CODECS.get(self.path.suffix.lower(), ("libx264", []))
        encoder = _ffmpeg().write_frames(
            str(self._tmp),
            size,
            fps=self.fps,
            codec=codec,
            pix_fmt_out="yuv420p" if even else "yuv444p",
            quality=None,
            macro_block_size=1,
            ffmpeg_log_level="error",
            output_params=["-crf", str(self.crf), *flags],
        )
        encoder.send(None)
        return encoder

    def _check_encoded(self, tmp: Path) -> None:
        """Raise ``VideoIOError`` unless ffmpeg reads back all frames (an encoder that fails on a short video
        exits quietly and leaves a header-only file)."""
        import subprocess

        command = [_ffmpeg().get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", str(tmp)]
        command += ["-map", "0:v:0", "-c", "copy", "-f", "null", "-"]
        result = subprocess.run(command, capture_output=True, text=True, errors="replace")
        counts = re.findall(r"frame=\s*(\d+)", result.stderr)
        if result.returncode != 0 or not counts or int(counts[-1]) != self.count:
            reason = _ffmpeg_reason(RuntimeError(result.stderr)) if result.returncode else f"{counts} frames"
            raise VideoIOError(
                f"output: ffmpeg could not write {self.count} frames to {self.path.name} ({reason}); "
                "nothing written"
            )

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._output is None:  # already finished (a second __exit__ does nothing)
            return
        assert self._tmp is not None
        tmp, output = self._tmp, self._output
        self._tmp = self._output = None
        try:
            if exc_type is None and self.count == 0:
                raise VideoIOError("frames: the video has zero frames; nothing written")
            if self._encoder is not None:
                encoder, self._encoder = self._encoder, None
                encoder.close()
                if exc_type is None:
                    self._check_encoded(tmp)
            if exc_type is None:
                if self.kind == "gif":
                    self._write_gif(tmp)
                elif self.kind == "folder":
                    (tmp / META_FILE).write_text(json.dumps({"fps": self.fps, "frames": self.count}))
        except BaseException as error:
            output.__exit__(type(error), error, error.__traceback__)  # removes the temporary output
            raise
        output.__exit__(exc_type, exc, tb)  # renames it onto the target, or removes it on an error

    def _write_gif(self, tmp: Path) -> None:
        duration = 1000.0 / self.fps
        comment = json.dumps({"fps": self.fps, "frames": self.count})
        first, *rest = self._gif_frames
        first.save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=rest,
            duration=[duration] * self.count,
            loop=0,
            comment=comment,
        )


def write_video(
    path: str | Path, frames: Any, fps: float | None = None, crf: int = 10, overwrite: bool = True
) -> Path:
    """Write a whole video atomically (see ``VideoWriter``).

    Args:
        path: ``.mp4`` / ``.gif`` / a folder.
        frames: a ``Video`` or anything ``as_frames`` accepts.
        fps: frames per second (default: the ``Video``'s fps, else ``DEFAULT_FPS``).

    Returns:
        The path written.
    """
    array = as_frames(frames, "frames")  # validate everything before opening the output
    if fps is None:
        fps = frames.fps if isinstance(frames, Video) else DEFAULT_FPS
    with VideoWriter(path, fps=fps, crf=crf, overwrite=overwrite) as writer:
        writer.extend(array)
    return Path(path)
