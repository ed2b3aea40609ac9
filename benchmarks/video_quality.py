"""Temporal consistency and style of video style transfer on world videos; prints one JSON line.

Usage: ``python benchmarks/video_quality.py [--model mini] [--clips 4] [--frames 8] [--steps 25]
[--size 64] [--window 8] [--overlap 2] [--motion-adapter PATH] [--motion-scale S] [--fusion A] [--seed 0]
[--threads 1]``

Clips: world videos (``stylekit.data.sample_video``, moving/rotating objects, held-out ``test`` part of the
``content_style`` split) with ground-truth flow and masks; each clip is restyled with a world image of
another content in another style.

Rows (``VideoStyleTransferPipeline``, StyleID defaults, one shared inversion cache):

- ``per_frame``: independent per-frame StyleID (no cross-frame attention, no motion adapter);
- ``cross_frame``: + cross-frame attention (first and previous frame's K/V) on the self-attention layers
  StyleID does not inject (``--cross-frame unstyled``, the pipeline default; ``all`` also on injected ones);
- ``cross_frame_all`` (with ``--ablations``): cross-frame attention on the injected layers too;
- ``motion``: + a motion adapter's temporal attention (only with ``--motion-adapter``; else null), its
  temporal layers scaled by ``--motion-scale`` (``motion_scale``, 1 = as trained);
- ``fusion`` (with ``--fusion A``): cross-frame attention (+ the motion adapter when given) + flow-guided
  temporal fusion of strength ``A`` (``temporal_fusion``; flow estimated from the source frames).

Per row, means over clips of ``warp_error`` (``stylekit.video_metrics.warp_error``: |frame t - frame t+1
warped back along the ground-truth flow| over visible pixels, RGB in [0, 1]), ``style_consistency``
(cosine of consecutive frames' style embeddings, bundled extractor) and ``style_score`` (per frame,
``stylekit.metrics.style_score`` against the source frame and the style image). Headline keys:
``warp_error_ratio`` and ``style_score_ratio`` = best consistent row (``fusion`` if present, else
``motion`` if present, else ``cross_frame``) / ``per_frame``. ``flow_epe`` (with ``--fusion``): the
end-point error (pixels) of the Farneback flow the fusion uses (``stylekit.video_flow.estimate_flow`` on
the source frames) against the ground-truth flow, over all pixels and over moving pixels, next to the
ground truth's mean magnitude (= the error of a zero flow). ``source_warp_error`` is the input video's own warp error;
``oracle`` is the ideal answer (the world renders the clip in the style image's style): its warp error is
the floor a perfect, perfectly consistent transfer would show, its style score the ceiling.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def make_clips(count: int, frames: int, size: int, seed: int) -> list[tuple[object, np.ndarray, object]]:
    """(VideoSample, style image uint8 (S, S, 3), the style image's StyleSpec) triples."""
    from stylekit.data import render, sample_content, sample_style, sample_video

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(count):
        video = sample_video(rng, frames, size, split="content_style", part="test")
        style = sample_style(rng)
        while style.key == video.style.key:
            style = sample_style(rng)
        image, _ = render([sample_content(rng)], [style], size)
        clips.append((video, image[0], style))
    return clips


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--overlap", type=int, default=2)
    parser.add_argument("--motion-adapter", default=None)
    parser.add_argument("--motion-scale", type=float, default=1.0, help="motion_scale of the adapter rows")
    parser.add_argument("--cross-frame", default="unstyled", choices=["all", "unstyled"])
    parser.add_argument("--ablations", action="store_true", help="also the cross_frame_all row")
    parser.add_argument("--fusion", type=float, default=None, help="temporal_fusion of the fusion row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from stylekit import load_pipeline
    from stylekit.data import render_video
    from stylekit.metrics import style_score_components
    from stylekit.pipelines import VideoStyleTransferPipeline
    from stylekit.video_metrics import style_consistency, warp_error

    started = time.time()
    pipe = VideoStyleTransferPipeline.from_pipe(load_pipeline(args.model))
    pipe.set_progress_bar_config(disable=True)
    adapter = None
    if args.motion_adapter:
        from diffusers import MotionAdapter

        adapter = MotionAdapter.from_pretrained(args.motion_adapter)
    rows = {
        "per_frame": {"cross_frame": False, "motion_adapter": None},
        "cross_frame": {"cross_frame": args.cross_frame, "motion_adapter": None},
    }
    if args.ablations:
        rows["cross_frame_all"] = {"cross_frame": "all", "motion_adapter": None}
    if adapter is not None:
        rows["motion"] = {
            "cross_frame": args.cross_frame,
            "motion_adapter": adapter,
            "motion_scale": args.motion_scale,
        }
    if args.fusion is not None:
        rows["fusion"] = {
            "cross_frame": args.cross_frame,
            "motion_adapter": adapter,
            **({"motion_scale": args.motion_scale} if adapter is not None else {}),
            "temporal_fusion": args.fusion,
        }
    clips = make_clips(args.clips, args.frames, args.size, args.seed)
    results: dict[str, dict[str, list[float]]] = {
        name: {"warp_error": [], "style_consistency": [], "style_score": []} for name in rows
    }
    source, oracle = [], {"warp_error": [], "style_score": []}
    epe: dict[str, list[float]] = {"all": [], "moving": [], "zero_flow": []}
    for video, style, style_spec in clips:
        source.append(warp_error(video.frames, video.flow, video.masks))
        if args.fusion is not None:
            from stylekit.video_flow import estimate_flow

            for t in range(len(video.frames) - 1):
                error = np.linalg.norm(
                    estimate_flow(video.frames[t], video.frames[t + 1]) - video.flow[t], axis=-1
                )
                magnitude = np.linalg.norm(video.flow[t], axis=-1)
                epe["all"].append(float(error.mean()))
                epe["moving"].append(
                    float(error[magnitude > 0.05].mean()) if (magnitude > 0.05).any() else 0.0
                )
                epe["zero_flow"].append(float(magnitude.mean()))
        ideal = render_video(video.contents[0], style_spec, video.motion, args.frames, args.size).frames
        oracle["warp_error"].append(warp_error(ideal, video.flow, video.masks))
        ideal_scores = style_score_components(list(ideal), list(video.frames), [style] * len(ideal))["style"]
        oracle["style_score"].append(float(np.mean(ideal_scores)))
        for name, options in rows.items():
            out = pipe(
                video.frames,
                style,
                num_inference_steps=args.steps,
                height=args.size,
                width=args.size,
                window_size=args.window,
                window_overlap=args.overlap,
                output_type="np",
                **options,
            ).frames
            results[name]["warp_error"].append(warp_error(out, video.flow, video.masks))
            results[name]["style_consistency"].append(style_consistency(out))
            scores = style_score_components(list(out), list(video.frames), [style] * len(out))["style"]
            results[name]["style_score"].append(float(np.mean(scores)))
    summary = {
        name: {k: round(float(np.mean(v)), 5) for k, v in metrics.items()}
        for name, metrics in results.items()
    }
    best = "fusion" if "fusion" in summary else ("motion" if "motion" in summary else "cross_frame")
    line = {
        "benchmark": "video_quality",
        "model": args.model,
        "clips": args.clips,
        "frames": args.frames,
        "steps": args.steps,
        "size": args.size,
        "window": args.window,
        "overlap": args.overlap,
        "motion_adapter": args.motion_adapter,
        "motion_scale": args.motion_scale if args.motion_adapter else None,
        "fusion": args.fusion,
        "warp_error_ratio": round(summary[best]["warp_error"] / summary["per_frame"]["warp_error"], 4),
        "style_score_ratio": round(
            summary[best]["style_score"] / max(summary["per_frame"]["style_score"], 1e-9), 4
        ),
        "compared_row": best,
        "source_warp_error": round(float(np.mean(source)), 5),
        "oracle": {k: round(float(np.mean(v)), 5) for k, v in oracle.items()},
        **(
            {"flow_epe": {k: round(float(np.mean(v)), 4) for k, v in epe.items()}}
            if args.fusion is not None
            else {}
        ),
        "rows": {**summary, **({} if "motion" in summary else {"motion": None})},
        "seconds": round(time.time() - started, 1),
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
