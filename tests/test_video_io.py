"""Video IO: round trips keep frame count, fps and order; clear errors; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from stylekit.video_io import Video, VideoIOError, VideoWriter, read_video, write_video

pytest.importorskip("imageio_ffmpeg")

COLOURS = np.array(
    [[230, 20, 20], [20, 230, 20], [20, 20, 230], [230, 230, 20], [20, 230, 230], [230, 20, 230]]
)


def solid_frames(order: list[int], size: tuple[int, int] = (32, 48)) -> np.ndarray:
    frames = np.zeros((len(order), size[0], size[1], 3), np.uint8)
    for index, colour in enumerate(order):
        frames[index] = COLOURS[colour]
    return frames


def colour_order(video: Video) -> list[int]:
    means = video.frames.reshape(len(video), -1, 3).mean(axis=1)
    return [int(np.argmin(((COLOURS - m) ** 2).sum(axis=1))) for m in means]


@pytest.mark.parametrize(
    ("name", "fps"),
    [
        ("clip.mp4", 12.5),
        ("clip.webm", 30000 / 1001),
        ("ntsc.mp4", 24000 / 1001),
        ("clip.gif", 10.0),
        ("frames", 7.0),
    ],
)
def test_round_trip_keeps_count_fps_and_order(tmp_path, name, fps):
    order = [0, 1, 2, 2, 3, 4, 5, 0]  # a repeated frame too (gif merges identical frames)
    path = write_video(tmp_path / name, solid_frames(order), fps=fps)
    video = read_video(path)
    assert len(video) == len(order)
    assert video.fps == pytest.approx(fps, rel=1e-12)  # NTSC rates exactly, not ffmpeg's 29.97
    assert colour_order(video) == order
    assert video.size == (48, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary files left
    again = write_video(tmp_path / f"again_{name}", video)  # a Video keeps its fps
    assert read_video(again).fps == pytest.approx(fps)


def test_odd_sized_mp4_and_max_frames(tmp_path):
    path = write_video(tmp_path / "odd.mp4", solid_frames([0, 1, 2], size=(17, 23)), fps=5)
    video = read_video(path, max_frames=2)
    assert len(video) == 2 and video.size == (23, 17) and colour_order(video) == [0, 1]


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(VideoIOError, match="not found"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoIOError, match="empty"):
        read_video(tmp_path / "empty.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"this is not a video" * 10)
    with pytest.raises(VideoIOError, match="cannot read"):
        read_video(tmp_path / "junk.mp4")
    (tmp_path / "junk.gif").write_bytes(b"GIF89a garbage")
    with pytest.raises(VideoIOError, match="cannot read"):
        read_video(tmp_path / "junk.gif")
    (tmp_path / "no_frames").mkdir()
    with pytest.raises(VideoIOError, match="no frames"):
        read_video(tmp_path / "no_frames")
    with pytest.raises(VideoIOError, match="unsupported"):
        write_video(tmp_path / "clip.txt", solid_frames([0]))
    with pytest.raises(VideoIOError, match="zero frames"):
        write_video(tmp_path / "zero.mp4", [])
    mixed = [solid_frames([0])[0], solid_frames([1], size=(16, 16))[0]]
    with pytest.raises(VideoIOError, match="frame 1 is 16x16 but frame 0 is 48x32"):
        write_video(tmp_path / "mixed.mp4", mixed)
    folder = tmp_path / "mixed_folder"
    folder.mkdir()
    for name, frame in zip(["1.png", "2.png", "10.png"], [mixed[0], mixed[0], mixed[1]], strict=True):
        Image.fromarray(frame).save(folder / name)
    with pytest.raises(VideoIOError, match="10.png is 16x16 but 1.png is 48x32"):
        read_video(folder)
    with pytest.raises(VideoIOError, match="fps"):
        write_video(tmp_path / "fps.mp4", solid_frames([0]), fps=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "empty.mp4", "junk.gif", "junk.mp4", "mixed_folder", "no_frames"
    ]  # fmt: skip


@pytest.mark.parametrize("name", ["out.mp4", "out.gif", "out"])
def test_failed_write_leaves_no_half_written_file(tmp_path, name):
    target = tmp_path / name
    write_video(target, solid_frames([0, 1]), fps=4)
    before = read_video(target)
    with pytest.raises(RuntimeError, match="boom"), VideoWriter(target, fps=4) as writer:
        writer.append(solid_frames([2])[0])
        raise RuntimeError("boom")
    with pytest.raises(VideoIOError, match="frame 1"), VideoWriter(target, fps=4) as writer:
        writer.append(solid_frames([2])[0])
        writer.append(solid_frames([3], size=(8, 8))[0])
    after = read_video(target)  # the old video is untouched
    assert len(after) == len(before) and colour_order(after) == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    fresh = tmp_path / f"new_{name}"
    with pytest.raises(RuntimeError), VideoWriter(fresh, fps=4) as writer:
        writer.append(solid_frames([2])[0])
        raise RuntimeError("boom")
    assert not fresh.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_an_encoder_failure_is_an_error_and_the_target_is_kept(tmp_path, monkeypatch):
    """ffmpeg refuses H.264 in webm but exits quietly on a short video, leaving a header-only file: the
    writer reads its output back and refuses it."""
    import stylekit.video_io as video_io

    target = tmp_path / "out.webm"
    write_video(target, solid_frames([0, 1]), fps=4)
    monkeypatch.setattr(video_io, "CODECS", {})  # H.264 for webm too
    with pytest.raises(VideoIOError, match="could not write 3 frames to out.webm"):
        write_video(target, solid_frames([2, 3, 4]), fps=4)
    assert colour_order(read_video(target)) == [0, 1]  # the old video is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.webm"]
