"""``stylekit video`` entry point (``stylekit.video_cli.main``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_image
from PIL import Image

from stylekit.video_cli import main
from stylekit.video_io import read_video, write_video

pytest.importorskip("imageio_ffmpeg")


def test_video_command_keeps_frames_and_fps(tmp_path, capsys):
    frames = np.stack([make_image(seed, size=32) for seed in range(3)])
    write_video(tmp_path / "in.gif", frames, fps=5)
    Image.fromarray(make_image(9, size=32)).save(tmp_path / "style.png")
    args = [str(tmp_path / "in.gif"), "--style", str(tmp_path / "style.png"), "-o", str(tmp_path / "out.mp4")]
    assert (
        main(
            [
                *args,
                "--model",
                "tiny-sd",
                "--steps",
                "2",
                "--size",
                "32",
                "--window",
                "2",
                "--overlap",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    out = read_video(tmp_path / "out.mp4")
    assert len(out) == 3 and out.fps == pytest.approx(5) and out.size == (32, 32)
    assert '"frames": 3' in capsys.readouterr().out
    assert (
        main(
            [
                str(tmp_path / "missing.mp4"),
                "--style",
                str(tmp_path / "style.png"),
                "-o",
                str(tmp_path / "x.mp4"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_motion_scale_flag_checked_before_any_work(tmp_path, capsys, monkeypatch):
    import stylekit.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stylekit.models, "load_pipeline", no_model)
    args = [str(tmp_path / "missing.mp4"), "--style", "s.png", "-o", str(tmp_path / "x.mp4")]
    assert main([*args, "--motion-scale", "0.5"]) == 2
    assert "--motion-scale: needs --motion-adapter" in capsys.readouterr().err
    assert main([*args, "--motion-scale", "-1", "--motion-adapter", "m"]) == 2
    assert "motion_scale: expected a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "x.mp4").exists()


def test_bad_arguments_and_paths_are_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import torch

    import stylekit.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(stylekit.models, "load_pipeline", no_model)
    write_video(tmp_path / "in.gif", np.stack([make_image(seed, size=32) for seed in range(3)]), fps=5)
    Image.fromarray(make_image(9, size=32)).save(tmp_path / "style.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "not_a_video.mp4").write_text("text")
    base = [str(tmp_path / "in.gif"), "--style", str(tmp_path / "style.png")]
    out = ["-o", str(tmp_path / "out.gif")]
    cases = {
        "--steps": [*base, *out, "--steps", "0"],
        "--gamma": [*base, *out, "--gamma", "3"],
        "--temperature": [*base, *out, "--temperature", "-1"],
        "--overlap: expected fewer frames than --window (2)": [
            *base,
            *out,
            "--window",
            "2",
            "--overlap",
            "2",
        ],
        "-o/--output: the folder": [*base, "-o", str(tmp_path / "nowhere" / "v.mp4")],
        "-o/--output: unsupported video type": [*base, "-o", str(tmp_path / "v.xyz")],
        "--style: not an image file": [
            str(tmp_path / "in.gif"),
            "--style",
            str(tmp_path / "corrupt.png"),
            *out,
        ],
        "--mask: not an image file": [*base, *out, "--mask", str(tmp_path / "corrupt.png")],
        "--motion-adapter: folder not found": [*base, *out, "--motion-adapter", str(tmp_path / "none")],
        "IN: cannot read the video": [
            str(tmp_path / "not_a_video.mp4"),
            "--style",
            str(tmp_path / "style.png"),
            *out,
        ],
    }
    if not torch.cuda.is_available():
        cases["--device: 'cuda' requested but no CUDA GPU"] = [*base, *out, "--device", "cuda"]
    for message, argv in cases.items():
        code, by_argparse = exit_code(argv)
        assert code == 2, message
        err = capsys.readouterr().err
        assert message in err, (message, err)
        if not by_argparse:  # main's own report: exactly one line (no ffmpeg banner)
            assert len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "corrupt.png",
        "in.gif",
        "not_a_video.mp4",
        "style.png",
    ]


def exit_code(argv: list[str]) -> tuple[int, bool]:
    """(main's exit status, whether argparse itself rejected a value: it raises SystemExit(2))."""
    try:
        return main(argv), False
    except SystemExit as exit_:
        return int(exit_.code or 0), True


def test_existing_output_and_the_input_itself_are_never_overwritten_silently(tmp_path, capsys):
    frames = np.stack([make_image(seed, size=32) for seed in range(3)])
    write_video(tmp_path / "in.gif", frames, fps=5)
    Image.fromarray(make_image(9, size=32)).save(tmp_path / "style.png")
    (tmp_path / "out.gif").write_bytes(b"an earlier result")
    run = [
        str(tmp_path / "in.gif"),
        "--style",
        str(tmp_path / "style.png"),
        "--model",
        "tiny-sd",
        "--steps",
        "1",
    ]
    run += ["--size", "32", "--window", "3", "--overlap", "1", "--quiet"]
    source = (tmp_path / "in.gif").read_bytes()
    for target in (tmp_path / "in.gif", tmp_path):  # the input itself, or a folder output replacing it
        assert main([*run, "-o", str(target), "--overwrite"]) == 2
        assert "would replace IN" in capsys.readouterr().err
    assert (tmp_path / "in.gif").read_bytes() == source
    assert main([*run, "-o", str(tmp_path / "out.gif")]) == 2
    assert "replace it with --overwrite" in capsys.readouterr().err
    (tmp_path / "folder.gif").mkdir()
    assert main([*run, "-o", str(tmp_path / "folder.gif"), "--overwrite"]) == 2
    assert "is a folder; a .gif video cannot replace it" in capsys.readouterr().err
    assert (tmp_path / "out.gif").read_bytes() == b"an earlier result"
    assert main([*run, "-o", str(tmp_path / "out.gif"), "--overwrite"]) == 0
    assert len(read_video(tmp_path / "out.gif")) == 3
