"""The benchmarks run end to end on a reduced setting (tiny-sd): output format and anchors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from stylekit.metrics import RELIABLE_IOU

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _one_json_line(capsys) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return json.loads(lines[0])


def test_transfer_quality_reduced(capsys, tmp_path):
    bench = _load("transfer_quality")
    grid = tmp_path / "grid.png"
    bench.main(["--model", "tiny-sd", "--pairs", "4", "--steps", "3", "--out-grid", str(grid)])
    report = _one_json_line(capsys)
    assert report["benchmark"] == "transfer_quality" and report["pairs"] == 4
    assert set(report["rows"]) == set(bench.ROWS + bench.REFERENCE_ROWS)
    for row in report["rows"].values():
        for key in ("style_score", "content_iou", "edge_ssim", "extractor_style_score"):
            assert 0.0 <= row[key] <= 1.0
    identity = report["rows"]["identity"]
    assert identity["style_score"] == 0.0 and identity["edge_ssim"] == 1.0
    assert identity["extractor_style_score"] == 0.0  # the output is the content: d_c = 0
    # the world renders the content in the target style: the extractor puts it next to the style image
    assert report["rows"]["oracle"]["extractor_style_score"] > 0.5
    assert identity["content_iou"] >= RELIABLE_IOU  # content images are kept only if readable
    assert set(report["targets"]) >= {
        "styleid_beats_ablations_hmean",
        "styleid_style_ge_0.5",
        "styleid_iou_ge_0.7",
    }
    assert grid.stat().st_size > 0


def test_transfer_quality_layer_options():
    bench = _load("transfer_quality")
    assert bench.parse_layers("up1+up2") == {"up": {"block_1": True, "block_2": True}}
    assert bench.parse_layers("styleid") == "styleid"
    assert bench.layers_label({"up": {"block_1": True, "block_2": True}}) == "up1+up2"
    labels = [bench.layers_label(c) for c in bench.sweep_candidates([1, 2, 3])]
    assert sorted(labels) == ["all", "up1", "up1+up2", "up1+up2+up3", "up2", "up2+up3", "up3"]
    assert bench.parse_layers("all") == {"down": True, "mid": True, "up": True}
    with pytest.raises(SystemExit):
        bench.main(["--model", "tiny-sd", "--pairs", "1", "--rows", "nope"])


def test_transfer_quality_layer_sweep(capsys):
    bench = _load("transfer_quality")
    bench.main(["--model", "tiny-sd", "--pairs", "1", "--steps", "2", "--rows", "styleid", "--layers-sweep"])
    report = _one_json_line(capsys)
    assert set(report["rows"]) == {"styleid"}
    # tiny-sd has self-attention in up blocks 1-3; the default layers (up2+up3) reuse the styleid row
    assert len(report["layer_sweep"]) == 7
    assert report["layer_sweep"]["up2+up3"]["same_as"] == "styleid"


def test_mini_quality_reduced(capsys):
    bench = _load("mini_quality")
    bench.main(["--model", "tiny-sd", "--n-vae", "4", "--n-gen", "4", "--steps", "2", "--probe-steps", "2"])
    report = _one_json_line(capsys)
    assert report["benchmark"] == "mini_quality"
    for key in ("vae_psnr_db", "content_probe_ratio", "style_probe_ratio"):
        assert isinstance(report[key], float)
    for kind in ("content_probe", "style_probe"):
        assert set(report[kind]) >= {"real", "vae", "generated", "ratio", "chance"}
    assert set(report["targets"]) == {
        "vae_psnr_ge_28",
        "content_probe_ratio_ge_0.7",
        "style_probe_ratio_ge_0.7",
    }


def test_style_tokens_scale_option():
    """``--scale``: a number, a preset or a JSON block dict; an unknown preset is refused by argparse."""
    bench = _load("style_tokens")
    assert bench._scale("0.5") == 0.5
    assert bench._scale("style-only") == "style-only"
    assert bench._scale('{"up": {"block_2": 1}}') == {"up": {"block_2": 1}}
    with pytest.raises(SystemExit):  # argparse refuses it, before any model work
        bench.main(["--model", "no-such-model", "--scale", "nope"])


def test_lora_speed_reduced(capsys):
    """Each method trains in its own process and is timed again in-process on the trainer's own LoRA layout:
    B4M trains half of plain's entries (the same blocks, half of each projection frozen)."""
    _load("lora_speed").main(["--model", "tiny-sd", "--steps", "2", "--size", "32", "--step-rounds", "2"])
    report = _one_json_line(capsys)
    plain, b4m = report["plain"], report["b4m"]
    assert plain["speed_ratio"] == plain["step_speed_ratio"] == 1.0
    assert b4m["trainable_params"] == b4m["frozen_params"] == plain["trainable_params"] // 2
    assert b4m["optimizer_state_numel"] == 2 * b4m["trainable_params"]
    for method in ("blora", "b4m"):
        assert report[method]["step_ms"] > 0
        assert report["step_speed_ratio"][method] == report[method]["step_speed_ratio"] > 0
        assert report["peak_memory_ratio"][method] == report[method]["peak_memory_ratio"] > 0
    assert report["step_control_ratio"] > 0


def test_video_speed_reduced(capsys):
    """Ours inverts the frames and samples (2 x steps UNet calls), stock samples with CFG (steps calls)."""
    _load("video_speed").main(
        ["--frames", "4", "--window", "4", "--steps", "2", "--size", "32", "--repeats", "1"]
        + ["--memory-runs", "1", "--memory-size", "32"]
    )
    report = _one_json_line(capsys)
    assert report["device"] == "cpu"
    assert report["unet_calls"]["ours"] == 4 and report["unet_calls"]["stock"] == 2
    assert report["fps_ratio"] == pytest.approx(report["fps"] / report["fps_stock"], rel=0.01)
    assert report["memory_1x_window_mb"] > 0 and report["memory_ratio_4x_window"] > 0


def test_video_speed_refuses_a_device_this_machine_lacks():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit) as exit_info:
        _load("video_speed").main(["--device", "cuda"])
    assert exit_info.value.code == 2
