"""Which attention blocks carry content and which carry style? Two per-block probes on the world.

    python -m stylekit.adapters.lora_block_probe --mode lora --model mini     # trained probe (default)
    python -m stylekit.adapters.lora_block_probe --mode swap --model mini     # training-free probe

``--mode lora``: a *subject* set (one shape, lone object, one style A) and a *style* set (a held-out composite
style B, varied contents) are rendered; one LoRA is trained on every attention block for each (the stock
DreamBooth-LoRA recipe, prompt ``PROMPT`` = ``"a [v] on paper"``). Then each adapter is applied restricted to a single block (the
other blocks' tensors removed from the file) and ``n`` images are generated from ``PROMPT`` (fixed seeds):

- ``subject_shape_acc[block]``: share of images whose shape the world content probe reads as the subject's
  (chance 0.1) with the subject adapter on that block only; ``subject_style_a[block]``: how far those images
  moved toward the subject images' style A (``style_score(out, base image, subject image)``) — style leakage;
- ``style_score_b[block]``: ``style_score(out, base image, style image)`` with the style adapter on that block
  only; ``style_shape_acc[block]``: subject-shape rate of those images (content leakage; the style set has
  varied shapes, so this stays near chance).

A content block shows a high ``subject_shape_acc`` with little ``subject_style_a``; a style block a high
``style_score_b``. The same numbers for the full adapters (``all``) and the base model are reported.

``--mode swap``: for ``n`` held-out world scenes, the image is generated from its caption A, except that one attention block's
cross-attention reads caption B instead, where B changes only the style (another composite style, same
content) or only the content (another shape, same style). A style probe and a content probe (small CNNs
trained on rendered world images, ``stylekit.metrics.train_probe``) read the result:

- ``style_flip[block]``: share of images whose palette/texture/stroke the style probe reads as B's
  (mean over the three heads) when only that block sees the style-swapped caption;
- ``content_flip[block]``: share of images whose first shape the content probe reads as B's when only that
  block sees the content-swapped caption.

A block with a high style flip and a low content flip is a style block, and the reverse a content block.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file

from stylekit.data import (
    caption,
    held_out_styles,
    render_samples,
    sample_content,
    sample_scenes,
    sample_style,
    style_set,
)
from stylekit.data.specs import ContentSpec, StyleSpec
from stylekit.lora import INFO_NAME, LORA_WEIGHT_NAME, attention_blocks, block_of
from stylekit.metrics import content_targets, style_score_components, style_targets, train_probe

PROMPT = "a [v] on paper"


def write_images(folder: Path, images: np.ndarray) -> Path:
    """Save uint8 ``(N, S, S, 3)`` images as ``folder/00.png``, ... and return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


def world_sets(seed: int, n_train: int, size: int, root: Path) -> dict[str, Any]:
    """A subject (one shape, lone object, style A), a held-out style B (test part of the ``style`` split,
    varied contents) and the auxiliary sets B4M fits (the subject's poses in other styles, other contents
    in style A), rendered at ``size`` and written under ``root``."""
    rng = np.random.default_rng([seed, 61])
    held = held_out_styles("style")
    style_b = StyleSpec.from_index(int(held[int(rng.integers(0, len(held)))]))
    while True:
        style_a = sample_style(rng)
        if style_a.palette != style_b.palette and style_a.texture != style_b.texture:
            break
    shape = int(rng.integers(0, 10))
    subject_contents = [sample_content(rng, shapes=(shape,)) for _ in range(n_train)]
    subject_styles = [sample_style(rng, style_a.key) for _ in range(n_train)]
    subject = render_samples(subject_contents, subject_styles, size).images
    style = style_set(rng, n_train, style_b, size).images
    other_styles = render_samples(subject_contents, [sample_style(rng) for _ in range(n_train)], size).images
    other_contents = render_samples(
        [sample_content(rng) for _ in range(n_train)], subject_styles, size
    ).images
    return {
        "shape": shape,
        "style_a": style_a.describe(),
        "style_b": style_b.describe(),
        "style_keys": [style_a.key, style_b.key],
        "subject": subject,
        "style": style,
        "dirs": {
            "subject": write_images(root / "subject", subject),
            "style": write_images(root / "style", style),
            "other_styles": write_images(root / "other_styles", other_styles),
            "other_contents": write_images(root / "other_contents", other_contents),
        },
    }


