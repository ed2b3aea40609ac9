"""The ``stylekit`` command: validation before model work, one job per folder pair, resume, multi-process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylekit import cli
from stylekit.batch import Pair, read_parameters, style_batches, write_png_atomic
from stylekit.pipelines import StyleInjectionPipeline

STEPS = 2
FAST = ["--model", "tiny-sd", "--steps", str(STEPS), "--height", "64", "--width", "64"]
NAMES = {"gray16__gray.png", "gray16__rgb.png", "rgba__gray.png", "rgba__rgb.png"}


@dataclass
class Inputs:
    contents: Path  # rgba.png (RGBA), gray16.png (16-bit grayscale), notes.txt (skipped)
    styles: Path  # gray.jpg (8-bit grayscale), rgb.png


@dataclass
class Run:
    code: int
    out: Path
    report: dict
    stderr: str


def run_main(argv: list[str]) -> tuple[int, str]:
    """``cli.main(argv)`` with its stderr captured (usable from module-scoped fixtures)."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        code = cli.main(argv)
    return code, stderr.getvalue()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_close_to(reference: Path, other: Path) -> None:
    """Same files; pixels equal within 1/255 (thread counts and inversion batching move the last bit)."""
    assert {p.name for p in other.glob("*.png")} == {p.name for p in reference.glob("*.png")}
    for path in reference.glob("*.png"):
        difference = np.abs(pixels(path) - pixels(other / path.name))
        assert difference.max() <= 1, path.name
        assert (difference > 0).mean() < 0.01, path.name


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny-model ops are too small to gain from threads; one thread avoids stalls on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    contents, styles = root / "contents", root / "styles"
    contents.mkdir()
    styles.mkdir()
    Image.fromarray(rng.integers(0, 256, (70, 90, 4), dtype=np.uint8), "RGBA").save(contents / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (64, 64), dtype=np.uint16)).save(contents / "gray16.png")
    (contents / "notes.txt").write_text("not an image")
    Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L").save(styles / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (80, 64, 3), dtype=np.uint8)).save(styles / "rgb.png")
    assert Image.open(contents / "gray16.png").mode.startswith("I;16")
    return Inputs(contents, styles)


@pytest.fixture(scope="module")
def reference(inputs: Inputs, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One single-process run of 2 contents x 2 styles (folders), shared by several tests."""
    out = tmp_path_factory.mktemp("reference")
    report = out.parent / f"{out.name}-report.json"
    code, stderr = run_main(
        [
            "transfer",
            str(inputs.contents),
            "--style",
            str(inputs.styles),
            "-o",
            str(out),
            "--report",
            str(report),
        ]
        + FAST
    )
    return Run(code, out, json.loads(report.read_text()), stderr)


@pytest.fixture
def no_model_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the model is loaded or the pipeline is called."""

    def forbidden(*args, **kwargs):
        raise AssertionError("model work started")

    monkeypatch.setattr("stylekit.models.load_pipeline", forbidden)
    monkeypatch.setattr(StyleInjectionPipeline, "__call__", forbidden)


def error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("stylekit: error: "), stderr
    return lines[0]


# --------------------------------------------------------------------------------------- usage
def test_help_version_and_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert cli.main(["transfer", "--help"]) == 0
    assert "--style" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "COMMAND" in error_line(capsys.readouterr().err)


def test_default_model_is_mini_when_bundled(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import stylekit.models

    monkeypatch.setattr(stylekit.models, "MINI_PATH", tmp_path)
    assert cli.default_model() == "tiny-sd"
    (tmp_path / "model_index.json").write_text("{}")
    assert cli.default_model() == "mini"


def test_help_starts_without_torch() -> None:
    """`stylekit --help`, `stylekit video --help` and argument errors come before torch is imported (it takes
    seconds)."""
    code = "import sys, stylekit.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
    code = (
        "import sys, stylekit.cli\n"
        "try:\n    stylekit.cli.main(['video', '--help'])\nexcept SystemExit:\n    pass\n"
        "sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert "--motion-scale" in result.stdout and result.returncode == 0


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--gamma", "1.5", "argument --gamma: expected a number in [0, 1], got '1.5'"),
        ("--temperature", "0", "argument --temperature: expected a number > 0, got '0'"),
        ("--steps", "0", "argument --steps: expected an integer >= 1, got '0'"),
        ("--batch-size", "x", "argument --batch-size: expected an integer >= 1, got 'x'"),
    ],
)
def test_bad_numbers_exit_2(
    inputs: Inputs, tmp_path: Path, no_model_work, capsys, flag, value, expected
) -> None:
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path), flag, value]
    assert cli.main(argv) == 2
    assert error_line(capsys.readouterr().err) == f"stylekit: error: {expected}"


