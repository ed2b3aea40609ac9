"""Segment Anything masks: a tiny random-weight SAM end to end, one encoder pass per image, clear errors,
loading local checkpoints, propagation through world videos, and the ``stylekit segment`` command."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("segment_anything")

from stylekit.data import render_video, sample_content, sample_motion, sample_style  # noqa: E402
from stylekit.segment import (  # noqa: E402
    CHECKPOINT_ENV,
    Prompt,
    SamMasker,
    build_tiny_sam,
    load_sam,
    main,
    mask_iou,
    propagate_masks,
    warp_mask,
)


@pytest.fixture(scope="module")
def masker():
    return SamMasker(build_tiny_sam())


def _image(seed: int, height: int = 48, width: int = 80) -> np.ndarray:
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


def test_many_prompts_one_encoder_pass(masker):
    passes = []
    handle = masker.model.image_encoder.register_forward_pre_hook(lambda *a: passes.append(1))
    try:
        start = masker.encoder_passes
        image = _image(0)
        prompts = [
            Prompt(points=((10, 10),)),
            Prompt(box=(5, 5, 40, 30)),
            Prompt(points=((3, 4), (20, 20)), negative_points=((30, 30),)),
            Prompt(points=((70, 40),), box=(50, 20, 79, 47)),
        ]
        masks, scores = masker.predict_many(image, prompts, return_scores=True)
        assert masks.shape == (4, 48, 80) and masks.dtype == bool
        assert scores.shape == (4,) and scores.dtype == np.float32
        single = masker.predict(Image.fromarray(image), points=[(10, 10)])  # same pixels, another type
        assert single.shape == (48, 80) and single.dtype == bool
        records = masker.automatic(image, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        assert all(r["segmentation"].shape == (48, 80) for r in records)
        assert masker.encoder_passes - start == 1 and len(passes) == 1  # 6 prompts + automatic, one pass
        masker.predict(_image(1), box=(0, 0, 10, 10))
        assert masker.encoder_passes - start == 2 and len(passes) == 2  # a new image: a new pass
    finally:
        handle.remove()


def test_bad_prompts_refused_before_encoding(masker):
    start = masker.encoder_passes
    with pytest.raises(ValueError, match="at least one positive point or a box"):
        Prompt(negative_points=((1, 1),))
    with pytest.raises(ValueError, match="x0 < x1"):
        Prompt(box=(10, 0, 5, 5))
    with pytest.raises(ValueError, match="outside the 80x48 image"):
        masker.predict(_image(2), points=[(100, 10)])
    with pytest.raises(ValueError, match="non-empty list"):
        masker.predict_many(_image(2), [])
    with pytest.raises(TypeError, match="expected a segment_anything Sam"):
        SamMasker(torch.nn.Linear(2, 2))
    assert masker.encoder_passes == start


def test_clear_errors_for_missing_package_and_checkpoint(monkeypatch, tmp_path):
    monkeypatch.delenv(CHECKPOINT_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=CHECKPOINT_ENV):
        load_sam()
    with pytest.raises(FileNotFoundError, match="not found: .*nowhere.pth"):
        load_sam(tmp_path / "nowhere.pth", kind="vit_b")
    monkeypatch.setenv(CHECKPOINT_ENV, str(tmp_path / "env.pth"))
    with pytest.raises(FileNotFoundError, match="env.pth"):
        SamMasker()
    with pytest.raises(ValueError, match="kind: expected one of"):
        load_sam(tmp_path / "x.pth", kind="vit_x")
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell vit_b"):
        load_sam(tmp_path / "weights.pth")
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError, match="pip install 'stylekit\\[sam\\]'"):
        load_sam(tmp_path / "weights.pth", kind="vit_b")


@pytest.fixture
def tiny_checkpoints(monkeypatch, tmp_path):
    """The registry's vit_b builder swapped for the tiny SAM, and its weights saved as .pth/.safetensors."""
    import segment_anything
    from safetensors.torch import save_file

    monkeypatch.setitem(
        segment_anything.sam_model_registry, "vit_b", lambda checkpoint=None: build_tiny_sam(seed=1)
    )
    reference = build_tiny_sam(seed=7)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    torch.save(state, tmp_path / "sam_vit_b_tiny.pth")
    save_file(state, str(tmp_path / "sam_vit_b_tiny.safetensors"))
    return reference, tmp_path


