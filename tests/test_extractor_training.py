"""Extractor training: config files and flags, grid batches, checkpoint/resume, 1- vs 2-process runs."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stylekit.extractors import StyleExtractor
from stylekit.extractors.data import grid_batch
from stylekit.extractors.train import TrainConfig, parse_args, resolve_checkpoint, train

TINY = [
    "--max_steps",
    "4",
    "--n_styles",
    "4",
    "--n_contents",
    "4",
    "--render_size",
    "32",
    "--crop",
    "24",
    "--widths",
    "8,16",
    "--pooled_stages",
    "0,1",
    "--embed_dim",
    "16",
    "--head_hidden",
    "16",
    "--checkpointing_steps",
    "2",
    "--log_every",
    "1",
    "--threads",
    "1",
    "--progress",
    "false",
    "--hard_negative_weight",
    "0.5",
    "--report_to",
    "none",
]


def _losses(output_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (output_dir / "log.jsonl").read_text().splitlines()]


def test_config_file_toml_yaml_and_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text(
        'max_steps = 7\nwidths = [8, 16]\npooled_stages = [0, 1]\ncontent_head = false\nsplit = "factor"\n'
    )
    config = parse_args(["--config", str(toml), "--max_steps", "9", "--crop", "none"])
    assert config.max_steps == 9 and config.widths == (8, 16) and not config.content_head
    assert config.split == "factor" and config.crop is None
    yaml = tmp_path / "c.yaml"
    yaml.write_text("n_styles: 3\ntemperature: 0.2\n")
    config = parse_args(["--config", str(yaml), "--content_head", "true"])
    assert config.n_styles == 3 and config.temperature == 0.2 and config.content_head
    bad = tmp_path / "bad.toml"
    bad.write_text("max_step = 3\n")
    with pytest.raises(ValueError, match=r"unknown options \['max_step'\]"):
        parse_args(["--config", str(bad)])
    with pytest.raises(ValueError, match="n_styles"):
        TrainConfig(n_styles=1)


def test_grid_batch_positives_and_hard_negatives():
    batch = grid_batch(0, 5, n_styles=3, n_contents=4, size=32, crop=24)
    assert batch.pixels.shape == (12, 3, 24, 24)
    styles = batch.style_ids.view(3, 4)
    assert (styles == styles[:, :1]).all() and len(set(styles[:, 0].tolist())) == 3  # rows: one style each
    contents = batch.content_ids.view(3, 4)
    assert (contents == contents[:1]).all()  # columns: the same content in every style
    from stylekit.data import held_out_styles

    assert not set(batch.style_ids.tolist()) & set(held_out_styles("style"))  # train part only
    again = grid_batch(0, 5, 3, 4, 32, 24)
    assert torch.equal(again.pixels, batch.pixels)
    halves = [grid_batch(0, 5, 3, 4, 32, 24, rows=r) for r in ((0, 6), (6, 12))]
    assert torch.equal(torch.cat([h.pixels for h in halves]), batch.pixels)


def test_resume_from_latest_reproduces_uninterrupted_run(tmp_path):
    full = parse_args([*TINY, "--output_dir", str(tmp_path / "full")])
    summary = train(full)
    assert summary["num_processes"] == 1 and summary["step"] == 4
    assert (tmp_path / "full" / "extractor" / "model.safetensors").is_file()
    assert [p.name for p in sorted((tmp_path / "full").glob("checkpoint-*"))] == [
        "checkpoint-2",
        "checkpoint-4",
    ]
    # interrupted copy: only checkpoint-2 is complete, a half-written one must be ignored
    part = tmp_path / "part"
    part.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", part / "checkpoint-2")
    (part / "log.jsonl").write_text(
        "".join((tmp_path / "full" / "log.jsonl").read_text().splitlines(True)[:2])
    )
    (part / ".checkpoint-4.partial").mkdir()
    (part / "checkpoint-3").mkdir()  # no trainer_state.json: incomplete
    assert resolve_checkpoint(part, "latest") == part / "checkpoint-2"
    train(parse_args([*TINY, "--output_dir", str(part), "--resume_from_checkpoint", "latest"]))
    assert _losses(part) == pytest.approx(_losses(tmp_path / "full"), abs=1e-6)
    a = load_file(tmp_path / "full" / "extractor" / "model.safetensors")
    b = load_file(part / "extractor" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # refused before any work: a fresh run over these checkpoints, a resume with other training options or
    # past --max_steps (the limit deleted the new run's checkpoint; a changed --embed_dim failed in torch)
    full = [*TINY, "--output_dir", str(tmp_path / "full")]
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run .*--overwrite_output_dir"):
        train(parse_args(full))
    with pytest.raises(ValueError, match="checkpoint-4 was written with --embed_dim 16, this run has 32"):
        train(parse_args([*full, "--resume_from_checkpoint", "latest", "--embed_dim", "32"]))
    with pytest.raises(ValueError, match="at step 4, past --max_steps 2"):
        train(parse_args([*full, "--resume_from_checkpoint", "latest", "--max_steps", "2"]))
    train(parse_args([*full, "--overwrite_output_dir", "true", "--max_steps", "2", "--seed", "1"]))
    assert [p.name for p in sorted((tmp_path / "full").glob("checkpoint-*"))] == ["checkpoint-2"]


def test_option_types_and_values_are_checked():
    for options, message in (
        ({"content_head": "false"}, "content_head: expected true or false"),  # was read as true
        ({"max_steps": 1.5}, "max_steps: expected an integer"),
        ({"widths": {"a": 1}}, "widths: expected a list of integers"),
        ({"temperature": float("nan")}, "temperature: expected a number > 0"),
        ({"grad_clip": -1}, "grad_clip: expected a number >= 0"),
        ({"checkpoints_total_limit": -1}, "checkpoints_total_limit: expected an integer >= 0"),
        ({"split": "content_style"}, "split: expected a split of styles alone"),
        ({"stem": 3}, "stem: expected 2 or 4"),
        ({"extra": "abc"}, "extra: expected a mapping"),
        ({"n_styles": 514}, "n_styles: the train part of split 'style' has 513 styles"),  # hung before
        (
            {"supcon_weight": 0, "multilabel_weight": 0, "hard_negative_weight": 0, "token_weight": 0},
            "loss weights",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**options)
    strings = dict(temperature="0.2", max_steps="1e3", widths="8,16", pooled_stages="0,1", crop="none")
    config = TrainConfig(**strings)  # a config file's strings (YAML reads 1e3 as one)
    assert (config.temperature, config.max_steps, config.widths, config.crop) == (0.2, 1000, (8, 16), None)
    config = TrainConfig(output_dir=Path("runs/x"), pooled_stages=3, checkpoints_total_limit=0)
    assert (config.output_dir, config.pooled_stages, config.checkpoints_total_limit) == ("runs/x", (3,), 0)


@pytest.mark.skipif(
    shutil.which("accelerate") is None and not Path(sys.executable).with_name("accelerate").exists(),
    reason="accelerate CLI not installed",
)
def test_two_processes_follow_the_single_process_loss_curve(tmp_path):
    one = tmp_path / "one"
    train(
        parse_args(
            [*TINY, "--output_dir", str(one), "--checkpointing_steps", "100", "--report_to", "tensorboard"]
        )
    )
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((one / "logs").rglob("events.out.tfevents.*"))
    launcher = Path(sys.executable).with_name("accelerate")
    command = [
        str(launcher) if launcher.exists() else "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "stylekit.extractors.train",
        *TINY,
        "--output_dir",
        str(tmp_path / "two"),
        "--checkpointing_steps",
        "100",
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "train_summary.json").read_text())
    assert summary["processes"] == 2  # accelerator.num_processes in the launched run
    assert _losses(tmp_path / "two") == pytest.approx(_losses(one), rel=1e-4)
    pixels = grid_batch(1, 0, 4, 4, 32).pixels
    one_emb = StyleExtractor.from_pretrained(one / "extractor").embed(pixels)
    two_emb = StyleExtractor.from_pretrained(tmp_path / "two" / "extractor").embed(pixels)
    assert torch.allclose(one_emb, two_emb, atol=1e-4)
