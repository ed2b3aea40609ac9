"""benchmarks/lora_quality.py on a reduced setting (tiny-sd): output format, its subject detector on real renders,
and a B-LoRA split given on the command line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from stylekit.lora import block_of, read_lora

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "lora_quality.py"


def test_lora_quality_reduced(capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("_bench_lora_quality", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        ["--model", "tiny-sd", "--methods", "blora,b4m", "--train-steps", "2", "--n-train", "2", "--n", "2"]
        + ["--style-train-steps", "2"]
        + ["--steps", "2", "--probe-steps", "2", "--detector-n", "300", "--detector-val", "200"]
        + ["--content-blocks", "up_blocks.2.attentions.0", "--style-start", "0.5", "--work", str(tmp_path)]
        + ["--b4m-make-precondition"]
    )
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    report = json.loads(lines[0])
    assert (
        report["benchmark"] == "lora_quality" and report["subject_shape"] == 5
    )  # hexagon: near circle / pentagon
    # the detector reads held-out real renders (any style, style B included) and the subject's own images
    detector = report["subject_detector"]
    assert detector["real_subject_recall"] >= 0.9, detector
    assert detector["real_other_false_positive"] <= 0.1, detector
    assert detector["subject_images_recall"] == 1.0 and detector["reliable"] is True, detector
    assert set(report["base"]) == {"content_acc", "content_acc_probe", "style_score"}
    assert set(report["methods"]) == {"blora", "b4m"}
    assert report["blora_blocks"] == {"content": "up_blocks.2.attentions.0", "style": "preset"}
    assert report["methods"]["blora"]["lr"] == 3e-3 and report["methods"]["b4m"]["lr"] == 1e-2  # per method
    assert report["methods"]["b4m"]["train_steps"] == 2  # the flag overrides both methods' defaults
    assert report["b4m_make_precondition"] is True
    assert report["blora_style_run"] == {
        "content_blocks": "mid_block.attentions.0,up_blocks.1.attentions.*",  # the default: attention only
        "lr": 0.01,
        "train_steps": 2,
        "composed_style_steps": [0.5, 1.0],
    }
    style_run = read_lora(tmp_path / "blora" / "s" / "content")
    assert {block_of(key) for key in style_run} == {
        "mid_block.attentions.0",
        *(f"up_blocks.1.attentions.{i}" for i in range(3)),
    }
    assert report["methods"]["b4m"]["prompts"]["composed"] == "a [v] on [s] paper"  # its own words per set
    content = read_lora(tmp_path / "blora" / "c" / "content")
    assert {block_of(key) for key in content} == {"up_blocks.2.attentions.0"}  # the flag reached training
    assert "subject_both_halves_content_acc" in report["methods"]["blora"]
    assert not any(key.startswith("subject_both") for key in report["methods"]["b4m"])
    for row in report["methods"].values():
        for prefix in ("composed", "content_only", "style_only"):
            for key in ("content_acc", "content_acc_probe", "style_score"):
                assert 0.0 <= row[f"{prefix}_{key}"] <= 1.0


def test_style_run_steps_follow_the_subject_run_unless_given():
    spec = importlib.util.spec_from_file_location("_bench_lora_quality", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    default_steps = bench.METHOD_RECIPES["blora"][0]

    def steps(*flags: str) -> int:
        return bench.style_run_steps(bench.parse_args(list(flags)))

    assert steps() == default_steps // 2
    assert steps("--train-steps", "50") == 25
    assert steps("--train-steps", "50", "--style-train-steps", "7") == 7
