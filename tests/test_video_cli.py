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
