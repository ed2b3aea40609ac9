"""The Gradio app: handlers called directly, then the live server driven by gradio_client."""

from __future__ import annotations

import json
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_image, write_style_images
from PIL import Image

gr = pytest.importorskip("gradio", reason="the app needs the [app] extra (gradio)")
gradio_client = pytest.importorskip("gradio_client")

from stylekit.apps import Engine, Handlers, ModelCache, build_demo, free_port, launch  # noqa: E402
from stylekit.capabilities import available  # noqa: E402

MODEL = "mini"
SIZE = 32
STEPS = 2


def settings(**overrides):
    """Image-tab settings in the order of the Settings inputs (model .. size)."""
    values = {
        "model": MODEL,
        "gamma": 0.75,
        "temperature": 1.5,
        "steps": STEPS,
        "seed": 0,
        "layers": "",
        "size": SIZE,
    }
    values.update(overrides)
    return list(values.values())


def pixels(path: str | Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    out = {}
    for name, seed in (("content", 0), ("style", 1), ("style2", 2)):
        out[name] = folder / f"{name}.png"
        Image.fromarray(make_image(seed)).save(out[name])
    out["text"] = folder / "notes.txt"
    out["text"].write_text("not an image\n")
    left = np.zeros((64, 64), dtype=np.uint8)
    left[:, :32] = 255
    out["left"], out["right"], out["white"], out["black"] = (
        folder / f"{n}.png" for n in ("left", "right", "white", "black")
    )
    Image.fromarray(left).save(out["left"])
    Image.fromarray(255 - left).save(out["right"])
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(out["white"])
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(out["black"])
    out["alpha_left"] = folder / "alpha_left.png"  # white everywhere, opaque on the left half only
    Image.fromarray(np.dstack([np.full((64, 64, 3), 255, np.uint8), left])).save(out["alpha_left"])
    return out


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> Engine:
    return Engine(
        tmp_path_factory.mktemp("outputs"), models=ModelCache(device="cpu"), default_model=MODEL, max_steps=8
    )


@pytest.fixture(scope="module")
def handlers(engine: Engine) -> Handlers:
    return Handlers(engine)


def test_import_loads_neither_gradio_nor_torch() -> None:
    code = "import sys, stylekit.apps; print('gradio' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_build_demo_loads_no_model_and_writes_only_in_its_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    demo = build_demo(work_dir=tmp_path / "app")
    engine = demo.stylekit_engine
    assert engine.models.loaded() == [] and engine.models.loads == 0
    assert engine.default_model == MODEL
    import os

    assert Path(os.environ["GRADIO_TEMP_DIR"]).is_relative_to(tmp_path / "app")
    assert engine.output_dir.is_relative_to(tmp_path / "app")
    assert all(Path(f).is_relative_to(tmp_path / "app") for f in demo.stylekit_search_folders)
    names = {
        block.get_config().get("label") for block in demo.blocks.values() if hasattr(block, "get_config")
    }
    assert {"Content", "Style", "Results", "Before / after", "Nearest styles"} <= names
    tabs = {block.label for block in demo.blocks.values() if isinstance(block, gr.Tab)}
    assert tabs == {"Image", "Regions", "Video", "LoRA", "Style search"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"content": None}, "content: expected an image"),
        ({"content": "text"}, "content: not an image file"),
        ({"gamma": 1.5}, "gamma: expected a number in [0, 1]"),
        ({"temperature": 0.0}, "temperature: expected a number > 0"),
        ({"steps": 9}, "steps: expected an integer in [1, 8]"),
        ({"steps": 2.5}, "steps: expected a whole number"),
        ({"steps": float("inf")}, "steps: expected a whole number, got inf"),
        ({"size": float("nan")}, "size: expected a whole number, got nan"),
        ({"layers": '{"up": '}, "layers: expected a JSON block mapping"),
    ],
)
def test_bad_input_is_a_gradio_error_before_any_model_work(handlers, files, change, message) -> None:
    engine = ModelCache(device="cpu")
    local = Handlers(Engine(handlers.engine.output_dir, models=engine, default_model=MODEL, max_steps=8))
    values = dict(
        zip(("model", "gamma", "temperature", "steps", "seed", "layers", "size"), settings(), strict=True)
    )
    content = change.pop("content", files["content"])
    content = files["text"] if content == "text" else content
    values.update(change)
    with pytest.raises(gr.Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        local.transfer(content, files["style"], None, *values.values())
    assert engine.loads == 0


def test_transfer_handler_returns_gallery_before_after_and_pngs(handlers, files) -> None:
    gallery, (before, after), paths, status = handlers.transfer(
        str(files["content"]), str(files["style"]), [str(files["style2"])], *settings()
    )
    assert len(gallery) == len(paths) == 2 and after == paths[0]
    for path in [before, *paths]:
        assert Path(path).is_relative_to(handlers.engine.output_dir)
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE)
    with Image.open(paths[0]) as image:
        assert image.text["stylekit:gamma"] == "0.75" and image.text["stylekit:model"] == MODEL
    assert not np.array_equal(pixels(paths[0]), pixels(paths[1]))  # one output per style
    assert "2 image(s)" in status and f"{SIZE}x{SIZE}" in status


