"""Content-addressed cache of inversions (latent trajectories and attention features).

A key hashes everything the cached tensors depend on: the image's pixels after preprocessing,
the model identity, the scheduler config, the number of steps, the layers, the dtype, the
resolution, the image's role (content/style), the strategy and the timing variant. Entries live in a
bounded in-memory LRU and, optionally, on disk as safetensors files written atomically (temp file +
rename) with a SHA-256 of their tensors in the metadata. A truncated or corrupted file is detected,
reported with a warning, deleted and recomputed by the caller -- never returned.

Strategies:
- ``features``: content Q and style K/V of the targeted layers at every step (fp16 on CUDA) + the
  start latent. Sampling then needs only the stylized row: N UNet evaluations per image.
- ``trajectory``: only the inversion latents (N x 4 x h x w). Features are recomputed during sampling
  by running the reference latents in the same batch: tiny storage, ~2 extra batch rows per step.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from stylekit.files import atomic_path

if TYPE_CHECKING:  # torch is imported where tensors are handled, so `stylekit --help` starts without it
    import torch

STRATEGIES = ("features", "trajectory")


def save_file(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
    """``safetensors.torch.save_file``, imported when first used."""
    from safetensors.torch import save_file as save

    save(tensors, path, metadata=metadata)


def load_file(path: str) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file``, imported when first used."""
    from safetensors.torch import load_file as load

    return load(path)


@dataclass(frozen=True)
class CacheKey:
    """Everything an inversion depends on. ``digest`` is the content address."""

    image_sha256: str
    model: str
    scheduler: str
    steps: int
    layers: tuple[str, ...]
    dtype: str
    resolution: tuple[int, int]
    role: str
    strategy: str
    timing: str

    @property
    def digest(self) -> str:
        payload = json.dumps(asdict(self), sort_keys=True, default=list)
        return hashlib.sha256(payload.encode()).hexdigest()


def image_digest(pixels: torch.Tensor) -> str:
    """SHA-256 of a preprocessed image tensor's bytes (shape and dtype included)."""
    array = pixels.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tuple(array.shape)}|{array.dtype}".encode())
    digest.update(array.numpy().tobytes())
    return digest.hexdigest()


def scheduler_digest(config: Any) -> str:
    """Stable hash of a scheduler config (private ``_``-prefixed entries ignored)."""
    clean = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _nbytes(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


class InversionCache:
    """In-memory LRU (bounded by bytes) in front of an optional safetensors folder.

    Args:
        directory: folder for ``<digest>.safetensors`` files; None = memory only.
        max_memory_bytes: the in-memory bound; the least recently used entries are dropped past it.
            In-memory entries stay on the device they were computed on (a GPU-resident cache on CUDA,
            so a cached call copies nothing), disk entries are written from CPU copies.

    ``stats`` counts ``hits``, ``misses``, ``disk_hits`` and ``recovered`` (corrupt entries dropped).
    """

    def __init__(self, directory: str | Path | None = None, max_memory_bytes: int = 4 << 30) -> None:
        self.directory = Path(directory) if directory is not None else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        self.max_memory_bytes = int(max_memory_bytes)
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self.stats = {"hits": 0, "misses": 0, "disk_hits": 0, "recovered": 0}

    def path_for(self, key: CacheKey) -> Path | None:
        return None if self.directory is None else self.directory / f"{key.digest}.safetensors"

    def get(self, key: CacheKey) -> dict[str, torch.Tensor] | None:
        """The cached tensors for ``key`` (on the device they were stored from, or CPU from disk), or None."""
        digest = key.digest
        with self._lock:
            if digest in self._memory:
                self._memory.move_to_end(digest)
                self.stats["hits"] += 1
                return self._memory[digest]
        path = self.path_for(key)
        if path is not None and path.exists():
            tensors = self._read(path, digest)
            if tensors is not None:
                self._remember(digest, tensors)
                with self._lock:
                    self.stats["hits"] += 1
                    self.stats["disk_hits"] += 1
                return tensors
        with self._lock:
            self.stats["misses"] += 1
        return None

    def put(self, key: CacheKey, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` under ``key`` in memory and, if configured, on disk."""
        tensors = {name: t.detach().contiguous() for name, t in tensors.items()}
        digest = key.digest
        self._remember(digest, tensors)
        path = self.path_for(key)
        if path is not None:
            tensors = {name: t.to("cpu") for name, t in tensors.items()}
            metadata = {"key": json.dumps(asdict(key), default=list), "sha256": _tensors_sha256(tensors)}
            with atomic_path(path) as temp:
                save_file(tensors, str(temp), metadata=metadata)

    def clear(self) -> int:
        """Drop every entry (memory and disk); returns the number of files removed."""
        with self._lock:
            self._memory.clear()
            self._memory_bytes = 0
        removed = 0
        if self.directory is not None:
            for file in self.directory.glob("*.safetensors"):
                file.unlink(missing_ok=True)
                removed += 1
        return removed

    def _remember(self, digest: str, tensors: dict[str, torch.Tensor]) -> None:
        size = _nbytes(tensors)
        with self._lock:
            if digest in self._memory:
                self._memory_bytes -= _nbytes(self._memory.pop(digest))
            if size > self.max_memory_bytes:
                return
            self._memory[digest] = tensors
            self._memory_bytes += size
            while self._memory_bytes > self.max_memory_bytes:
                _, dropped = self._memory.popitem(last=False)
                self._memory_bytes -= _nbytes(dropped)

    def _read(self, path: Path, digest: str) -> dict[str, torch.Tensor] | None:
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            tensors = load_file(str(path))
            stored_key = json.loads(metadata.get("key", "{}"))
            if (
                CacheKey(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored_key.items()}).digest
                != digest
            ):
                raise ValueError("the entry's key does not match its file name")
            if metadata.get("sha256") != _tensors_sha256(tensors):
                raise ValueError("checksum mismatch")
            return tensors
        except (SafetensorError, OSError, ValueError, TypeError, json.JSONDecodeError, RuntimeError) as error:
            warnings.warn(
                f"stylekit cache: dropping corrupt entry {path.name} ({error}); it will be recomputed",
                stacklevel=3,
            )
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            with self._lock:
                self.stats["recovered"] += 1
            return None