def restrict_adapter(folder: Path, block: str, out: Path) -> Path:
    """A copy of an adapter folder holding only ``block``'s tensors."""
    out.mkdir(parents=True, exist_ok=True)
    state = load_file(str(folder / LORA_WEIGHT_NAME))
    save_file({k: v for k, v in state.items() if block_of(k) == block}, str(out / LORA_WEIGHT_NAME))
    if (folder / INFO_NAME).is_file():
        (out / INFO_NAME).write_text((folder / INFO_NAME).read_text())
    return out


@torch.no_grad()
def generate(pipe: Any, adapter: Path | None, n: int, steps: int, guidance: float, seed: int) -> np.ndarray:
    """uint8 images of ``PROMPT`` (seed + i each) with ``adapter`` applied (None: the base model)."""
    from stylekit.lora_style import LoRAStyle

    generators = [torch.Generator().manual_seed(seed + i) for i in range(n)]
    call = dict(num_inference_steps=steps, guidance_scale=guidance, generator=generators, output_type="np")
    if adapter is None:
        images = pipe([PROMPT] * n, **call).images
    else:
        with LoRAStyle(adapters={"probe": adapter}).applied(pipe):
            images = pipe([PROMPT] * n, **call).images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def style_toward(outputs: np.ndarray, base: np.ndarray, references: np.ndarray) -> float:
    """Mean ``style_score(output_i, base_i, reference_j)`` over images i and references j."""
    k = len(references)
    scores = style_score_components(
        np.repeat(outputs, k, axis=0),
        np.repeat(base, k, axis=0),
        np.tile(references, (len(outputs), 1, 1, 1)),
    )
    return float(scores["style"].mean())


def lora_probe(pipe: Any, args: argparse.Namespace, start: float) -> dict[str, Any]:
    """The trained per-block probe (module docstring); returns the report."""
    from stylekit.adapters.train_lora import TrainLoRAConfig, run

    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    root = Path(tempfile.mkdtemp(prefix="lora_block_probe_"))
    sets = world_sets(args.seed, 4, size, root / "data")
    common = dict(
        method="dreambooth",
        pretrained_model_name_or_path=args.model,
        instance_prompt=PROMPT,
        rank=args.rank,
        max_train_steps=args.train_steps,
        learning_rate=args.lr,
        checkpointing_steps=0,
        seed=args.seed,
        train_batch_size=2,
    )
    adapters = {}
    for name in ("subject", "style"):
        run(
            TrainLoRAConfig(
                instance_data_dir=str(sets["dirs"][name]),
                output_dir=str(root / name),
                adapter_role="content" if name == "subject" else "style",
                **common,
            )
        )
        adapters[name] = root / name / ("content" if name == "subject" else "style")
        _log(start, f"trained the {name} adapter")
    probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    _log(start, "content probe trained")
    g = (args.n, args.steps, args.guidance, args.seed)
    base = generate(pipe, None, *g)

    def shape_acc(images: np.ndarray) -> float:
        return round(float((probe.predict(images)["shape"] == sets["shape"]).mean()), 4)

    def measure(subject: Path, style: Path) -> dict[str, float]:
        subject_images = generate(pipe, subject, *g)
        style_images = generate(pipe, style, *g)
        return {
            "subject_shape_acc": shape_acc(subject_images),
            "subject_style_a": round(style_toward(subject_images, base, sets["subject"]), 4),
            "style_score_b": round(style_toward(style_images, base, sets["style"]), 4),
            "style_shape_acc": shape_acc(style_images),
        }

    report: dict[str, Any] = {
        "base_shape_acc": shape_acc(base),
        "all": measure(adapters["subject"], adapters["style"]),
    }
    blocks: dict[str, dict[str, float]] = {}
    for block in attention_blocks(pipe.unet):
        _log(start, block)
        blocks[block] = measure(
            restrict_adapter(adapters["subject"], block, root / "only" / block / "subject"),
            restrict_adapter(adapters["style"], block, root / "only" / block / "style"),
        )
    report["blocks"] = blocks
    report["subject"] = {"shape": sets["shape"], "style_a": sets["style_a"], "style_b": sets["style_b"]}
    return report


def _log(start: float, text: str) -> None:
    print(f"[{time.perf_counter() - start:.0f}s] {text}", file=sys.stderr, flush=True)


