"""Shared fixtures: offline tiny pipelines and small deterministic test images."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np
import pytest
import torch

# Tiny models are overhead-bound: one thread is as fast and far steadier on a shared 2-core machine.
torch.set_num_threads(1)


def make_image(seed: int, size: int = 64) -> np.ndarray:
    """A smooth random RGB image (HxWx3 uint8) with a few blobs, so VAE latents are non-trivial."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    image = np.zeros((size, size, 3))
    for _ in range(4):
        cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.1, 0.3)
        image[((x - cx) ** 2 + (y - cy) ** 2) < r * r] = rng.uniform(0, 1, 3)
    image += 0.05 * rng.standard_normal(image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_images(folder: Path, images: np.ndarray) -> Path:
    """Save HxWx3 uint8 images as ``00.png``, ``01.png``, ... in ``folder`` (created); returns it."""
    import PIL.Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        PIL.Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


def write_style_images(folder: Path) -> Path:
    """Two 64 px world images of one style (seed 0): the training set of the tiny LoRA runs."""
    from stylekit.data import style_set

    return write_images(folder, style_set(np.random.default_rng(0), 2, size=64).images)


@pytest.fixture(scope="session")
def tiny_sd():
    from stylekit import load_pipeline

    pipe = load_pipeline("tiny-sd")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sdxl():
    from stylekit import load_pipeline

    pipe = load_pipeline("tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_sd_v():
    from stylekit import load_pipeline

    pipe = load_pipeline("tiny-sd-v")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def images():
    return [make_image(seed) for seed in range(4)]


def write_wider_lora(source: Path, target: Path) -> Path:
    """A copy of the LoRA folder ``source`` in ``target`` whose down projections take 3 more inputs: the same
    module names, other widths (as a LoRA for another architecture would have)."""
    from safetensors.torch import load_file, save_file

    name = "pytorch_lora_weights.safetensors"
    state = load_file(str(Path(source) / name))
    Path(target).mkdir(parents=True, exist_ok=True)
    save_file(
        {
            k: torch.zeros(v.shape[0], v.shape[1] + 3, *v.shape[2:])
            if ".down." in k or ".lora_A." in k
            else v
            for k, v in state.items()
        },
        str(Path(target) / name),
    )
    return Path(target)
