"""Gradio-facing handlers: component values in, component values out, library errors as ``gr.Error``.

Each method can be called directly (tests do): it validates, runs the :class:`~stylekit.apps.engine.Engine`
and returns what the output components show. Any failure becomes a ``gr.Error`` carrying the library's
message, so the page shows it and the server keeps serving.
"""

from __future__ import annotations

import logging
import math
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageDraw

from stylekit.apps.engine import Engine, TransferResult
from stylekit.capabilities import CapabilityUnavailable

logger = logging.getLogger("stylekit.apps")
POINT_LABELS = {"include": 1, "exclude": 0, "box corner": 2}


def user_message(error: BaseException) -> str:
    """The one-line message the page shows for ``error`` (the library's own message for bad input)."""
    text = " ".join(str(error).split()).replace("argument --", "")
    if isinstance(error, (ValueError, FileNotFoundError, CapabilityUnavailable)):
        return text
    return f"{type(error).__name__}: {text}"


@contextmanager
def shown_in_page() -> Iterator[None]:
    """Turn any exception into a ``gr.Error`` with :func:`user_message` (logging unexpected ones)."""
    try:
        yield
    except gr.Error:
        raise
    except (ValueError, FileNotFoundError, CapabilityUnavailable) as error:
        raise gr.Error(user_message(error), print_exception=False) from error
    except Exception as error:
        logger.error("request failed:\n%s", traceback.format_exc())
        raise gr.Error(user_message(error), print_exception=False) from error


def _file_paths(files: Any) -> list[str]:
    """Paths from a ``gr.File(file_count="multiple")`` value (None, a path, or a list of paths/objects)."""
    if files is None:
        return []
    if not isinstance(files, (list, tuple)):
        files = [files]
    return [str(getattr(f, "name", f)) for f in files if f is not None]