def swap_scenes(seed: int, n: int) -> dict[str, list[Any]]:
    """``n`` held-out scenes (test part of ``content_style``) with a style-swapped and a content-swapped twin."""
    rng = np.random.default_rng([seed, 51])
    contents, styles = sample_scenes(rng, n, "content_style", "test")
    other_styles: list[StyleSpec] = []
    other_contents: list[ContentSpec] = []
    for content, style in zip(contents, styles, strict=True):
        while True:
            s = sample_style(rng)
            if s.palette != style.palette and s.texture != style.texture and s.stroke != style.stroke:
                break
        other_styles.append(s)
        shapes = [o.shape for o in content.objects]
        while True:
            first = int(rng.integers(0, 10))
            if first != shapes[0]:
                break
        other_contents.append(sample_content(rng, shapes=(first, *shapes[1:])))
    return {
        "contents": contents,
        "styles": styles,
        "other_styles": other_styles,
        "other_contents": other_contents,
    }


@torch.no_grad()
def generate_swapped(
    pipe: Any,
    prompts_a: list[str],
    prompts_b: list[str],
    block: str | None,
    steps: int,
    guidance: float,
    seed: int,
) -> np.ndarray:
    """uint8 images from ``prompts_a`` where ``block``'s cross-attention reads ``prompts_b`` (None: no swap)."""
    device = pipe.unet.device
    embeds_a, uncond = pipe.encode_prompt(prompts_a, device, 1, True, negative_prompt=[""] * len(prompts_a))
    embeds_b, _ = pipe.encode_prompt(prompts_b, device, 1, False)
    swapped = torch.cat([uncond, embeds_b])
    handle = None
    if block is not None:
        module = pipe.unet.get_submodule(block)

        def hook(_: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            kwargs = dict(kwargs)
            kwargs["encoder_hidden_states"] = swapped.to(kwargs["encoder_hidden_states"].dtype)
            return args, kwargs

        handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts_a))]
        images = pipe(
            prompt_embeds=embeds_a,
            negative_prompt_embeds=uncond,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            output_type="np",
        ).images
    finally:
        if handle is not None:
            handle.remove()
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def swap_probe(pipe: Any, args: argparse.Namespace, start: float) -> dict[str, Any]:
    """The training-free prompt-swap probe (module docstring); returns the report."""
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    scenes = swap_scenes(args.seed, args.n)
    base = [caption(c, s) for c, s in zip(scenes["contents"], scenes["styles"], strict=True)]
    style_b = [caption(c, s) for c, s in zip(scenes["contents"], scenes["other_styles"], strict=True)]
    content_b = [caption(c, s) for c, s in zip(scenes["other_contents"], scenes["styles"], strict=True)]
    style_probe = train_probe("style", steps=args.probe_steps, size=size, seed=args.seed)
    content_probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    _log(start, "probes trained")
    style_labels = style_targets(scenes["other_styles"])
    shape_labels = content_targets(scenes["other_contents"])["shape"]

    def style_flip(images: np.ndarray) -> float:
        return round(style_probe.accuracy(images, style_labels)["mean"], 4)

    def content_flip(images: np.ndarray) -> float:
        return round(float((content_probe.predict(images)["shape"] == shape_labels).mean()), 4)

    g = (args.steps, args.guidance, args.seed)
    plain = generate_swapped(pipe, base, base, None, *g)
    report: dict[str, Any] = {
        "baseline": {"style_flip": style_flip(plain), "content_flip": content_flip(plain)}
    }
    report["full_swap"] = {
        "style_flip": style_flip(generate_swapped(pipe, style_b, style_b, None, *g)),
        "content_flip": content_flip(generate_swapped(pipe, content_b, content_b, None, *g)),
    }
    blocks: dict[str, dict[str, float]] = {}
    for block in attention_blocks(pipe.unet):
        _log(start, block)
        blocks[block] = {
            "style_flip": style_flip(generate_swapped(pipe, base, style_b, block, *g)),
            "content_flip": content_flip(generate_swapped(pipe, base, content_b, block, *g)),
        }
    report["blocks"] = blocks
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run a probe; prints and returns the JSON report."""
    from stylekit.models import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("lora", "swap"), default="lora")
    parser.add_argument("--model", default="mini")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    probe = lora_probe if args.mode == "lora" else swap_probe
    report = {"benchmark": f"lora_block_probe_{args.mode}", "model": args.model, "n": args.n}
    report.update(probe(pipe, args, start))
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
