"""Image style transfer with StyleID on the bundled ``mini`` model (offline, about 10 s on a CPU).

    python examples/image_transfer.py [--output DIR] [--steps N]

Stylizes ``examples/images/content.png`` with ``examples/images/style.png`` and with a second style
rendered from the synthetic world, in one call (each image is inverted once), and writes
``DIR/image_transfer.png``: content | style | result, one row per style.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit import StyleCondition, load_pipeline
from stylekit.data import sample_world

HERE = Path(__file__).resolve().parent


def sheet(rows: list[list[Image.Image]], size: int) -> Image.Image:
    """Images laid out in a grid, each resized to ``size`` x ``size``."""
    out = Image.new("RGB", (size * len(rows[0]), size * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            out.paste(
                image.convert("RGB").resize((size, size), Image.Resampling.NEAREST), (c * size, r * size)
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "output", help="output folder (examples/output)"
    )
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps (25)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: mini is overhead-bound)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    content = Image.open(HERE / "images" / "content.png")
    styles = [
        Image.open(HERE / "images" / "style.png"),
        Image.fromarray(sample_world(np.random.default_rng(7), 1, size=64).images[0]),
    ]
    pipe = load_pipeline("mini")  # bundled, offline; any diffusers id or folder works the same way
    pipe.set_progress_bar_config(disable=True)
    result = pipe(
        content_image=content,
        style=[StyleCondition(image=style) for style in styles],
        gamma=0.75,
        temperature=1.5,
        num_inference_steps=args.steps,
    )
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "image_transfer.png"
    sheet([[content, style, image] for style, image in zip(styles, result.images, strict=True)], 128).save(
        path
    )
    print(f"{len(result.images)} stylized images ({result.unet_evals} UNet evaluations) -> {path}")


if __name__ == "__main__":
    main()
