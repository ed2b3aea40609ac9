"""RegionPeakMemory: the peak of a region, not of the process so far."""

from __future__ import annotations

import sys

import pytest
import torch

from stylekit.training.memory import RegionPeakMemory

MB = 2**20


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="CPU peak via /proc (Linux)")
def test_cpu_region_peak_is_reset_at_start():
    before = torch.ones(256 * MB // 4)  # a peak *before* the region must not count
    del before
    memory = RegionPeakMemory("cpu")
    memory.start()
    quiet = memory.stop()
    memory.start()
    inside = torch.ones(64 * MB // 4)
    del inside
    busy = memory.stop()
    assert quiet is not None and busy is not None and busy["kind"] == "cpu_rss"
    assert quiet["growth_bytes"] < 32 * MB
    assert 60 * MB <= busy["growth_bytes"] < 200 * MB
    assert busy["peak_bytes"] >= busy["growth_bytes"]


def test_not_started_measures_nothing():
    assert RegionPeakMemory("cpu").stop() is None
