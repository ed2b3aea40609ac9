"""``stylekit video IN --style S -o OUT.mp4``: restyle a video (``main(argv)`` for the ``stylekit`` CLI).

IN is an mp4 (or mov/mkv/webm/avi), a gif or a folder of frames; OUT likewise (the type follows the
suffix; no suffix = a folder of PNG frames). The output keeps the input's frame count and fps and is
written atomically. Progress: a tqdm bar over windows x steps (plus the inversions), on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from stylekit.video_io import VideoIOError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylekit video", description="Restyle a video with a style image.")
    parser.add_argument("input", help="input video: mp4/mov/mkv/webm/avi, gif, or a folder of frames")
    parser.add_argument("--style", required=True, help="style reference image")
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4, .gif or a folder)")
    parser.add_argument("--model", default="mini", help="mini, tiny-sd, sd15, a hub id or a diffusers folder")
    parser.add_argument(
        "--motion-adapter", default=None, help="a diffusers MotionAdapter folder (temporal attention)"
    )
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--window", type=int, default=16, help="frames per window (sliding, overlapping)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows")
    parser.add_argument("--no-cross-frame", action="store_true", help="independent per-frame StyleID")
    parser.add_argument("--gamma", type=float, default=0.75, help="query preservation in [0, 1]")
    parser.add_argument("--temperature", type=float, default=1.5, help="attention temperature")
    parser.add_argument("--size", type=int, default=None, help="shorter output side (default: the model's)")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``stylekit video``; returns the exit status (2 for bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    import torch

    from stylekit.images import InputImageError
    from stylekit.models import load_pipeline
    from stylekit.pipelines import VideoStyleTransferPipeline
    from stylekit.video_io import read_video
    from stylekit.video_models import MotionAdapterMismatch

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # on a busy shared CPU, 1 thread avoids oversubscription
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        video = read_video(args.input, max_frames=args.max_frames, argument="IN")
        if not Path(args.style).is_file():
            raise InputImageError(f"--style: file not found: {args.style}")
        adapter = None
        if args.motion_adapter:
            from diffusers import MotionAdapter

            adapter = MotionAdapter.from_pretrained(args.motion_adapter)
        dtype = torch.float16 if device.startswith("cuda") else None
        pipe = VideoStyleTransferPipeline.from_pipe(load_pipeline(args.model, dtype=dtype, device=device))
        pipe.set_progress_bar_config(disable=args.quiet)
        size = args.size
        height = width = None
        if size is not None:
            frame_w, frame_h = video.size
            scale = size / min(frame_w, frame_h)
            height, width = round(frame_h * scale), round(frame_w * scale)
        window = args.window if adapter is None else min(args.window, adapter.config.motion_max_seq_length)
        result = pipe(
            video,
            args.style,
            gamma=args.gamma,
            temperature=args.temperature,
            cross_frame=not args.no_cross_frame,
            motion_adapter=adapter.to(device) if adapter is not None else None,
            window_size=window,
            window_overlap=max(0, min(args.overlap, window - 1)),
            num_inference_steps=args.steps,
            height=height,
            width=width,
            output_path=args.output,
            output_type="np",
        )
    except (VideoIOError, InputImageError, MotionAdapterMismatch, ValueError, FileNotFoundError) as error:
        print(f"stylekit video: error: {error}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "output": str(result.path),
                "frames": len(result.frames),
                "fps": result.fps,
                "windows": len(result.windows),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