def test_layers_accepts_presets_names_and_json(inputs: Inputs, tmp_path: Path, no_model_work, capsys) -> None:
    assert cli.layers_spec("styleid") == "styleid"
    assert cli.layers_spec("up_blocks.3, up_blocks.2") == "up_blocks.3, up_blocks.2"
    assert cli.layers_spec('{"up": {"block_2": [0, 1, 1]}}') == {"up": {"block_2": [0, 1, 1]}}
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path)]
    assert cli.main(argv + ["--layers", "{up: 1}"]) == 2
    assert error_line(capsys.readouterr().err).startswith(
        "stylekit: error: argument --layers: expected a JSON"
    )


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--device", "cpu", "--dtype", "fp16"], "argument --dtype: fp16 needs a GPU"),
        (["--device", "tpu9"], "argument --device: expected cpu, cuda, cuda:N or mps"),
        (["--device", "cuda"], "argument --device: 'cuda' requested but no CUDA GPU is available"),
    ],
)
def test_bad_device_or_dtype_exit_2(
    inputs: Inputs, tmp_path: Path, no_model_work, capsys, extra, expected
) -> None:
    if extra[1] == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is available")
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path)]
    assert cli.main(argv + extra) == 2
    assert error_line(capsys.readouterr().err).startswith(f"stylekit: error: {expected}")


def _bad_file(kind: str, folder: Path) -> Path:
    if kind == "missing":
        return folder / "missing.png"
    path = folder / {"not-image": "notes.txt", "truncated": "cut.png", "empty": "empty.png"}[kind]
    if kind == "not-image":
        path.write_text("hello")
    elif kind == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            buffer, "PNG"
        )
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    else:
        path.write_bytes(b"")
    return path


@pytest.mark.parametrize("role", ["content", "style"])
@pytest.mark.parametrize(
    "kind, expected",
    [
        ("missing", "no such file or folder"),
        ("not-image", "not an image file"),
        ("truncated", "the image file is truncated or corrupt"),
        ("empty", "not an image file"),
    ],
)
def test_bad_images_exit_2_before_model_work(
    inputs: Inputs, tmp_path: Path, no_model_work, capsys, role, kind, expected
) -> None:
    bad = _bad_file(kind, tmp_path)
    contents = [str(inputs.contents)] + ([str(bad)] if role == "content" else [])
    styles = [str(inputs.styles)] + ([str(bad)] if role == "style" else [])
    assert cli.main(["transfer", *contents, "--style", *styles, "-o", str(tmp_path / "out")]) == 2
    line = error_line(capsys.readouterr().err)
    argument = "CONTENT" if role == "content" else "--style"
    assert line.startswith(f"stylekit: error: {argument}: {expected}") and str(bad) in line
    assert not list((tmp_path / "out").glob("*.png"))


