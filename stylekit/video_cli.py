"""``stylekit video IN --style S -o OUT.mp4``: restyle a video (``main(argv)`` for the ``stylekit`` CLI).

IN is an mp4 (or mov/mkv/webm/avi), a gif or a folder of frames; OUT likewise (the type follows the
suffix; no suffix = a folder of PNG frames). ``--mask M`` confines the style to a region: a mask image for
every frame, or a folder of per-frame mask images (one per frame, in name order); outside it the frames
are kept (their VAE reconstruction). The output keeps the input's frame count and fps and is
written atomically. Progress: a tqdm bar over windows x steps (plus the inversions), on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylekit video", description="Restyle a video with a style image.")
    parser.add_argument("input", help="input video: mp4/mov/mkv/webm/avi, gif, or a folder of frames")
    parser.add_argument("--style", required=True, help="style reference image")
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4, .gif or a folder)")
    parser.add_argument("--model", default="mini", help="mini, tiny-sd, sd15, a hub id or a diffusers folder")
    parser.add_argument(
        "--motion-adapter", default=None, help="a diffusers MotionAdapter folder (temporal attention)"
    )
    parser.add_argument(
        "--motion-scale",
        type=float,
        default=1.0,
        help="the motion adapter's temporal contribution (1: as trained, 0: none; 0.5 keeps more style)",
    )
    parser.add_argument(
        "--mask",
        default=None,
        help="style only this region: a mask image for every frame (white = styled) or a folder of per-frame "
        "mask images (name order); the rest of each frame is kept",
    )
    parser.add_argument("--mask-feather", type=int, default=0, help="soften the mask edge inward by N pixels")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--window", type=int, default=16, help="frames per window (sliding, overlapping)")
    parser.add_argument("--overlap", type=int, default=4, help="frames shared by consecutive windows")
    parser.add_argument("--no-cross-frame", action="store_true", help="independent per-frame StyleID")
    parser.add_argument(
        "--temporal-fusion",
        type=float,
        default=0.0,
        help="flow-guided temporal fusion strength in [0, 1] (0: off; needs OpenCV, the video extra)",
    )
    parser.add_argument("--gamma", type=float, default=0.75, help="query preservation in [0, 1]")
    parser.add_argument("--temperature", type=float, default=1.5, help="attention temperature")
    parser.add_argument("--size", type=int, default=None, help="shorter output side (default: the model's)")
    parser.add_argument("--max-frames", type=int, default=None, help="use only the first N frames")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def mask_sources(path: str) -> str | list[Path]:
    """``--mask``: a mask image path as it is, or a folder's mask images in natural name order."""
    from stylekit.video_io import FRAME_SUFFIXES, _natural_key

    folder = Path(path)
    if folder.is_dir():
        files = sorted(
            (
                f
                for f in folder.iterdir()
                if f.suffix.lower() in FRAME_SUFFIXES and not f.name.startswith(".")
            ),
            key=_natural_key,
        )
        if not files:
            raise FileNotFoundError(
                f"--mask: the folder has no mask images ({', '.join(FRAME_SUFFIXES)}): {path}"
            )
        return files
    if not folder.is_file():
        raise FileNotFoundError(f"--mask: file not found: {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    """Run ``stylekit video``; returns the exit status (2 for bad input, with the reason on stderr)."""
    args = build_parser().parse_args(argv)
    import torch

    from stylekit.images import InputImageError
    from stylekit.models import load_pipeline
    from stylekit.pipelines import VideoStyleTransferPipeline
    from stylekit.video_io import VideoIOError, read_video
    from stylekit.video_models import MotionAdapterMismatch, check_motion_scale

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # on a busy shared CPU, 1 thread avoids oversubscription
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        from stylekit.video_flow import check_fusion

        check_fusion(args.temporal_fusion)  # before the video and the model load
        check_motion_scale(args.motion_scale)
        if args.motion_scale != 1.0 and not args.motion_adapter:
            raise ValueError("--motion-scale: needs --motion-adapter")
        video = read_video(args.input, max_frames=args.max_frames, argument="IN")
        if not Path(args.style).is_file():
            raise InputImageError(f"--style: file not found: {args.style}")
        style = args.style
        if args.mask is not None:
            import warnings

            from stylekit.conditioning import StyleCondition
            from stylekit.pipelines.video_style_transfer import video_regions
            from stylekit.regions import MaskSpec

            masks = mask_sources(args.mask)
            if isinstance(masks, list) and args.max_frames is not None:
                masks = masks[: len(video)]  # the masks of the frames kept
            style = StyleCondition(image=args.style, mask=MaskSpec(masks, feather=args.mask_feather))
            # Checked here before the model loads (the pipeline checks again, and warns about empty masks).
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                video_regions([style], len(video), len(video), video.size)
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
            style,
            gamma=args.gamma,
            temperature=args.temperature,
            cross_frame=not args.no_cross_frame,
            motion_adapter=adapter.to(device) if adapter is not None else None,
            motion_scale=args.motion_scale,
            window_size=window,
            window_overlap=max(0, min(args.overlap, window - 1)),
            num_inference_steps=args.steps,
            height=height,
            width=width,
            output_path=args.output,
            output_type="np",
            temporal_fusion=args.temporal_fusion,
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
