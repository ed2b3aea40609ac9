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
from typing import Any

from stylekit.cli import load_model, non_negative_int, positive_float, positive_int, unit_interval


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylekit video", description="Restyle a video with a style image.")
    parser.add_argument("input", help="input video: mp4/mov/mkv/webm/avi, gif, or a folder of frames")
    parser.add_argument("--style", required=True, help="style reference image")
    parser.add_argument("-o", "--output", required=True, help="output video (.mp4, .gif or a folder)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output (never the input)"
    )
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
    parser.add_argument(
        "--mask-feather", type=non_negative_int, default=0, help="soften the mask edge inward by N pixels"
    )
    parser.add_argument("--steps", type=positive_int, default=25, help="DDIM steps")
    parser.add_argument(
        "--window", type=positive_int, default=16, help="frames per window (sliding, overlapping)"
    )
    parser.add_argument(
        "--overlap",
        type=non_negative_int,
        default=4,
        help="frames shared by consecutive windows (< --window)",
    )
    parser.add_argument("--no-cross-frame", action="store_true", help="independent per-frame StyleID")
    parser.add_argument(
        "--temporal-fusion",
        type=float,
        default=0.0,
        help="flow-guided temporal fusion strength in [0, 1] (0: off; needs OpenCV, the video extra)",
    )
    parser.add_argument("--gamma", type=unit_interval, default=0.75, help="query preservation in [0, 1]")
    parser.add_argument("--temperature", type=positive_float, default=1.5, help="attention temperature")
    parser.add_argument(
        "--size", type=positive_int, default=None, help="shorter output side (default: the model's)"
    )
    parser.add_argument("--max-frames", type=positive_int, default=None, help="use only the first N frames")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument(
        "--threads", type=non_negative_int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def mask_sources(path: str) -> str | list[Path]:
    """``--mask``: a mask image path as it is, or a folder's mask images in natural name order."""
    from stylekit.images import load_image
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
    else:
        files = [folder]
    for file in files:  # readable images (the pipeline checks their sizes and frame count)
        load_image(file, "--mask")
    return files if folder.is_dir() else path


def check_paths(args: argparse.Namespace) -> None:
    """The output: never the input, the style or a mask, nor a folder holding one of them; not an existing
    file unless ``--overwrite``; a known type in an existing folder (ValueError / VideoIOError otherwise)."""
    from stylekit.video_io import check_output

    output = Path(args.output).resolve()
    for flag, value in (("IN", args.input), ("--style", args.style), ("--mask", args.mask)):
        if value is None:
            continue
        source = Path(value).resolve()
        if source == output or output in source.parents:
            raise ValueError(
                f"-o/--output: writing {args.output} would replace {flag} ({value}); write the result elsewhere"
            )
    check_output(args.output, args.overwrite, "-o/--output", "--overwrite")


def resolve_device(requested: str | None) -> str:
    """``--device`` (default: cuda when available), refused when it names a GPU this machine lacks."""
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: expected cpu, cuda or cuda:N, got {requested!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {requested!r} requested but no CUDA GPU is available; expected cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"--device: {requested!r} requested but this machine has {torch.cuda.device_count()} GPU(s)"
        )
    return requested


def load_components(args: argparse.Namespace, device: str, base_pipeline: Any = None) -> tuple[Any, Any]:
    """(the motion adapter or None, the pipeline); a name that cannot be loaded is a ValueError (the model's:
    ``stylekit.cli.load_model``'s ``InputError``). ``base_pipeline``: a loaded pipeline whose components are
    used instead of loading ``--model``."""
    import torch

    from stylekit.pipelines import VideoStyleTransferPipeline

    adapter = None
    if args.motion_adapter:
        from diffusers import MotionAdapter

        name = args.motion_adapter
        looks_local = name.startswith(("/", ".", "~")) or name.count("/") != 1  # a hub id is "org/name"
        if looks_local:
            if not Path(name).expanduser().is_dir():
                raise ValueError(f"--motion-adapter: folder not found: {name}")
            name = str(Path(name).expanduser())
        try:
            adapter = MotionAdapter.from_pretrained(name)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"--motion-adapter: cannot load {args.motion_adapter!r}; expected a diffusers MotionAdapter "
                f"folder ({' '.join(str(error).split())[:300]})"
            ) from None
    if base_pipeline is not None:
        return adapter, VideoStyleTransferPipeline.from_pipe(base_pipeline)
    dtype = torch.float16 if device.startswith("cuda") else None
    return adapter, VideoStyleTransferPipeline.from_pipe(load_model(args.model, device, dtype))


def main(argv: list[str] | None = None, base_pipeline: Any = None) -> int:
    """Run ``stylekit video``; returns the exit status (2 for bad input, with the reason on stderr).

    The arguments, paths, input video, style image and masks are all checked before the model loads.
    ``base_pipeline`` (for the app): an already loaded pipeline to restyle with, on its own device and dtype,
    instead of loading ``--model`` (``--device`` must then name its device)."""
    args = build_parser().parse_args(argv)
    import torch
    from PIL import UnidentifiedImageError

    from stylekit.images import InputImageError, load_image
    from stylekit.video_io import VideoIOError, read_video
    from stylekit.video_models import MotionAdapterMismatch, check_motion_scale

    if args.threads > 0:
        torch.set_num_threads(args.threads)  # on a busy shared CPU, 1 thread avoids oversubscription
    try:
        from stylekit.video_flow import check_fusion

        device = resolve_device(args.device)
        check_fusion(args.temporal_fusion)
        check_motion_scale(args.motion_scale)
        if args.motion_scale != 1.0 and not args.motion_adapter:
            raise ValueError("--motion-scale: needs --motion-adapter")
        if args.overlap >= args.window:
            raise ValueError(
                f"--overlap: expected fewer frames than --window ({args.window}), got {args.overlap}"
            )
        check_paths(args)
        video = read_video(args.input, max_frames=args.max_frames, argument="IN")
        load_image(args.style, "--style")
        style: Any = args.style
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
        adapter, pipe = load_components(args, device, base_pipeline)
        pipe.set_progress_bar_config(disable=args.quiet)
        height = width = None
        if args.size is not None:
            frame_w, frame_h = video.size
            scale = args.size / min(frame_w, frame_h)
            height, width = round(frame_h * scale), round(frame_w * scale)
        window = args.window if adapter is None else min(args.window, adapter.config.motion_max_seq_length)
        if args.overlap >= window:
            print(
                f"stylekit video: the motion adapter takes {window} frames at a time; --overlap "
                f"{args.overlap} -> {window - 1}",
                file=sys.stderr,
            )
        result = pipe(
            video,
            style,
            gamma=args.gamma,
            temperature=args.temperature,
            cross_frame=not args.no_cross_frame,
            motion_adapter=adapter.to(device) if adapter is not None else None,
            motion_scale=args.motion_scale,
            window_size=window,
            window_overlap=min(args.overlap, window - 1),
            num_inference_steps=args.steps,
            height=height,
            width=width,
            output_path=args.output,
            output_type="np",
            temporal_fusion=args.temporal_fusion,
        )
    except (
        VideoIOError,
        InputImageError,
        MotionAdapterMismatch,
        UnidentifiedImageError,
        ValueError,
        FileNotFoundError,
    ) as error:
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
