"""Train a tiny content/style LoRA (B-LoRA) on the bundled ``mini`` model and use it (offline, about
20 s on a CPU).

    python examples/lora.py [--output DIR] [--train-steps N] [--steps N]

Renders 4 images of one style from the synthetic world (different contents), trains a rank-4 B-LoRA on
them in-process with ``stylekit.adapters.train_lora.main`` (the same as ``accelerate launch -m
stylekit.adapters.train_lora ...``; the adapters go to a temporary folder: ``content/`` and ``style/``),
then generates with ``LoRAStyle``: text to image ("a [v]") without and with both adapters, and StyleID on a
world content image with a training image as the reference, without and with the style adapter in the
same call. Writes ``DIR/lora.png``: two training images | "a [v]" without | with the LoRAs | content |
StyleID | StyleID + style LoRA.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit import StyleCondition, load_pipeline
from stylekit.adapters import train_lora
from stylekit.data import sample_world, style_set
from stylekit.lora_style import LoRAStyle

HERE = Path(__file__).resolve().parent
SIZE = 64  # mini's native resolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "output", help="output folder (examples/output)"
    )
    parser.add_argument("--train-steps", type=int, default=150, help="LoRA training steps (150)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the generations (20)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: mini is overhead-bound)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(4)
    training = [Image.fromarray(image) for image in style_set(rng, 4, size=SIZE).images]
    content = Image.fromarray(sample_world(np.random.default_rng(2), 1, size=SIZE).images[0])

    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "images", Path(tmp) / "lora"
        data.mkdir()
        for index, image in enumerate(training):
            image.save(data / f"{index}.png")
        status = train_lora.main(
            [
                "--method", "blora",
                "--pretrained_model_name_or_path", "mini",
                "--instance_data_dir", str(data),
                "--instance_prompt", "a [v]",
                "--output_dir", str(out),
                "--rank", "4",
                "--learning_rate", "2e-2",
                "--max_train_steps", str(args.train_steps),
                "--checkpointing_steps", "0",
                "--seed", "0",
                "--num_threads", str(args.threads),
            ]
        )  # fmt: skip
        if status != 0:
            raise SystemExit(status)

        pipe = load_pipeline("mini", kind="text-to-image")
        pipe.set_progress_bar_config(disable=True)

        def generate() -> Image.Image:
            return pipe(
                "a [v]",
                guidance_scale=4.0,
                num_inference_steps=args.steps,
                generator=torch.Generator().manual_seed(0),
            ).images[0]

        plain = generate()
        with LoRAStyle(content=out / "content", style=out / "style").applied(pipe):
            tuned = generate()

        styleid = load_pipeline("mini")
        styleid.set_progress_bar_config(disable=True)
        call = {"content_image": content, "style": StyleCondition(image=training[0])}
        base = styleid(**call, num_inference_steps=args.steps).images[0]
        lora = LoRAStyle(style=out / "style", style_weight=1.0)
        mixed = styleid(**call, conditioners=[lora], num_inference_steps=args.steps).images[0]

    row = [*training[:2], plain, tuned, content, base, mixed]
    sheet = Image.new("RGB", (128 * len(row), 128), "white")
    for index, image in enumerate(row):
        sheet.paste(image.convert("RGB").resize((128, 128), Image.Resampling.NEAREST), (index * 128, 0))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "lora.png"
    sheet.save(path)
    print(f"B-LoRA trained for {args.train_steps} steps, text-to-image and StyleID with it -> {path}")


if __name__ == "__main__":
    main()
