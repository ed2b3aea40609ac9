"""``stylekit`` subcommands beyond transfer: models, embed, similarity, app, launchers, delegated commands."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from stylekit import capabilities, cli, commands
from stylekit.capabilities import CapabilityUnavailable


def run(argv: list[str]) -> tuple[int, str, str]:
    """``cli.main(argv)`` -> (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("stylekit: error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for seed in range(3):
        Image.fromarray(make_image(seed)).save(folder / f"img{seed}.png")
    (folder / "notes.txt").write_text("skipped\n")
    return folder


def test_help_lists_every_command() -> None:
    code, out, _ = run(["--help"])
    assert code == 0
    for name in (
        "transfer",
        "models",
        "embed",
        "similarity",
        "app",
        "video",
        "segment",
        "train-lora",
        "train-extractor",
    ):
        assert f"    {name}" in out


# ------------------------------------------------------------------------------------------- models
def fake_hub_cache(root: Path, repo_id: str, files: dict[str, bytes]) -> None:
    """A Hugging Face hub cache entry laid out like huggingface_hub writes it (blobs + snapshot links)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)


def test_models_lists_presets_aliases_and_cache(tmp_path: Path) -> None:
    fake_hub_cache(tmp_path, "org/pipe", {"model_index.json": b"{}", "unet/w.safetensors": b"x" * 2048})
    code, out, _ = run(["models", "--json", "--cache-dir", str(tmp_path)])
    listing = json.loads(out)
    assert code == 0
    assert {p["name"] for p in listing["presets"]} >= {"tiny-sd", "tiny-sdxl", "mini"}
    assert {a["name"] for a in listing["aliases"]} >= {"sd15", "sdxl"}
    assert listing["cache_dir"] == str(tmp_path) and listing["default_model"] in ("mini", "tiny-sd")
    assert listing["cached"] == [{"hub_id": "org/pipe", "bytes": 2050, "pipeline": True}]
    code, out, _ = run(["models", "--cache-dir", str(tmp_path)])
    assert code == 0 and "org/pipe" in out and "mini" in out


def test_models_clear_cache_needs_yes_and_known_names(tmp_path: Path) -> None:
    fake_hub_cache(tmp_path, "org/pipe", {"model_index.json": b"{}"})
    fake_hub_cache(tmp_path, "org/not-a-pipeline", {"config.json": b"{}"})
    code, _, err = run(["models", "--cache-dir", str(tmp_path), "--clear-cache"])
    assert code == 2 and "add --yes" in one_error_line(err)
    assert (tmp_path / "models--org--pipe").exists()
    code, _, err = run(["models", "--cache-dir", str(tmp_path), "--clear-cache", "org/unknown", "--yes"])
    assert code == 2 and "org/unknown" in one_error_line(err)
    code, _, _ = run(["models", "--cache-dir", str(tmp_path), "--clear-cache", "--yes"])
    assert code == 0
    assert not (tmp_path / "models--org--pipe").exists()  # diffusers pipelines only
    assert (tmp_path / "models--org--not-a-pipeline").exists()


# ------------------------------------------------------------------------------------------- extractor
def test_embed_writes_stamped_embeddings(images: Path, tmp_path: Path) -> None:
    from stylekit.extractors import load_default, load_embeddings

    output = tmp_path / "emb.safetensors"
    code, _, err = run(["embed", str(images), "-o", str(output)])
    assert code == 0, err
    embeddings, meta = load_embeddings(output, load_default())
    assert embeddings.shape == (3, load_default().embed_dim)
    assert np.allclose(embeddings.norm(dim=-1).numpy(), 1, atol=1e-5)
    assert [Path(n).name for n in json.loads(meta["names"])] == ["img0.png", "img1.png", "img2.png"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["embed", "{images}/img0.png", "-o", "{tmp}/emb.npy"], "expected a .safetensors file"),
        (["embed", "{tmp}/missing.png", "-o", "{tmp}/e.safetensors"], "no such file or folder"),
        (["embed", "{images}/notes.txt", "-o", "{tmp}/e.safetensors"], "not an image file"),
        (
            ["embed", "{images}", "-o", "{tmp}/e.safetensors", "--extractor", "{tmp}"],
            "--extractor: no config.json",
        ),
        (["similarity", "{images}/img0.png"], "expected at least two images"),
        (["similarity", "{images}/img0.png", "--to", "{tmp}/none.safetensors"], "--to: no such file"),
        (["similarity", "{images}", "--top-k", "0"], "expected an integer >= 1"),
        (["similarity", "{images}/img0.png", "--to", "{tmp}/bad.safetensors"], "not a readable safetensors"),
    ],
)
def test_extractor_commands_refuse_bad_input_with_exit_2(images: Path, tmp_path: Path, argv, message) -> None:
    argv = [a.format(images=images, tmp=tmp_path) for a in argv]
    (tmp_path / "bad.safetensors").write_bytes(b"\xff" * 64)
    code, _, err = run(argv)
    assert code == 2 and message in one_error_line(err)


def test_similarity_matrix_and_nearest_from_embeddings(images: Path, tmp_path: Path) -> None:
    code, out, _ = run(["similarity", str(images), "--json"])
    result = json.loads(out)
    matrix = np.array(result["similarity"])
    assert code == 0 and matrix.shape == (3, 3)
    assert np.allclose(matrix, matrix.T, atol=1e-6) and np.allclose(np.diag(matrix), 1, atol=1e-4)
    database = tmp_path / "db.safetensors"
    assert run(["embed", str(images), "-o", str(database)])[0] == 0
    code, out, _ = run(
        ["similarity", str(images / "img1.png"), "--to", str(database), "--top-k", "2", "--json"]
    )
    nearest = json.loads(out)[0]["nearest"]
    assert code == 0 and len(nearest) == 2
    assert Path(nearest[0]["ref"]).name == "img1.png" and nearest[0]["score"] == pytest.approx(1, abs=1e-4)
    assert nearest[0]["score"] >= nearest[1]["score"]
    # images and embedding files rank together: the same answer when the references are images
    code, out, _ = run(
        ["similarity", str(images / "img1.png"), "--to", str(images), "--top-k", "2", "--json"]
    )
    assert [Path(h["ref"]).name for h in json.loads(out)[0]["nearest"]] == [
        Path(h["ref"]).name for h in nearest
    ]


# ------------------------------------------------------------------------------------------- launchers
def test_train_extractor_builds_the_accelerate_command() -> None:
    code, out, _ = run(["train-extractor", "--dry-run", "--num-processes", "2", "--cpu", "--max_steps", "3"])
    assert code == 0
    assert "-m accelerate.commands.launch" in out and "--num_processes 2" in out
    # two CPU processes: --multi_gpu under ACCELERATE_USE_CPU=1 (accelerate's --cpu runs a single process)
    assert out.startswith("ACCELERATE_USE_CPU=1 ") and "--multi_gpu" in out and "--cpu" not in out
    assert out.rstrip().endswith("-m stylekit.extractors.train --max_steps 3")
    code, out, _ = run(["train-extractor", "--dry-run", "--cpu", "--max_steps", "3"])
    assert "--cpu" in out and "--multi_gpu" not in out


def test_train_extractor_checks_trainer_arguments_before_launching(monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("launched despite bad arguments"))
    code, _, err = run(["train-extractor", "--max_stepz", "3"])
    assert code == 2 and "unrecognized arguments: --max_stepz" in one_error_line(err)
    code, _, err = run(["train-extractor", "--max_steps", "many"])
    assert code == 2 and "--max_steps" in one_error_line(err)


def test_train_extractor_help_shows_launcher_and_trainer_options() -> None:
    code, out, _ = run(["train-extractor", "--help"])
    assert code == 0 and "--num-processes" in out and "--max_steps" in out


def test_train_lora_checks_trainer_arguments_and_shows_its_help(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("launched despite bad arguments"))
    data = ["--instance_data_dir", str(tmp_path), "--instance_prompt", "a [v]", "--output_dir", str(tmp_path)]
    cases = {
        "unrecognized arguments: --bogus_flag": ["--bogus_flag", "3"],
        "--rank": ["--rank", "-1", *data],
        "--output_dir: required": ["--instance_data_dir", str(tmp_path), "--instance_prompt", "a [v]"],
        # the trainer's model-free checks run before launching too (data folders, output folder, resume)
        "--instance_data_dir": ["--instance_data_dir", str(tmp_path / "nope"), *data[2:]],
    }
    for message, argv in cases.items():
        code, _, err = run(["train-lora", "--dry-run", *argv])
        assert code == 2 and message in one_error_line(err), argv
    code, out, _ = run(["train-lora", "--help"])
    assert code == 0 and "--num-processes" in out and "--instance_data_dir" in out


def test_launcher_exit_code_follows_the_trainer(monkeypatch) -> None:
    for returncode, expected in ((0, 0), (1, 1), (2, 1)):
        monkeypatch.setattr(
            subprocess, "run", lambda *a, rc=returncode, **k: types.SimpleNamespace(returncode=rc)
        )
        assert run(["train-extractor", "--max_steps", "2"])[0] == expected


@pytest.mark.slow
def test_train_extractor_really_trains_under_accelerate(tmp_path: Path) -> None:
    argv = [
        "--cpu",
        "--num-processes",
        "2",
        "--max_steps",
        "2",
        "--n_styles",
        "4",
        "--n_contents",
        "2",
        "--output_dir",
        str(tmp_path / "run"),
    ]
    argv += ["--checkpointing_steps", "2", "--report_to", "none", "--threads", "1", "--progress", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "stylekit.cli", "train-extractor", *argv],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "extractor" / "model.safetensors").is_file()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["processes"] == 2  # --cpu --num-processes 2 ran one process before


# ------------------------------------------------------------------------------------------- delegated
def test_missing_capability_exits_1_with_one_line(monkeypatch) -> None:
    def missing(name: str):
        raise CapabilityUnavailable(f"{name} is not available in this installation")

    monkeypatch.setattr(capabilities, "require", missing)
    for argv in (["video", "in.mp4"], ["segment", "x.png"], ["train-lora", "--max_steps", "1"], ["app"]):
        code, _, err = run(argv)
        assert code == 1 and "is not available" in one_error_line(err), argv


def test_delegated_commands_pass_arguments_and_map_exit_codes(monkeypatch) -> None:
    seen = []

    def fake_main(argv):
        seen.append(argv)
        return {"ok": 0, "bad": 2, "boom": 7}[argv[0]]

    monkeypatch.setattr(
        capabilities, "require", lambda name: types.SimpleNamespace(main=fake_main, __name__="fake")
    )
    assert run(["--debug", "video", "ok", "--style", "s.png"])[0] == 0
    assert seen[-1] == ["ok", "--style", "s.png"]
    assert run(["segment", "bad"])[0] == 2
    assert run(["video", "boom"])[0] == 1


def test_real_delegated_modules_answer_help() -> None:
    for name in ("video", "segment"):
        if capabilities.available(name):
            code, out, _ = run([name, "--help"])
            assert code == 0 and "usage:" in out


def test_app_command_validates_before_serving(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from stylekit.apps import ui

    monkeypatch.setattr(ui, "build_demo", lambda **k: pytest.fail("built despite bad arguments"))
    code, _, err = run(["app", "--port", "70000"])
    assert code == 2 and "--port" in one_error_line(err)
    code, _, err = run(["app", "--max-steps", "0"])
    assert code == 2 and "--max-steps" in one_error_line(err)
    code, _, err = run(["app", "--max-file-size", "20zz"])
    assert code == 2 and "--max-file-size" in one_error_line(err)
    (tmp_path / "a_file").write_text("")
    code, _, err = run(["app", "--work-dir", str(tmp_path / "a_file")])
    assert code == 2 and "--work-dir" in one_error_line(err)
    code, out, _ = run(["app", "--help"])
    assert code == 0 and "--max-file-size" in out and "127.0.0.1" in out


def test_app_command_builds_and_launches_with_safe_defaults(monkeypatch, tmp_path: Path) -> None:
    pytest.importorskip("gradio")
    from stylekit.apps import server, ui

    built, launched = {}, {}
    monkeypatch.setattr(ui, "build_demo", lambda **k: built.update(k) or "demo")
    monkeypatch.setattr(server, "launch", lambda demo, **k: launched.update(k, demo=demo))
    code, _, _ = run(["app", "--work-dir", str(tmp_path), "--model", "tiny-sd", "--port", "0"])
    assert code == 0
    assert built["work_dir"] == str(tmp_path) and built["default_model"] == "tiny-sd"
    assert launched == {
        "demo": "demo",
        "host": "127.0.0.1",
        "port": None,
        "max_file_size": "20mb",
        "block": True,
    }


def test_commands_module_registers_in_cli() -> None:
    assert set(commands.PASSTHROUGH) == {"video", "segment", "train-lora", "train-extractor"}
    assert commands.add_models_command in cli.COMMANDS
