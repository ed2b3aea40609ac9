"""A style per region: StyleID + ``RegionMask`` on the bundled ``mini`` model (offline, about 15 s on a CPU).

    python examples/regions.py [--output DIR] [--steps N]

The content is a scene from the synthetic world, whose renderer also gives each object's exact mask.
The objects get one style and the background another: one call per (mask, style), each keeping the
content outside its mask (the content's inversion is reused from the pipeline's cache), composited
with the masks. Writes ``DIR/regions.png``: content | mask | object style | background style | result.
User masks work the same way (any image, white = styled); with the [sam] extra, ``stylekit segment``
makes them from clicked points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit import StyleCondition, load_pipeline
from stylekit.data import sample_world
from stylekit.regions import RegionMask

HERE = Path(__file__).resolve().parent
SIZE = 64  # mini's native resolution


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

    world = sample_world(np.random.default_rng(3), 3, size=SIZE)
    content = Image.fromarray(world.images[0])
    objects = world.masks[0].any(axis=0)  # (H, W) bool: every object of the scene
    object_style, background_style = (Image.fromarray(image) for image in world.images[1:])

    pipe = load_pipeline("mini")
    pipe.set_progress_bar_config(disable=True)
    outputs = []
    for mask, style in ((objects, object_style), (~objects, background_style)):
        result = pipe(
            content_image=content,
            style=StyleCondition(image=style),
            conditioners=[RegionMask(mask.astype(np.float32), feather=1)],
            num_inference_steps=args.steps,
        )
        outputs.append(np.asarray(result.images[0], dtype=np.float32))
    weight = objects[..., None].astype(np.float32)
    composite = Image.fromarray(np.round(weight * outputs[0] + (1 - weight) * outputs[1]).astype(np.uint8))

    row = [
        content,
        Image.fromarray(objects.astype(np.uint8) * 255),
        object_style,
        background_style,
        composite,
    ]
    sheet = Image.new("RGB", (128 * len(row), 128), "white")
    for index, image in enumerate(row):
        sheet.paste(image.convert("RGB").resize((128, 128), Image.Resampling.NEAREST), (index * 128, 0))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "regions.png"
    sheet.save(path)
    print(f"objects and background styled separately -> {path}")


if __name__ == "__main__":
    main()