def test_unknown_layers_and_unknown_model_are_shown_with_the_library_message(handlers, files) -> None:
    with pytest.raises(gr.Error, match="layers: 'nope' is neither a preset"):
        handlers.transfer(str(files["content"]), str(files["style"]), None, *settings(layers="nope"))
    with pytest.raises(gr.Error, match="model: cannot load 'no/such-model'"):
        handlers.transfer(str(files["content"]), str(files["style"]), None, *settings(model="no/such-model"))


def test_regions_full_mask_is_plain_transfer_and_each_region_gets_its_style(handlers, files) -> None:
    region_settings = settings()
    del region_settings[4]  # the Regions tab has no seed
    content, style, style2 = str(files["content"]), str(files["style"]), str(files["style2"])
    plain = handlers.transfer(content, style, None, *settings())[2][0]
    plain2 = handlers.transfer(content, style2, None, *settings())[2][0]
    full = handlers.regions(
        content, str(files["white"]), style, None, None, None, None, 0, 0, *region_settings
    )
    assert np.abs(pixels(full[2][0]) - pixels(plain)).max() <= 1
    both = handlers.regions(
        content, str(files["left"]), style, str(files["right"]), style2, None, None, 2, 0, *region_settings
    )
    result = pixels(both[2][0])
    assert result.shape == (SIZE, SIZE, 3) and "1 image(s)" in both[3]
    with Image.open(both[2][0]) as image:  # the regions' own settings are in the PNG too
        assert (image.text["stylekit:feather"], image.text["stylekit:regions"]) == ("2", "2")
    assert np.abs(result - pixels(plain)).mean() > 0.5 and np.abs(result - pixels(plain2)).mean() > 0.5
    with pytest.raises(gr.Error, match=r"regions\[0\].mask: the mask is empty"):
        handlers.regions(content, str(files["black"]), style, None, None, None, None, 0, 0, *region_settings)
    with pytest.raises(gr.Error, match=r"regions\[0\].style: expected a style image"):
        handlers.regions(content, str(files["left"]), None, None, None, None, None, 0, 0, *region_settings)
    with pytest.raises(gr.Error, match="feather: expected an integer >= 0"):
        handlers.regions(content, str(files["left"]), style, None, None, None, None, -1, 0, *region_settings)
    with pytest.raises(gr.Error, match=r"context: expected a number in \[0, 1\]"):
        handlers.regions(content, str(files["left"]), style, None, None, None, None, 0, 1.5, *region_settings)
    # context 1: each region is the whole-image transfer's pixels (within PNG rounding)
    merged = handlers.regions(
        content, str(files["left"]), style, None, None, None, None, 0, 1, *region_settings
    )
    half = SIZE // 2
    assert np.abs(pixels(merged[2][0])[:, : half - 2] - pixels(plain)[:, : half - 2]).max() <= 1
    # a transparent mask reads by its alpha, as in the library (it was flattened to all white)
    left = handlers.regions(
        content, str(files["left"]), style, None, None, None, None, 0, 0, *region_settings
    )
    alpha = handlers.regions(
        content, str(files["alpha_left"]), style, None, None, None, None, 0, 0, *region_settings
    )
    np.testing.assert_array_equal(pixels(alpha[2][0]), pixels(left[2][0]))
    with pytest.raises(gr.Error, match=r"regions\[0\].mask: not a readable mask image"):
        handlers.regions(content, str(files["text"]), style, None, None, None, None, 0, 0, *region_settings)


def test_similarity_and_nearest_styles(handlers, files, tmp_path: Path) -> None:
    paths = [str(files["content"]), str(files["style"]), str(files["content"])]
    table, status = handlers.similarity(paths)
    assert list(table.columns) == ["image", "content.png", "style.png", "content.png"]  # named columns
    matrix = table.iloc[:, 1:].to_numpy(dtype=float)
    assert (
        matrix.shape == (3, 3)
        and np.allclose(matrix, matrix.T)
        and np.allclose(np.diag(matrix), 1, atol=1e-3)
    )
    assert matrix[0, 2] == pytest.approx(1, abs=1e-3) and matrix[0, 1] < matrix[0, 2]
    with pytest.raises(gr.Error, match="expected 2 to 64 images"):
        handlers.similarity([str(files["content"])])
    from stylekit.apps.ui import world_style_gallery

    folder = world_style_gallery(tmp_path / "gallery", styles=3, per_style=2)
    query = sorted(folder.glob("*.png"))[3]
    gallery, _ = handlers.nearest(str(query), str(folder), 4)
    assert len(gallery) == 4 and Path(gallery[0][0]).name == query.name
    scores = [float(caption.rsplit("(", 1)[1].rstrip(")")) for _, caption in gallery]
    assert scores == sorted(scores, reverse=True) and scores[0] == pytest.approx(1, abs=1e-3)