def test_unknown_layers_exit_2_before_inversion(inputs: Inputs, tmp_path: Path, monkeypatch, capsys) -> None:
    def forbidden(*args, **kwargs):
        raise AssertionError("inversion started")

    monkeypatch.setattr(StyleInjectionPipeline, "__call__", forbidden)
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path)]
    assert cli.main(argv + FAST + ["--layers", "up_blocks.9"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("stylekit: error: argument --layers: 'up_blocks.9' is neither a preset")


# --------------------------------------------------------------------------------------- a job
def test_folder_job_writes_every_pair_with_metadata(reference: Run, inputs: Inputs) -> None:
    assert reference.code == 0, reference.stderr
    assert "skipping 1 non-image file(s)" in reference.stderr  # notes.txt in the content folder
    assert {p.name for p in reference.out.iterdir()} == NAMES  # RGBA, 16-bit and grayscale inputs accepted
    with Image.open(reference.out / "rgba__gray.png") as image:
        assert image.size == (64, 64) and image.mode == "RGB"
        text = dict(image.text)
    assert text["stylekit:content"] == str(inputs.contents / "rgba.png")
    assert text["stylekit:style"] == str(inputs.styles / "gray.jpg")
    assert text["stylekit:model"] == "tiny-sd" and text["stylekit:steps"] == str(STEPS)
    assert text["stylekit:gamma"] == "0.75" and text["stylekit:temperature"] == "1.5"
    assert text["stylekit:seed"] == "0" and text["stylekit:layers_effective"] == "styleid"
    assert text["stylekit:version"] == cli.__version__
    parameters = json.loads(text["parameters"])
    assert parameters["height"] == parameters["width"] == 64 and parameters["adain"] is True


def test_job_inverts_each_image_once(reference: Run) -> None:
    n_contents = n_styles = 2
    report = reference.report
    assert report["status"] == "complete" and report["num_processes"] == 1
    assert report["unet_evals"] == STEPS * (n_contents + n_styles) + STEPS * n_contents * n_styles
    assert report["cache"]["misses"] == n_contents + n_styles


def test_rerun_skips_finished_outputs(reference: Run, inputs: Inputs, no_model_work) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in reference.out.iterdir()}
    (reference.out / ".rgba__rgb.png.k1ll3d.tmp").write_bytes(b"half a png")  # left by a killed run
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(reference.out)]
    code, stderr = run_main(argv + FAST)
    assert code == 0, stderr
    assert "0 written, 4 already done" in stderr
    assert {p.name: p.stat().st_mtime_ns for p in reference.out.iterdir()} == before


def test_rerun_with_other_settings_is_refused(reference: Run, inputs: Inputs, no_model_work) -> None:
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(reference.out)]
    code, stderr = run_main(argv + FAST + ["--gamma", "0.5"])
    assert code == 2
    assert "exists from a run with other settings (gamma=0.75, now 0.5)" in error_line(stderr)


def test_foreign_file_in_output_is_not_overwritten(inputs: Inputs, tmp_path: Path, no_model_work) -> None:
    (tmp_path / "rgba__rgb.png").write_bytes(b"mine")
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path)]
    code, stderr = run_main(argv + FAST)
    assert code == 2 and "is not a stylekit output" in error_line(stderr)
    assert (tmp_path / "rgba__rgb.png").read_bytes() == b"mine"


def test_output_folders_cache_file_and_too_many_steps_exit_2(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stylekit.pipelines import StyleInjectionPipeline

    monkeypatch.setattr(StyleInjectionPipeline, "__call__", lambda *a, **k: pytest.fail("stylized"))
    (tmp_path / "out" / "rgba__rgb.png").mkdir(parents=True)
    (tmp_path / "a_file").write_text("")
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles)]
    cases = {
        "rgba__rgb.png is a folder": ["-o", str(tmp_path / "out"), "--overwrite", *FAST],
        "--cache-dir: ": ["-o", str(tmp_path / "o2"), "--cache-dir", str(tmp_path / "a_file"), *FAST],
        "--steps: expected at most the scheduler's 1000 training timesteps": [
            "-o",
            str(tmp_path / "o3"),
            *FAST,
            "--steps",
            "3000",
        ],
    }
    for message, flags in cases.items():
        code, stderr = run_main(argv + flags)
        assert code == 2 and message in stderr.splitlines()[-1], (message, stderr)
    assert (tmp_path / "out" / "rgba__rgb.png").is_dir()


