"""The app's engine: validated requests, one model cache shared by every tab, outputs in one folder.

Nothing here imports Gradio, so every handler can be called (and tested) directly. Bad input raises
``ValueError`` (``InputError`` / ``InputImageError``) with the library's message *before* any model is
loaded; the UI shows that message as a ``gr.Error``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stylekit.batch import InputError, expand_paths, png_text, write_png_atomic

MAX_STYLES = 4
MAX_REGIONS = 4
MAX_SEARCH_RESULTS = 24


@dataclass(frozen=True)
class TransferRequest:
    """StyleID settings of one request (validated on creation, before any model work).

    Attributes:
        model: preset, alias, hub id or diffusers folder.
        gamma: query preservation in [0, 1]; temperature: attention temperature > 0.
        steps: DDIM steps in [1, max_steps]; seed: recorded in the outputs (the method is deterministic).
        layers: a layer preset name, comma-separated layer names or a JSON block mapping; None = the
            architecture's default.
        size: output side in pixels (rounded down to the VAE factor); None = the model's native size.
    """

    model: str
    gamma: float = 0.75
    temperature: float = 1.5
    steps: int = 20
    seed: int = 0
    layers: str | None = None
    size: int | None = None
    max_steps: int = field(default=100, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise InputError("model: expected a preset name, hub id or diffusers folder, got ''")
        if not _finite(self.gamma) or not 0.0 <= float(self.gamma) <= 1.0:
            raise InputError(f"gamma: expected a number in [0, 1], got {self.gamma!r}")
        if not _finite(self.temperature) or float(self.temperature) <= 0.0:
            raise InputError(f"temperature: expected a number > 0, got {self.temperature!r}")
        if not _whole(self.steps) or not 1 <= int(self.steps) <= self.max_steps:
            raise InputError(f"steps: expected an integer in [1, {self.max_steps}], got {self.steps!r}")
        if not _whole(self.seed):
            raise InputError(f"seed: expected an integer, got {self.seed!r}")
        if self.size is not None and (not _whole(self.size) or not 8 <= int(self.size) <= 2048):
            raise InputError(f"size: expected an integer in [8, 2048] pixels, got {self.size!r}")

    def layer_spec(self) -> str | dict[str, Any] | None:
        """``layers`` parsed like ``stylekit transfer --layers`` (None for empty)."""
        import argparse

        from stylekit.cli import layers_spec

        if self.layers is None or not str(self.layers).strip():
            return None
        try:
            return layers_spec(str(self.layers))
        except argparse.ArgumentTypeError as error:
            raise InputError(f"layers: {error}") from None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _whole(value: Any) -> bool:
    return _finite(value) and float(value) == int(value)


@dataclass
class TransferResult:
    """What a transfer returns: stylized images (one per style), the content at the output size, files."""

    images: list[Image.Image]
    content: Image.Image
    paths: list[Path]
    seconds: float


class ModelCache:
    """Style-injection pipelines shared by every tab, loaded on first use, at most ``capacity`` at once.

    Thread-safe: loading happens under one lock, and each pipeline has its own lock that callers hold
    while running it (a pipeline swaps attention processors during a call, so calls must not overlap).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N``; None = CUDA when available, else CPU.
        dtype: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp16``, ``bf16`` or ``fp32``.
        capacity: models kept loaded (least recently used dropped first).
        inversion_cache_bytes: memory bound of each pipeline's inversion cache.
    """

    def __init__(
        self,
        device: str | None = None,
        dtype: str = "auto",
        capacity: int = 1,
        inversion_cache_bytes: int = 1 << 30,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity: expected an integer >= 1, got {capacity}")
        self.requested_device = device
        self.dtype_name = dtype
        self.capacity = capacity
        self.inversion_cache_bytes = inversion_cache_bytes
        self._models: OrderedDict[str, tuple[Any, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0

    def device(self) -> Any:
        """The ``torch.device`` models run on."""
        import torch

        if self.requested_device is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.requested_device)
        except (RuntimeError, ValueError):
            raise InputError(f"device: expected cpu, cuda or cuda:N, got {self.requested_device!r}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(f"device: {self.requested_device!r} requested but no CUDA GPU is available")
        return device

    def get(self, name: str) -> tuple[Any, threading.Lock]:
        """The pipeline for ``name`` and its call lock, loading it on first use."""
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            from stylekit.cache import InversionCache
            from stylekit.cli import load_model, resolve_dtype

            device = self.device()
            pipe = load_model(name, device, resolve_dtype(self.dtype_name, device))
            pipe.set_progress_bar_config(disable=False, leave=False)  # seen by gr.Progress(track_tqdm=True)
            pipe.inversion_cache = InversionCache(max_memory_bytes=self.inversion_cache_bytes)
            self.loads += 1
            while len(self._models) >= self.capacity:
                self._models.popitem(last=False)
                _free_accelerator_memory()
            self._models[name] = (pipe, threading.Lock())
            return self._models[name]

    def loaded(self) -> list[str]:
        """Names of the models loaded now, least recently used first."""
        with self._lock:
            return list(self._models)

    def clear(self) -> None:
        """Drop every loaded model."""
        with self._lock:
            self._models.clear()
        _free_accelerator_memory()


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Engine:
    """Every action of the app, independent of Gradio.

    Args:
        output_dir: where result PNGs are written (one subfolder per request).
        models: the shared :class:`ModelCache` (a new one if None).
        default_model: model used when a request names none.
        max_steps: upper bound on ``steps`` per request.
        extractor_path: a saved ``StyleExtractor`` folder; None = the bundled one.
    """

    def __init__(
        self,
        output_dir: str | Path,
        models: ModelCache | None = None,
        default_model: str | None = None,
        max_steps: int = 100,
        extractor_path: str | Path | None = None,
    ) -> None:
        from stylekit.cli import default_model as cli_default_model

        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.models = models or ModelCache()
        self.default_model = default_model or cli_default_model()
        self.max_steps = max_steps
        self.extractor_path = Path(extractor_path) if extractor_path is not None else None
        self._extractor: Any = None
        self._extractor_lock = threading.Lock()
        self._folder_embeddings: dict[tuple, tuple[list[Path], Any]] = {}
        self._masker: Any = None

    # ------------------------------------------------------------------------------------- requests
    def request(self, **settings: Any) -> TransferRequest:
        """A validated :class:`TransferRequest`; an empty ``model`` means the default model."""
        model = str(settings.pop("model", None) or "").strip() or self.default_model
        return TransferRequest(model=model, max_steps=self.max_steps, **settings)

    # ------------------------------------------------------------------------------------- transfer
    def transfer(self, content: Any, styles: Sequence[Any], request: TransferRequest) -> TransferResult:
        """Stylize ``content`` with each style (one output per style).

        Args:
            content: an image (path, PIL, array).
            styles: 1..``MAX_STYLES`` style images.
            request: the settings.

        Raises:
            InputError / InputImageError: bad input, before any model is loaded.
        """
        from stylekit.images import load_image

        content_image = load_image(_required(content, "content"), "content")
        styles = [s for s in styles if s is not None]
        if not 1 <= len(styles) <= MAX_STYLES:
            raise InputError(f"style: expected 1 to {MAX_STYLES} style images, got {len(styles)}")
        style_images = [load_image(style, f"style[{i}]") for i, style in enumerate(styles)]
        layers = request.layer_spec()
        started = time.perf_counter()
        pipe, lock, size = self._pipeline(request, layers)
        with lock:
            output = pipe(
                content_image=content_image, style=style_images, **self._call_kwargs(request, layers, size)
            )
        images = list(output.images)
        return self._result(
            images, content_image, size, request, [f"style_{i}" for i in range(len(images))], started
        )

    def regions(
        self,
        content: Any,
        regions: Sequence[tuple[Any, Any]],
        request: TransferRequest,
        feather: int = 0,
        context: float = 0.0,
    ) -> TransferResult:
        """Style each region of ``content`` with its own style; outside every region the content is kept.

        All regions are styled in one pipeline call with masked ``StyleCondition``s
        (``stylekit.regions.RegionalStyle``: each style attends within its region, overlaps blend).

        Args:
            content: an image.
            regions: 1..``MAX_REGIONS`` pairs (mask, style image); a mask is any image/array at any size
                (fitted like the content), white (>= 0.5) = styled.
            feather: inward edge softening in output pixels (>= 0).
            context: ``region_context`` in [0, 1] (1 = each style's whole-image transfer merged in pixels:
                the setting for small regions).
        """
        from stylekit.conditioning import StyleCondition
        from stylekit.images import load_image
        from stylekit.regions import MaskSpec

        content_image = load_image(_required(content, "content"), "content")
        regions = [(m, s) for m, s in regions if m is not None or s is not None]
        if not 1 <= len(regions) <= MAX_REGIONS:
            raise InputError(f"regions: expected 1 to {MAX_REGIONS} (mask, style) pairs, got {len(regions)}")
        if not _whole(feather) or int(feather) < 0:
            raise InputError(f"feather: expected an integer >= 0, got {feather!r}")
        if isinstance(context, bool) or not isinstance(context, (int, float)) or not 0 <= context <= 1:
            raise InputError(f"context: expected a number in [0, 1], got {context!r}")
        masks, style_images = [], []
        for i, (mask, style) in enumerate(regions):
            if mask is None:
                raise InputError(f"regions[{i}].mask: expected a mask image for this region's style")
            if style is None:
                raise InputError(f"regions[{i}].style: expected a style image for this region's mask")
            masks.append(_mask_array(mask, f"regions[{i}].mask"))
            style_images.append(load_image(style, f"regions[{i}].style"))
        layers = request.layer_spec()
        started = time.perf_counter()
        pipe, lock, size = self._pipeline(request, layers)
        kwargs = self._call_kwargs(request, layers, size)
        with lock:
            conditions = [
                StyleCondition(image=style, mask=MaskSpec(mask, feather=int(feather)))
                for mask, style in zip(masks, style_images, strict=True)
            ]
            image = pipe(
                content_image=content_image, style=conditions, region_context=float(context), **kwargs
            ).images[0]
        extra = {"feather": int(feather), "context": float(context), "regions": len(masks)}
        return self._result([image], content_image, size, request, ["regions"], started, extra)

    def _pipeline(self, request: TransferRequest, layers: Any) -> tuple[Any, threading.Lock, tuple[int, int]]:
        from stylekit.cli import check_layers, output_size

        pipe, lock = self.models.get(request.model)
        check_layers(pipe, layers)
        size = output_size(pipe, request.size, request.size)
        return pipe, lock, size

    def _call_kwargs(self, request: TransferRequest, layers: Any, size: tuple[int, int]) -> dict[str, Any]:
        return {
            "gamma": float(request.gamma),
            "temperature": float(request.temperature),
            "layers": layers,
            "num_inference_steps": int(request.steps),
            "height": size[0],
            "width": size[1],
        }

    def _result(
        self,
        images: list[Image.Image],
        content: Image.Image,
        size: tuple[int, int],
        request: TransferRequest,
        names: list[str],
        started: float,
        extra: dict[str, Any] | None = None,
    ) -> TransferResult:
        """Write the images (PNG text: the request's settings, the size and ``extra``) and time the call."""
        from stylekit.images import fit_to_size

        folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        parameters = {key: value for key, value in asdict(request).items() if key != "max_steps"}
        paths = []
        for image, name in zip(images, names, strict=True):
            path = folder / f"{name}.png"
            settings = {**parameters, "height": size[0], "width": size[1], **(extra or {})}
            write_png_atomic(image, path, png_text(settings))
            paths.append(path)
        return TransferResult(
            images, fit_to_size(content, size[1], size[0]), paths, time.perf_counter() - started
        )

    # ------------------------------------------------------------------------------------- extractor
    def extractor(self) -> Any:
        """The style extractor (the bundled one unless ``extractor_path``), loaded once."""
        with self._extractor_lock:
            if self._extractor is None:
                from stylekit.extractors import StyleExtractor, load_default

                if self.extractor_path is None:
                    self._extractor = load_default()
                else:
                    self._extractor = StyleExtractor.from_pretrained(self.extractor_path).eval()
            return self._extractor

    def similarity(self, images: Sequence[Any]) -> np.ndarray:
        """(N, N) cosine similarity of the extractor's style embeddings of 2..64 images, in [-1, 1]."""
        from stylekit.images import load_image

        images = [image for image in images if image is not None]
        if not 2 <= len(images) <= 64:
            raise InputError(f"images: expected 2 to 64 images to compare, got {len(images)}")
        loaded = [load_image(image, f"images[{i}]") for i, image in enumerate(images)]
        embeddings = self.extractor().embed(loaded, progress=False)
        return (embeddings @ embeddings.T).clamp(-1.0, 1.0).numpy()

    def nearest(self, query: Any, folder: str | Path, k: int = 8) -> list[tuple[Path, float]]:
        """The ``k`` images of ``folder`` whose style is nearest ``query``'s, best first, with cosine scores.

        The folder's embeddings are computed once and reused until its files change.
        """
        from stylekit.images import load_image

        if not _whole(k) or not 1 <= int(k) <= MAX_SEARCH_RESULTS:
            raise InputError(f"k: expected an integer in [1, {MAX_SEARCH_RESULTS}], got {k!r}")
        query_image = load_image(_required(query, "query"), "query")
        paths, database = self._folder(Path(folder))
        extractor = self.extractor()
        scores = (database @ extractor.embed([query_image], progress=False)[0]).numpy()
        order = np.argsort(-scores, kind="stable")[: int(k)]
        return [(paths[i], float(scores[i])) for i in order]

    def _folder(self, folder: Path) -> tuple[list[Path], Any]:
        files, _ = expand_paths([folder], "folder")
        key = (str(folder.resolve()), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files))
        if key not in self._folder_embeddings:
            from stylekit.images import InputImageError, load_image

            usable, images = [], []
            for path in files:
                try:
                    images.append(load_image(path, "folder image"))
                    usable.append(path)
                except InputImageError:
                    continue  # unreadable files in a gallery folder are skipped, not fatal
            if not images:
                raise InputError(f"folder: no readable image in {folder}")
            self._folder_embeddings = {key: (usable, self.extractor().embed(images, progress=False))}
        return self._folder_embeddings[key]

    def lora(
        self,
        content: Any,
        style: Any,
        adapters: Sequence[str | Path],
        weights: Sequence[float],
        request: TransferRequest,
    ) -> TransferResult:
        """StyleID with trained LoRA adapters (``stylekit.lora_style.LoRAStyle``) composed in one call.

        Args:
            content: an image; style: a style reference image, or None to use the content itself (the
                adapters then carry the style).
            adapters: 1..``MAX_STYLES`` diffusers-format LoRA ``.safetensors`` files or folders.
            weights: one weight per adapter (empty: 1.0 each).

        The adapters are loaded into the shared pipeline for this call only and removed afterwards.
        """
        from stylekit.capabilities import require
        from stylekit.images import load_image

        lora_style = require("lora")
        content_image = load_image(_required(content, "content"), "content")
        style_image = load_image(style, "style") if style is not None else content_image
        adapters = [Path(a) for a in adapters if a]
        if not 1 <= len(adapters) <= MAX_STYLES:
            raise InputError(
                f"adapters: expected 1 to {MAX_STYLES} LoRA .safetensors files, got {len(adapters)}"
            )
        weights = list(weights) or [1.0] * len(adapters)
        if len(weights) != len(adapters):
            raise InputError(
                f"weights: expected one weight per adapter ({len(adapters)}), got {len(weights)}"
            )
        conditioner = lora_style.LoRAStyle(
            adapters={
                f"adapter_{i}": (path, float(w))
                for i, (path, w) in enumerate(zip(adapters, weights, strict=True))
            }
        )
        layers = request.layer_spec()
        started = time.perf_counter()
        pipe, lock, size = self._pipeline(request, layers)
        with lock:
            output = pipe(
                content_image=content_image,
                style=style_image,
                conditioners=[conditioner],
                **self._call_kwargs(request, layers, size),
            )
        extra = {"adapters": [path.name for path in adapters], "adapter_weights": [float(w) for w in weights]}
        return self._result(list(output.images), content_image, size, request, ["lora"], started, extra)

    # ------------------------------------------------------------------------------------- SAM / video
    def mask_from_points(
        self, image: Any, points: Sequence[tuple[int, int]], labels: Sequence[int]
    ) -> np.ndarray:
        """A (H, W) bool mask from clicked points with SAM: label 1 = include, 0 = exclude, 2 = a box corner
        (two corner clicks make a box prompt).

        Uses ``stylekit.segment.SamMasker`` (weights from ``$STYLEKIT_SAM_CHECKPOINT``), built once.

        Raises:
            CapabilityUnavailable: SAM regions are not installed; FileNotFoundError: no checkpoint;
            InputError: no points.
        """
        from stylekit.capabilities import require
        from stylekit.images import load_image

        segment = require("segment")
        if not points:
            raise InputError("points: click at least one point (or two box corners) on the content image")
        content = load_image(_required(image, "content"), "content")
        with self._extractor_lock:
            if self._masker is None:
                self._masker = segment.SamMasker()
            masker = self._masker
        include = [p for p, label in zip(points, labels, strict=True) if label == 1]
        exclude = [p for p, label in zip(points, labels, strict=True) if label == 0]
        corners = [p for p, label in zip(points, labels, strict=True) if label == 2]
        if len(corners) not in (0, 2):
            raise InputError(f"box: expected two corner clicks, got {len(corners)}")
        box = None
        if corners:
            (x0, y0), (x1, y1) = corners
            box = (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))
        mask = masker.predict(content, points=include, negative_points=exclude, box=box)
        return np.asarray(mask, dtype=bool)

    def video(self, clip: Any, style: Any, frames: int, window: int, model: str | None, steps: int) -> Path:
        """Restyle ``clip`` with ``style`` through ``stylekit video`` (``stylekit.video_cli.main``); the mp4 path.

        Raises:
            CapabilityUnavailable: video is not installed; InputError: the command refused the input.
        """
        from stylekit.capabilities import require

        video_cli = require("video")
        if clip is None:
            raise InputError("clip: expected a video file, got none")
        if style is None:
            raise InputError("style: expected a style image, got none")
        if not _whole(steps) or not 1 <= int(steps) <= self.max_steps:
            raise InputError(f"steps: expected an integer in [1, {self.max_steps}], got {steps!r}")
        pipe, lock = self.models.get(model or self.default_model)  # the model every tab shares
        folder = self.output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        output = folder / "video.mp4"
        window = int(window)
        argv = [str(clip), "--style", str(style), "-o", str(output), "--device", str(pipe.device)]
        argv += [
            "--steps",
            str(int(steps)),
            "--window",
            str(window),
            "--overlap",
            str(min(max(1, window // 4), window - 1)),
        ]
        argv += ["--max-frames", str(int(frames)), "--quiet"]
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr), lock:
            try:
                code = int(video_cli.main(argv, base_pipeline=pipe) or 0)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
        if code != 0:
            lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
            message = (
                re.sub(r"^stylekit( video)?: error: ", "", lines[-1]) if lines else f"exit status {code}"
            )
            raise (InputError if code == 2 else RuntimeError)(message)
        return output

    def describe(self) -> dict[str, Any]:
        """Settings and state, for the app's footer and logs."""
        return {
            "default_model": self.default_model,
            "loaded_models": self.models.loaded(),
            "output_dir": str(self.output_dir),
            "max_steps": self.max_steps,
        }

    def __repr__(self) -> str:
        return f"Engine({json.dumps(self.describe())})"


def _required(value: Any, argument: str) -> Any:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{argument}: expected an image, got none")
    return value


def _mask_array(mask: Any, argument: str) -> np.ndarray:
    """A mask file/image/array as a (H, W) float {0, 1} array, read by the library's rules
    (``stylekit.regions.mask_array``: alpha when the image has transparency, else luminance >= 50 %);
    raises ``InputError`` if unreadable or empty."""
    from stylekit.regions import mask_array

    try:
        values = mask_array(mask, argument=argument)
    except (ValueError, TypeError, OSError) as error:
        raise InputError(str(error)) from None
    if not values.any():
        raise InputError(
            f"{argument}: the mask is empty; expected white (>= 50%) or opaque pixels where the style applies"
        )
    return values.astype(np.float32)
