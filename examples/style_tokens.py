"""Text to image with style tokens on the bundled ``mini`` model (offline, about 15 s on a CPU).

    python examples/style_tokens.py [--output DIR] [--steps N]

Generates a world caption's objects (the prompt has no style words) four ways, from the same seed:
without the adapter, with the shipped ``StyleTokens`` adapter and a style reference image rendered from
the synthetic world (another content, so only its style can carry over), with that reference's style
given as text (its caption's style words through the adapter's text head), and, for comparison, with
the style words in the prompt itself. Writes ``DIR/style_tokens.png``: reference | no adapter |
image style | text style | style words in the prompt.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit import StyleCondition, load_pipeline
from stylekit.data import sample_world, style_phrase
from stylekit.tokens import StyleTokens, load_default_adapter, text_to_image
from stylekit.tokens.prompts import content_prompt

HERE = Path(__file__).resolve().parent
SIZE = 64  # mini's native resolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "output", help="output folder (examples/output)"
    )
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (20)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: mini is overhead-bound)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    world = sample_world(np.random.default_rng(5), 2, size=SIZE)
    prompt = content_prompt(world.contents[0], world.styles[1])  # objects only, in the reference's colours
    reference = Image.fromarray(world.images[1])
    words = style_phrase(world.styles[1])  # e.g. "striped cream paper, thick outline"
    print(f"prompt: {prompt!r}; reference style: {words!r}")

    pipe = load_pipeline("mini", kind="text-to-image")
    pipe.set_progress_bar_config(disable=True)
    adapter = load_default_adapter()  # trained for mini: stylekit/assets/style_tokens_mini

    def generate(text: str, tokens: StyleTokens | None = None) -> Image.Image:
        return text_to_image(
            pipe,
            text,
            tokens,
            guidance_scale=4.0,
            num_inference_steps=args.steps,
            generator=torch.Generator().manual_seed(0),
        ).images[0]

    row = [
        reference,
        generate(prompt),
        generate(prompt, StyleTokens(adapter, StyleCondition(image=reference), style_guidance_scale=4.0)),
        generate(prompt, StyleTokens(adapter, StyleCondition(text=words), style_guidance_scale=4.0)),
        generate(f"{prompt} on {words}"),
    ]
    sheet = Image.new("RGB", (128 * len(row), 128), "white")
    for index, image in enumerate(row):
        sheet.paste(image.convert("RGB").resize((128, 128), Image.Resampling.NEAREST), (index * 128, 0))
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "style_tokens.png"
    sheet.save(path)
    print(f"without / with style tokens (image, text) and with style words -> {path}")


if __name__ == "__main__":
    main()
