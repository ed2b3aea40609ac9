"""``build_demo``: the Gradio Blocks of the stylekit app (tabs: Image, Regions, Video, LoRA, Style search).

No model is loaded here: the :class:`~stylekit.apps.engine.Engine` loads models on the first request
and shares them between tabs. Every heavy button joins one queue (``concurrency_id="gpu"``) whose
concurrency limit is ``concurrency_limit`` (1 by default: one request on the GPU at a time).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from stylekit.apps.engine import MAX_SEARCH_RESULTS, Engine, ModelCache
from stylekit.apps.handlers import Handlers
from stylekit.capabilities import available

GPU_QUEUE = "gpu"
IMAGE_TYPES = ["image"]
MODEL_CHOICES = ("mini", "tiny-sd", "sd15", "sd21", "sdxl")
_OWN_TEMP_DIR: str | None = None  # the GRADIO_TEMP_DIR value this module set (a user's own value is kept)


def checked_image(**kwargs: Any) -> gr.Image:
    """A ``gr.Image`` (``type="filepath"``) that refuses a non-image upload with a clear message.

    Gradio's own preprocessing would fail inside PIL with an opaque error; this checks the upload with
    ``stylekit.images.load_image`` first. (Wrapping the instance's ``preprocess`` rather than subclassing
    ``gr.Image``: Gradio writes a ``.pyi`` stub beside the module of every component subclass.)
    """
    component = gr.Image(type="filepath", **kwargs)
    preprocess = component.preprocess
    label = str(kwargs.get("label") or "image")

    def checked(payload: Any) -> Any:
        if payload is not None and getattr(payload, "path", None):
            from stylekit.images import InputImageError, load_image

            name = getattr(payload, "orig_name", None) or Path(payload.path).name
            try:
                load_image(payload.path, label)
            except InputImageError:
                raise gr.Error(
                    f"{label}: not an image file: {name}; expected PNG, JPEG, WEBP, BMP, TIFF or GIF",
                    print_exception=False,
                ) from None
        return preprocess(payload)

    component.preprocess = checked  # type: ignore[method-assign]
    return component


def app_work_dir(work_dir: str | Path | None = None) -> Path:
    """The app's own folder (created): uploads and Gradio's cache in ``gradio/``, results in ``outputs/``.

    Sets ``GRADIO_TEMP_DIR`` to ``work_dir/gradio`` unless the user set it, so Gradio writes nowhere else.
    """
    global _OWN_TEMP_DIR
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="stylekit-app-"))
    folder.mkdir(parents=True, exist_ok=True)
    folder = folder.resolve()
    current = os.environ.get("GRADIO_TEMP_DIR")
    if current is None or current == _OWN_TEMP_DIR:
        _OWN_TEMP_DIR = str(folder / "gradio")
        os.environ["GRADIO_TEMP_DIR"] = _OWN_TEMP_DIR
    Path(os.environ["GRADIO_TEMP_DIR"]).mkdir(parents=True, exist_ok=True)
    return folder


def world_examples(folder: Path) -> list[list[str]]:
    """[content, style] example pairs rendered from the synthetic world into ``folder`` (once)."""
    pairs = []
    for index, (content_seed, style_seed) in enumerate(((1, 2), (3, 4))):
        content, style = folder / f"content_{index}.png", folder / f"style_{index}.png"
        if not (content.exists() and style.exists()):
            _save_world_image(content, content_seed)
            _save_world_image(style, style_seed)
        pairs.append([str(content), str(style)])
    return pairs


def world_style_gallery(folder: Path, styles: int = 8, per_style: int = 3) -> Path:
    """A folder of world images (``per_style`` contents in each of ``styles`` styles) to search in."""
    import numpy as np

    from stylekit.data import sample_styles, style_phrase, style_set

    folder.mkdir(parents=True, exist_ok=True)
    if len(list(folder.glob("*.png"))) >= styles * per_style:
        return folder
    rng = np.random.default_rng(0)
    for s, spec in enumerate(sample_styles(rng, styles)):
        sample = style_set(rng, per_style, style=spec, size=64)
        words = "-".join(style_phrase(spec).replace(",", "").split()[:3])
        for i, array in enumerate(sample.images):
            Image.fromarray(array).save(folder / f"style{s}_{words}_{i}.png")
    return folder


def _save_world_image(path: Path, seed: int) -> None:
    import numpy as np

    from stylekit.data import sample_world

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sample_world(np.random.default_rng(seed), 1, size=64).images[0]).save(path)


def _settings(default_model: str, max_steps: int, with_seed: bool = True) -> list[Any]:
    """Model / gamma / temperature / steps / [seed] / layers / size inputs in an accordion."""
    from stylekit.attention.targeting import LAYER_PRESETS

    with gr.Accordion("Settings", open=False):
        model = gr.Dropdown(
            choices=list(dict.fromkeys((default_model, *MODEL_CHOICES))),
            value=default_model,
            allow_custom_value=True,
            label="Model (preset, hub id or diffusers folder)",
        )
        with gr.Row():
            gamma = gr.Slider(0.0, 1.0, value=0.75, step=0.05, label="γ (query preservation)")
            temperature = gr.Slider(0.1, 3.0, value=1.5, step=0.1, label="Temperature")
        with gr.Row():
            steps = gr.Slider(1, max_steps, value=min(20, max_steps), step=1, label="Steps")
            seed = gr.Number(value=0, precision=0, label="Seed", visible=with_seed)
        with gr.Row():
            layers = gr.Dropdown(
                choices=["", *LAYER_PRESETS],
                value="",
                allow_custom_value=True,
                label="Layers (preset, names or JSON; empty = the model's default)",
            )
            size = gr.Number(value=0, precision=0, label="Output size in px (0 = model's native size)")
    return (
        [model, gamma, temperature, steps, seed, layers, size]
        if with_seed
        else [
            model,
            gamma,
            temperature,
            steps,
            layers,
            size,
        ]
    )


def _unavailable(name: str, summary: str) -> None:
    if not available(name):
        gr.Markdown(f"**{summary} is not available in this installation.** The button reports why.")


def build_demo(
    engine: Engine | None = None,
    *,
    work_dir: str | Path | None = None,
    default_model: str | None = None,
    device: str | None = None,
    dtype: str = "auto",
    max_steps: int = 100,
    concurrency_limit: int = 1,
    search_folders: Sequence[str | Path] | None = None,
    examples: bool = True,
) -> gr.Blocks:
    """Build the app (no model is loaded until a request needs one).

    Args:
        engine: the engine to use (tests inject one); None builds one on ``work_dir/outputs``.
        work_dir: the app's own folder for uploads, Gradio's cache and results (default: a new temp folder).
        default_model: model preselected in every tab (default: ``mini`` when bundled, else ``tiny-sd``).
        device, dtype: where models run (None: CUDA when available) and in which precision.
        max_steps: the largest number of DDIM steps a request may ask for.
        concurrency_limit: requests running at once on the shared GPU queue.
        search_folders: folders offered in Style search (default: a gallery rendered from the world).
        examples: show example inputs rendered from the synthetic world.

    Returns:
        A ``gr.Blocks``; ``demo.stylekit_engine`` and ``demo.stylekit_work_dir`` give the engine and folder.
        Launch it with :func:`stylekit.apps.launch` (safe defaults) or ``demo.launch(...)``.
    """
    folder = app_work_dir(work_dir)
    if engine is None:
        engine = Engine(
            folder / "outputs",
            models=ModelCache(device=device, dtype=dtype),
            default_model=default_model,
            max_steps=max_steps,
        )
    handlers = Handlers(engine)
    folders = [
        str(Path(f).resolve()) for f in (search_folders or [world_style_gallery(folder / "world-styles")])
    ]
    heavy = {"concurrency_id": GPU_QUEUE, "concurrency_limit": concurrency_limit}
    model_default = engine.default_model
    max_steps = engine.max_steps

    with gr.Blocks(title="stylekit", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# stylekit\nDiffusion style transfer (StyleID attention injection) on diffusers models.")
        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row():
                    content = checked_image(label="Content", elem_id="content")
                    style = checked_image(label="Style", elem_id="style")
                more_styles = gr.File(
                    file_count="multiple",
                    file_types=IMAGE_TYPES,
                    label="More styles (optional, one output each)",
                )
                settings = _settings(model_default, max_steps)
                run = gr.Button("Stylize", variant="primary", elem_id="run-image")
                with gr.Row():
                    gallery = gr.Gallery(label="Results", format="png", elem_id="results", columns=4)
                    compare = gr.ImageSlider(label="Before / after", type="filepath", format="png")
                files = gr.File(label="Download (PNG with settings)", file_count="multiple")
                status = gr.Markdown(elem_id="status-image")
                if examples:
                    gr.Examples(
                        world_examples(folder / "examples"), inputs=[content, style], cache_examples=False
                    )
                run.click(
                    handlers.transfer,
                    inputs=[content, style, more_styles, *settings],
                    outputs=[gallery, compare, files, status],
                    api_name="transfer",
                    **heavy,
                )

            with gr.Tab("Regions", id="regions"):
                gr.Markdown(
                    "A style per region: upload a mask (white = styled) with each style. "
                    "With SAM installed, click points (or two box corners) on the content and press "
                    "*Mask from points* to fill mask 1."
                )
                _unavailable("segment", "SAM (click-to-mask)")
                points = gr.State([])
                with gr.Row():
                    region_content = checked_image(label="Content", elem_id="region-content")
                    preview = gr.Image(label="Clicked points", interactive=False)
                with gr.Row():
                    point_label = gr.Radio(
                        ["include", "exclude", "box corner"], value="include", label="Click adds"
                    )
                    sam_button = gr.Button("Mask from points (SAM)")
                    clear_button = gr.Button("Clear points")
                region_inputs = []
                with gr.Row():
                    for index in range(1, 4):
                        with gr.Column():
                            # image_mode=None: the file as uploaded, so a mask's alpha channel reaches
                            # the library's mask rules (Gradio's "L" conversion flattens transparency)
                            mask = checked_image(label=f"Mask {index}", image_mode=None)
                            region_style = checked_image(label=f"Style {index}")
                            region_inputs += [mask, region_style]
                feather = gr.Slider(0, 16, value=2, step=1, label="Feather (pixels, inward)")
                context = gr.Slider(
                    0,
                    1,
                    value=0,
                    step=0.1,
                    label="Whole-image context (1 = keep small regions' full style; 0 = blend with the content)",
                )
                region_settings = _settings(model_default, max_steps, with_seed=False)
                region_run = gr.Button("Stylize regions", variant="primary")
                with gr.Row():
                    region_gallery = gr.Gallery(label="Result", format="png", columns=2)
                    region_compare = gr.ImageSlider(label="Before / after", type="filepath", format="png")
                region_files = gr.File(label="Download", file_count="multiple")
                region_status = gr.Markdown()
                region_content.select(
                    handlers.add_point,
                    inputs=[region_content, points, point_label],
                    outputs=[points, preview],
                    concurrency_limit=None,
                )
                clear_button.click(
                    handlers.clear_points,
                    inputs=[region_content],
                    outputs=[points, preview],
                    concurrency_limit=None,
                )
                sam_button.click(
                    handlers.sam_mask, inputs=[region_content, points], outputs=[region_inputs[0]], **heavy
                )
                region_run.click(
                    handlers.regions,
                    inputs=[region_content, *region_inputs, feather, context, *region_settings],
                    outputs=[region_gallery, region_compare, region_files, region_status],
                    api_name="regions",
                    **heavy,
                )

            with gr.Tab("Video", id="video"):
                _unavailable("video", "Video style transfer")
                with gr.Row():
                    clip = gr.Video(label="Clip", sources=["upload"])
                    video_style = checked_image(label="Style")
                with gr.Row():
                    frames = gr.Slider(2, 64, value=16, step=1, label="Frames (first N of the clip)")
                    window = gr.Slider(4, 16, value=8, step=1, label="Window (frames attended together)")
                video_model = gr.Textbox(value=model_default, label="Model")
                video_steps = gr.Slider(1, max_steps, value=min(20, max_steps), step=1, label="Steps")
                video_run = gr.Button("Stylize video", variant="primary")
                video_out = gr.Video(label="Result (mp4)")
                video_run.click(
                    handlers.video,
                    inputs=[clip, video_style, frames, window, video_model, video_steps],
                    outputs=[video_out],
                    api_name="video",
                    **heavy,
                )

            with gr.Tab("LoRA", id="lora"):
                _unavailable("lora", "LoRA styles")
                with gr.Row():
                    lora_content = checked_image(label="Content")
                    lora_style = checked_image(label="Style reference (optional)")
                adapters = gr.File(
                    file_count="multiple", file_types=[".safetensors"], label="Adapters (.safetensors)"
                )
                adapter_weights = gr.Textbox(label="Weights per adapter (e.g. 1.0, 0.6)", value="")
                lora_model = gr.Textbox(value=model_default, label="Model")
                lora_steps = gr.Slider(1, max_steps, value=min(20, max_steps), step=1, label="Steps")
                lora_run = gr.Button("Stylize with LoRA", variant="primary")
                lora_out = gr.Gallery(label="Result", format="png")
                lora_status = gr.Markdown()
                lora_run.click(
                    handlers.lora,
                    inputs=[lora_content, lora_style, adapters, adapter_weights, lora_model, lora_steps],
                    outputs=[lora_out, lora_status],
                    api_name="lora",
                    **heavy,
                )

            with gr.Tab("Style search", id="search"):
                gr.Markdown("Style similarity from the bundled style extractor (cosine of style embeddings).")
                compare_files = gr.File(
                    file_count="multiple", file_types=IMAGE_TYPES, label="Images to compare"
                )
                compare_run = gr.Button("Compare styles")
                table = gr.Dataframe(label="Similarity", interactive=False)
                compare_status = gr.Markdown()
                compare_run.click(
                    handlers.similarity,
                    inputs=[compare_files],
                    outputs=[table, compare_status],
                    api_name="similarity",
                    **heavy,
                )
                with gr.Row():
                    query = checked_image(label="Query style")
                    with gr.Column():
                        folder_choice = gr.Dropdown(folders, value=folders[0], label="Search in folder")
                        top_k = gr.Slider(1, MAX_SEARCH_RESULTS, value=8, step=1, label="Results")
                        search_run = gr.Button("Find nearest styles")
                nearest = gr.Gallery(label="Nearest styles", columns=8)
                search_status = gr.Markdown()
                search_run.click(
                    handlers.nearest,
                    inputs=[query, folder_choice, top_k],
                    outputs=[nearest, search_status],
                    api_name="nearest",
                    **heavy,
                )
        gr.Markdown(
            f"Default model `{model_default}`; models load on first use and are shared by every tab. "
            f"Results are written under `{folder}`."
        )
    demo.queue(default_concurrency_limit=concurrency_limit, max_size=64)
    demo.stylekit_engine = engine  # type: ignore[attr-defined]
    demo.stylekit_work_dir = folder  # type: ignore[attr-defined]
    demo.stylekit_search_folders = folders  # type: ignore[attr-defined]
    return demo