def test_missing_capabilities_say_not_available(handlers, files) -> None:
    if not available("video"):
        with pytest.raises(gr.Error, match="video style transfer is not available"):
            handlers.video(None, str(files["style"]), 8, 4, MODEL, 2)
    if not available("segment"):
        with pytest.raises(gr.Error, match="SAM region masks is not available"):
            handlers.sam_mask(str(files["content"]), [[3, 4, 1]])
    if not available("lora"):
        with pytest.raises(gr.Error, match="LoRA style adapters is not available"):
            handlers.lora(str(files["content"]), None, None, "", MODEL, 2)


@pytest.fixture(scope="module")
def tiny_handlers(tmp_path_factory) -> Handlers:
    engine = Engine(tmp_path_factory.mktemp("tiny"), models=ModelCache(device="cpu"), default_model="tiny-sd")
    return Handlers(engine)


@pytest.mark.skipif(not available("segment"), reason="SAM regions (stylekit.segment) not installed")
def test_clicked_points_make_a_sam_mask(handlers, files) -> None:
    pytest.importorskip("segment_anything")
    from stylekit.segment import SamMasker, build_tiny_sam

    handlers.engine._masker = None
    with pytest.raises(gr.Error, match="points: click at least one point"):
        handlers.sam_mask(str(files["content"]), [])
    handlers.engine._masker = SamMasker(build_tiny_sam())  # random weights: the mask's shape is what counts
    points, preview = handlers.add_point(
        str(files["content"]), [], "include", gr.SelectData(None, {"index": [10, 20], "value": None})
    )
    points, preview = handlers.add_point(
        str(files["content"]), points, "exclude", gr.SelectData(None, {"index": [40, 40], "value": None})
    )
    assert points == [[10, 20, 1], [40, 40, 0]] and preview.size == (64, 64)
    mask = handlers.sam_mask(str(files["content"]), points)
    assert mask.shape == (64, 64, 3) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    corner = gr.SelectData(None, {"index": [5, 5], "value": None})
    box, _ = handlers.add_point(str(files["content"]), [], "box corner", corner)
    with pytest.raises(gr.Error, match="box: expected two corner clicks, got 1"):
        handlers.sam_mask(str(files["content"]), box)
    box, _ = handlers.add_point(
        str(files["content"]), box, "box corner", gr.SelectData(None, {"index": [50, 40], "value": None})
    )
    assert handlers.sam_mask(str(files["content"]), box).shape == (64, 64, 3)
    assert handlers.clear_points(str(files["content"]))[0] == []


@pytest.mark.skipif(not available("video"), reason="video (stylekit.video_cli) not installed")
def test_video_tab_restyles_a_clip(tiny_handlers, files, tmp_path: Path) -> None:
    frames = [Image.fromarray(make_image(seed, 32)) for seed in range(3)]
    clip = tmp_path / "clip.gif"
    frames[0].save(clip, save_all=True, append_images=frames[1:], duration=100)
    output = Path(tiny_handlers.video(str(clip), str(files["style"]), 3, 4, "tiny-sd", 2))
    assert output.suffix == ".mp4" and output.stat().st_size > 0
    assert output.is_relative_to(tiny_handlers.engine.output_dir)
    models = tiny_handlers.engine.models
    loads = models.loads
    tiny_handlers.video(str(clip), str(files["style"]), 2, 4, "tiny-sd", 2)
    assert models.loads == loads and "tiny-sd" in models.loaded()  # the tabs' shared model, not a new load
    with pytest.raises(gr.Error, match="clip: expected a video file"):
        tiny_handlers.video(None, str(files["style"]), 3, 4, "tiny-sd", 2)
    with pytest.raises(gr.Error, match="--style: not an image file") as refused:
        tiny_handlers.video(str(clip), str(files["text"]), 3, 4, "tiny-sd", 2)
    assert "stylekit video" not in str(refused.value)  # the command's prefix is not the app's