class Handlers:
    """The app's event handlers, bound to one :class:`Engine`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # ------------------------------------------------------------------------------------- image
    def transfer(
        self,
        content: str | None,
        style: str | None,
        more_styles: Any,
        model: str,
        gamma: float,
        temperature: float,
        steps: float,
        seed: float,
        layers: str,
        size: float,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[list[tuple[str, str]], tuple[str, str], list[str], str]:
        """Image tab: returns (gallery, before/after pair, downloadable files, status line)."""
        with shown_in_page():
            request = self.engine.request(
                model=model,
                gamma=gamma,
                temperature=temperature,
                steps=_int(steps, "steps"),
                seed=_int(seed, "seed"),
                layers=layers or None,
                size=_int(size, "size") or None,
            )
            styles = [style, *_file_paths(more_styles)]
            progress(0, desc="loading model")
            result = self.engine.transfer(content, [s for s in styles if s], request)
            return self._outputs(result, [f"style {i + 1}" for i in range(len(result.images))], request.model)

    def regions(
        self,
        content: str | None,
        mask_1: Any,
        style_1: str | None,
        mask_2: Any,
        style_2: str | None,
        mask_3: Any,
        style_3: str | None,
        feather: float,
        context: float,
        model: str,
        gamma: float,
        temperature: float,
        steps: float,
        layers: str,
        size: float,
        progress: gr.Progress = gr.Progress(track_tqdm=True),
    ) -> tuple[list[tuple[str, str]], tuple[str, str], list[str], str]:
        """Regions tab: a style per uploaded (or SAM) mask; returns the same outputs as ``transfer``."""
        with shown_in_page():
            request = self.engine.request(
                model=model,
                gamma=gamma,
                temperature=temperature,
                steps=_int(steps, "steps"),
                layers=layers or None,
                size=_int(size, "size") or None,
            )
            pairs = [(mask_1, style_1), (mask_2, style_2), (mask_3, style_3)]
            progress(0, desc="loading model")
            result = self.engine.regions(
                content, pairs, request, feather=_int(feather, "feather"), context=float(context)
            )
            return self._outputs(result, ["regions"], request.model)

    def _outputs(
        self, result: TransferResult, captions: Sequence[str], model: str
    ) -> tuple[list[tuple[str, str]], tuple[str, str], list[str], str]:
        paths = [str(p) for p in result.paths]
        before = str(Path(paths[0]).with_name("content.png"))
        result.content.save(before)
        status = (
            f"{len(paths)} image(s), {result.images[0].width}x{result.images[0].height}, model `{model}`, "
            f"{result.seconds:.1f} s"
        )
        return list(zip(paths, captions, strict=True)), (before, paths[0]), paths, status

    # ------------------------------------------------------------------------------------- SAM points
    def add_point(
        self, content: str | None, points: list[list[int]] | None, label: str, event: gr.SelectData
    ) -> tuple[list[list[int]], Any]:
        """Record a click on the content image (``include``, ``exclude`` or ``box corner``); returns
        (points as [x, y, label] with label 1 / 0 / 2, preview)."""
        with shown_in_page():
            if content is None:
                raise gr.Error("content: upload a content image before clicking points")
            x, y = (int(v) for v in event.index[:2])
            points = [*(points or []), [x, y, POINT_LABELS[label]]]
            return points, _draw_points(content, points)

    def clear_points(self, content: str | None) -> tuple[list[list[int]], Any]:
        """Forget the clicked points; the preview shows the content again."""
        return [], content

    def sam_mask(self, content: str | None, points: list[list[int]] | None) -> np.ndarray:
        """The SAM mask of the clicked points as a white-on-black image (for region 1's mask)."""
        with shown_in_page():
            points = points or []
            mask = self.engine.mask_from_points(content, [p[:2] for p in points], [p[2] for p in points])
            return (mask.astype(np.uint8) * 255)[..., None].repeat(3, axis=-1)

    # ------------------------------------------------------------------------------------- search
    def similarity(self, files: Any) -> tuple[Any, str]:
        """Style search tab: the extractor's pairwise similarity table (a DataFrame; rows and columns are
        the file names)."""
        import pandas as pd

        with shown_in_page():
            paths = _file_paths(files)
            matrix = self.engine.similarity(paths)
            names = [Path(p).name for p in paths]
            table = pd.DataFrame(np.round(matrix.astype(float), 3), columns=names)
            table.insert(0, "image", names)
            off = matrix[~np.eye(len(paths), dtype=bool)]
            return table, f"{len(paths)} images; off-diagonal similarity {off.min():.3f} .. {off.max():.3f}"

    def nearest(self, query: str | None, folder: str, k: float) -> tuple[list[tuple[str, str]], str]:
        """Style search tab: the ``k`` nearest styles in ``folder`` as a gallery with scores."""
        with shown_in_page():
            results = self.engine.nearest(query, folder, _int(k, "k"))
            gallery = [(str(path), f"{path.name} ({score:.3f})") for path, score in results]
            return gallery, f"{len(results)} nearest of {folder}"

    # ------------------------------------------------------------------------------------- video / LoRA
    def video(
        self, clip: str | None, style: str | None, frames: float, window: float, model: str, steps: float
    ) -> str:
        """Video tab: the restyled clip (mp4) via ``stylekit video``."""
        with shown_in_page():
            return str(
                self.engine.video(
                    clip, style, _int(frames, "frames"), _int(window, "window"), model, _int(steps, "steps")
                )
            )

    def lora(
        self, content: str | None, style: str | None, adapters: Any, weights: str, model: str, steps: float
    ) -> tuple[list[tuple[str, str]], str]:
        """LoRA tab: StyleID + the uploaded adapters at their weights; returns (gallery, status line)."""
        with shown_in_page():
            request = self.engine.request(model=model, steps=_int(steps, "steps"))
            result = self.engine.lora(content, style, _file_paths(adapters), _weights(weights), request)
            image = result.images[0]
            status = f"{image.width}x{image.height}, model `{request.model}`, {result.seconds:.1f} s"
            return [(str(result.paths[0]), "LoRA")], status


def _weights(text: str | None) -> list[float]:
    """Comma-separated adapter weights ('' -> [])."""
    parts = [p for p in (text or "").replace(";", ",").split(",") if p.strip()]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"weights: expected numbers separated by commas (e.g. 1.0, 0.6), got {text!r}"
        ) from None


def _int(value: Any, argument: str) -> int:
    """A whole number from a Number/Slider value (None -> 0); non-integers, NaN and infinities are refused."""
    if value is None or value == "":
        return 0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{argument}: expected a whole number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{argument}: expected a whole number, got {value!r}")
    return int(number)


def _draw_points(content: str, points: Sequence[Sequence[int]]) -> Image.Image:
    image = Image.open(content).convert("RGB")
    draw = ImageDraw.Draw(image)
    radius = max(2, min(image.size) // 40)
    for x, y, positive in points:
        colour = {1: (0, 200, 0), 0: (220, 0, 0)}.get(positive, (0, 90, 255))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255))
    return image