def test_loads_local_checkpoints(tiny_checkpoints, monkeypatch):
    reference, folder = tiny_checkpoints
    for name in ("sam_vit_b_tiny.pth", "sam_vit_b_tiny.safetensors"):
        loaded = load_sam(folder / name)  # kind read from the file name
        for (key, a), b in zip(loaded.state_dict().items(), reference.state_dict().values(), strict=True):
            torch.testing.assert_close(a, b, msg=key)
    monkeypatch.setenv(CHECKPOINT_ENV, str(folder / "sam_vit_b_tiny.pth"))
    assert SamMasker().encoder_passes == 0


def test_cli_writes_a_mask_png(tiny_checkpoints, monkeypatch, tmp_path):
    _, folder = tiny_checkpoints
    image_path = tmp_path / "in.png"
    Image.fromarray(_image(3)).save(image_path)
    out = tmp_path / "masks" / "mask.png"
    monkeypatch.setenv(CHECKPOINT_ENV, str(folder / "sam_vit_b_tiny.pth"))
    assert main([str(image_path), "--point", "10,10", "--box", "2,2,40,30", "-o", str(out)]) == 0
    mask = np.asarray(Image.open(out))
    assert mask.shape == (48, 80) and set(np.unique(mask)) <= {0, 255}


def test_cli_bad_input_exits_2_with_the_reason(tiny_checkpoints, monkeypatch, tmp_path, capsys):
    from stylekit.cli import main as stylekit

    _, folder = tiny_checkpoints
    image_path = tmp_path / "in.png"
    Image.fromarray(_image(3)).save(image_path)
    (tmp_path / "corrupt_vit_b.pth").write_bytes(np.random.default_rng(0).bytes(3000))
    monkeypatch.setenv(CHECKPOINT_ENV, str(folder / "sam_vit_b_tiny.pth"))
    out = tmp_path / "mask.png"
    cases = {
        "--point: expected 2": ["--point", "10"],
        "at least one --point or a --box": [],
        "outside the 80x48 image": ["--point", "500,10"],
        "not a readable SAM checkpoint": [
            "--point",
            "10,10",
            "--checkpoint",
            str(tmp_path / "corrupt_vit_b.pth"),
        ],
    }
    for message, flags in cases.items():
        assert stylekit(["segment", str(image_path), "-o", str(out), *flags]) == 2, message
        assert message in capsys.readouterr().err
    assert not out.exists()


class OracleMasker:
    """Returns the world's exact mask of the object under the prompt's point (a perfect segmenter)."""

    def __init__(self, video) -> None:
        self.video = video
        self.frame = 0

    def predict_many(self, image, prompts):
        index = next(t for t, f in enumerate(self.video.frames) if np.array_equal(f, image))
        (x, y) = prompts[0].points[0]
        hits = [m for m in self.video.masks[index] if m[int(y), int(x)]]
        return np.stack([hits[-1] if hits else np.zeros_like(self.video.masks[index][0])])


@pytest.fixture(scope="module")
def video():
    rng = np.random.default_rng(3)
    content, style = sample_content(rng, count=1), sample_style(rng)
    return render_video(content, style, sample_motion(rng, content, 6, max_speed=0.05), n_frames=6, size=64)


def test_propagation_keeps_the_region(video, masker):
    truth = video.masks[:, 0]
    exact, fallbacks = propagate_masks(video.frames, truth[0], OracleMasker(video), return_fallbacks=True)
    assert exact.shape == truth.shape and exact.dtype == bool
    assert not any(fallbacks) and all(mask_iou(a, b) == 1.0 for a, b in zip(exact, truth, strict=True))
    # A random SAM jumps around: the documented fallback (flow-warped previous mask) keeps the region.
    tracked, fallbacks = propagate_masks(
        video.frames, truth[0], masker, flow=video.flow, return_fallbacks=True
    )
    assert fallbacks[0] is False and len(fallbacks) == len(truth)
    assert min(mask_iou(a, b) for a, b in zip(tracked, truth, strict=True)) > 0.75  # drift of 5 warps
    assert mask_iou(warp_mask(truth[0], video.flow[0]), truth[1]) > 0.9


def test_propagation_refuses_bad_shapes(video, masker):
    with pytest.raises(ValueError, match="first_mask: expected shape \\(64, 64\\)"):
        propagate_masks(video.frames, np.ones((32, 32), bool), masker)
    with pytest.raises(ValueError, match="flow: expected shape \\(5, 64, 64, 2\\) for 6 frames"):
        propagate_masks(video.frames, video.masks[0, 0], masker, flow=video.flow[:3])