@pytest.mark.skipif(not available("lora"), reason="LoRA styles (stylekit.lora_style) not installed")
def test_lora_tab_composes_adapters_with_styleid(tiny_handlers, files, tmp_path: Path) -> None:
    from stylekit.adapters.train_lora import TrainLoRAConfig, run

    data = write_style_images(tmp_path / "data")
    config = TrainLoRAConfig(
        method="blora",
        pretrained_model_name_or_path="tiny-sd",
        instance_data_dir=str(data),
        instance_prompt="a [v]",
        output_dir=str(tmp_path / "out"),
        rank=2,
        max_train_steps=3,
        checkpointing_steps=0,
        learning_rate=5e-2,
    )
    run(config)
    adapter = sorted((tmp_path / "out").rglob("*.safetensors"))[0]
    content, style = str(files["content"]), str(files["style"])
    gallery, status = tiny_handlers.lora(content, style, [str(adapter)], "1.0", "tiny-sd", 2)
    zero, _ = tiny_handlers.lora(content, style, [str(adapter)], "0", "tiny-sd", 2)
    plain = tiny_handlers.transfer(content, style, None, "tiny-sd", 0.75, 1.5, 2, 0, "", 0)[2][0]
    assert "64x64" in status
    assert np.abs(pixels(zero[0][0]) - pixels(plain)).max() <= 1  # weight 0 = no LoRA
    assert np.abs(pixels(gallery[0][0]) - pixels(plain)).max() > 0
    with Image.open(gallery[0][0]) as image:
        assert json.loads(image.text["stylekit:adapters"]) == [adapter.name]
        assert json.loads(image.text["stylekit:adapter_weights"]) == [1.0]
    with pytest.raises(gr.Error, match="weights: expected numbers"):
        tiny_handlers.lora(content, style, [str(adapter)], "strong", "tiny-sd", 2)
    with pytest.raises(gr.Error, match="adapters: expected 1 to"):
        tiny_handlers.lora(content, style, None, "", "tiny-sd", 2)


# ----------------------------------------------------------------------------------------------- live server
@pytest.fixture(scope="module")
def server(engine: Engine, tmp_path_factory):
    demo = build_demo(engine, work_dir=tmp_path_factory.mktemp("app"), examples=False)
    _, url, _ = launch(demo, port=free_port(), block=False, max_file_size="1mb")
    try:
        yield demo, url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return gradio_client.Client(
        server[1], verbose=False, download_files=str(tmp_path_factory.mktemp("downloads"))
    )


def test_client_full_image_transfer(client, files) -> None:
    handle = gradio_client.handle_file
    gallery, compare, paths, status = client.predict(
        handle(str(files["content"])), handle(str(files["style"])), None, *settings(), api_name="/transfer"
    )
    assert len(gallery) == 1 and "1 image(s)" in status
    with Image.open(gallery[0]["image"]) as image:
        assert image.size == (SIZE, SIZE) and image.format == "PNG"


def test_eight_concurrent_requests_complete_with_correct_outputs(client, engine, files, server) -> None:
    handle = gradio_client.handle_file
    expected = {}
    for gamma in (0.3, 0.9):
        request = engine.request(model=MODEL, gamma=gamma, steps=STEPS, size=SIZE)
        expected[gamma] = np.asarray(
            engine.transfer(files["content"], [files["style"]], request).images[0], np.int16
        )
    assert np.abs(expected[0.3] - expected[0.9]).max() > 0
    gammas = [0.3, 0.9] * 4
    jobs = [
        client.submit(
            handle(str(files["content"])),
            handle(str(files["style"])),
            None,
            *settings(gamma=g),
            api_name="/transfer",
        )
        for g in gammas
    ]
    for gamma, job in zip(gammas, jobs, strict=True):
        gallery = job.result(timeout=240)[0]
        assert np.abs(pixels(gallery[0]["image"]) - expected[gamma]).max() <= 1
    assert engine.models.loads == 1  # one shared model for every request


def test_server_keeps_serving_after_failures(client, engine, files, monkeypatch) -> None:
    handle = gradio_client.handle_file
    with pytest.raises(Exception, match="not an image file: notes.txt"):
        client.predict(
            handle(str(files["text"])), handle(str(files["style"])), None, *settings(), api_name="/transfer"
        )

    def broken(name: str):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(engine.models, "get", broken)
    with pytest.raises(Exception, match="RuntimeError: simulated device failure"):
        client.predict(
            handle(str(files["content"])),
            handle(str(files["style"])),
            None,
            *settings(),
            api_name="/transfer",
        )
    monkeypatch.undo()
    gallery = client.predict(
        handle(str(files["content"])), handle(str(files["style"])), None, *settings(), api_name="/transfer"
    )[0]
    assert len(gallery) == 1


def test_search_folder_must_be_one_offered(client, files) -> None:
    handle = gradio_client.handle_file
    with pytest.raises(Exception):  # noqa: B017 - Gradio refuses values outside the dropdown's choices
        client.predict(handle(str(files["style"])), "/etc", 4, api_name="/nearest")
