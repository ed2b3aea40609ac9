"""Peak memory of one region of a run (e.g. a training loop, after the model is loaded and data cached).

CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``, reset at ``start``). CPU on Linux:
the process's resident high-water mark (``VmHWM``), reset to the current resident size at ``start`` by
writing ``5`` to ``/proc/self/clear_refs``. Elsewhere nothing is measured (``stop`` returns None).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1)) * 1024


class RegionPeakMemory:
    """``start()`` before the region, ``stop()`` after: ``{"peak_bytes", "growth_bytes", "kind"}`` (growth =
    peak - the memory in use at ``start``), or None where it cannot be measured."""

    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self._baseline: int | None = None

    def start(self) -> None:
        try:
            if self.cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                self._baseline = torch.cuda.memory_allocated()
            else:
                _CLEAR_REFS.write_text("5")  # VmHWM := current RSS
                self._baseline = _status_kb("VmRSS")
        except OSError:
            self._baseline = None

    def stop(self) -> dict[str, int | str] | None:
        if self._baseline is None:
            return None
        if self.cuda:
            torch.cuda.synchronize()
            peak, kind = torch.cuda.max_memory_allocated(), "cuda_allocated"
        else:
            peak, kind = _status_kb("VmHWM"), "cpu_rss"
        return {"peak_bytes": peak, "growth_bytes": max(peak - self._baseline, 0), "kind": kind}
