"""Video style transfer with StyleID and cross-frame attention on the bundled ``mini`` model (offline,
about 15 s on a CPU).

    python examples/video_transfer.py [--output DIR] [--frames N] [--steps N]

Renders a short clip of moving objects from the synthetic world and restyles it with a style image
rendered from the world too: per-frame DDIM inversion, StyleID injection, and cross-frame attention to
the first and previous frames for temporal consistency (adding the bundled motion adapter,
``stylekit/assets/motion_adapter_mini``, is shown in docs/video.md). Writes ``DIR/video_transfer.gif`` (the
stylized clip, streamed by the pipeline; a ``.mp4`` path works the same way with the [video] extra) and
``DIR/video_transfer.png``: the style, then the source frames over the stylized frames.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stylekit import load_pipeline
from stylekit.data import sample_video, sample_world
from stylekit.pipelines import VideoStyleTransferPipeline
from stylekit.video_io import Video

HERE = Path(__file__).resolve().parent
SIZE = 64  # mini's native resolution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "output", help="output folder (examples/output)"
    )
    parser.add_argument("--frames", type=int, default=6, help="frames of the clip (6)")
    parser.add_argument("--steps", type=int, default=15, help="DDIM steps (15)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: mini is overhead-bound)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    clip = sample_video(np.random.default_rng(1), n_frames=args.frames, size=SIZE)
    style = Image.fromarray(sample_world(np.random.default_rng(7), 1, size=SIZE).images[0])
    print(f"clip: {clip.caption!r}, {len(clip.frames)} frames")

    pipe = VideoStyleTransferPipeline.from_pipe(load_pipeline("mini"))
    pipe.set_progress_bar_config(disable=True)
    args.output.mkdir(parents=True, exist_ok=True)
    video_path = args.output / "video_transfer.gif"
    result = pipe(
        Video(clip.frames, fps=4.0),  # also a path (mp4, gif, folder of frames) or a list of images
        style,
        num_inference_steps=args.steps,
        output_path=video_path,
    )

    size = 128
    sheet = Image.new("RGB", (size * (len(clip.frames) + 1), 2 * size), "white")
    sheet.paste(style.resize((size, size), Image.Resampling.NEAREST), (0, size // 2))
    for index, (source, stylized) in enumerate(zip(clip.frames, result.frames, strict=True)):
        for row, image in enumerate((Image.fromarray(source), stylized)):
            sheet.paste(
                image.convert("RGB").resize((size, size), Image.Resampling.NEAREST),
                ((index + 1) * size, row * size),
            )
    path = args.output / "video_transfer.png"
    sheet.save(path)
    print(f"{len(result.frames)} frames ({result.unet_evals} UNet evaluations) -> {video_path}, {path}")


if __name__ == "__main__":
    main()