def test_interrupted_run_keeps_outputs_and_resumes(
    reference: Run, inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, cache, report = tmp_path / "out", tmp_path / "cache", tmp_path / "report.json"
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(out)]
    argv += FAST + ["--cache-dir", str(cache), "--report", str(report)]
    original = StyleInjectionPipeline.__call__
    calls: list[list[str]] = []

    def interrupted_on_third_call(self, *args, **kwargs):
        calls.append(kwargs["content_image"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StyleInjectionPipeline, "__call__", interrupted_on_third_call)
    code, stderr = run_main(argv)
    assert code == 130 and "rerun the same command" in stderr
    assert json.loads(report.read_text())["status"] == "interrupted"
    written = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(written) == {"gray16__gray.png", "rgba__gray.png"}  # no temp files left
    for name in written:
        with Image.open(out / name) as image:
            image.load()
        assert read_parameters(out / name)["model"] == "tiny-sd"

    # The rerun does only the two missing pairs (one batched call: they share a style) and, thanks to the
    # on-disk cache, inverts only the style the interrupted run never reached.
    calls.clear()
    code, stderr = run_main(argv + ["--batch-size", "2"])
    assert code == 0, stderr
    assert calls == [[str(inputs.contents / "gray16.png"), str(inputs.contents / "rgba.png")]]
    assert json.loads(report.read_text())["unet_evals"] == STEPS * 1 + STEPS * 2
    assert {name: (out / name).read_bytes() for name in written} == written
    assert_close_to(reference.out, out)


def test_failure_during_the_run_exits_1(
    inputs: Inputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, *args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(StyleInjectionPipeline, "__call__", broken)
    argv = ["transfer", str(inputs.contents), "--style", str(inputs.styles), "-o", str(tmp_path), "-q"]
    code, stderr = run_main(argv + FAST)
    assert code == 1
    assert error_line(stderr).startswith(
        "stylekit: error: RuntimeError: boom (the 0 output(s) written are kept"
    )
    assert not list(tmp_path.iterdir())


def test_atomic_write_leaves_old_file_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "a__b.png"
    target.write_bytes(b"previous")

    def interrupted(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_png_atomic(Image.new("RGB", (8, 8)), target, {"stylekit:x": "1"})
    assert [p.name for p in tmp_path.iterdir()] == ["a__b.png"] and target.read_bytes() == b"previous"


def test_style_batches_group_contents_sharing_a_style() -> None:
    pairs = [Pair(Path(f"c{c}.png"), Path(f"s{s}.png")) for c in range(3) for s in range(2)]
    batches = style_batches(pairs, 2)
    assert [[(p.content.stem, p.style.stem) for p in batch] for batch in batches] == [
        [("c0", "s0"), ("c1", "s0")],
        [("c2", "s0")],
        [("c0", "s1"), ("c1", "s1")],
        [("c2", "s1")],
    ]
    assert sum(len(batch) for batch in style_batches(pairs, 1)) == len(pairs)


# --------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_accelerate_two_processes_split_the_pairs(reference: Run, inputs: Inputs, tmp_path: Path) -> None:
    out, report = tmp_path / "out", tmp_path / "report.json"
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    command = ["-m", "stylekit.cli", "transfer", str(inputs.contents), "--style", str(inputs.styles)]
    command += ["-o", str(out), "--report", str(report), "-q"] + FAST
    env = dict(os.environ, ACCELERATE_USE_CPU="1", HF_HUB_OFFLINE="1")
    result = subprocess.run(launch + command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [(r["process_index"], r["num_processes"], r["status"]) for r in reports] == [
        (0, 2, "complete"),
        (1, 2, "complete"),
    ]
    written = [set(r["written"]) for r in reports]
    assert written[0] and written[1] and not written[0] & written[1]
    assert written[0] | written[1] == NAMES
    assert_close_to(reference.out, out)


def test_a_message_passed_to_sys_exit_is_printed(capsys):
    def handler() -> int:
        raise SystemExit("the reason")

    assert cli._run(handler, debug=False) == 1
    assert capsys.readouterr().err.strip() == "stylekit: error: the reason"
