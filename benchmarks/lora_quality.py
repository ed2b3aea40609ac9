"""Content/style separation of split LoRAs (B-LoRA, Break-for-Make) on mini and the world; one JSON line.

Usage: ``python benchmarks/lora_quality.py [--model mini] [--methods blora,b4m] [--train-steps N] [--rank 8]
[--lr LR] [--n 16] [--steps 20] [--guidance 4.0] [--probe-steps 300] [--detector-n 600] [--detector-val 400]
[--content-blocks B,..] [--style-blocks B,..] [--style-content-blocks B,..] [--style-lr LR]
[--style-train-steps N] [--style-start F] [--lora-blocks B,..] [--b4m-make-precondition] [--seed 0]
[--work DIR]``
(block lists: attention blocks, ResNets and ``*`` patterns, as the trainer's flags)

1. A *subject* (one shape, lone object, one style A, ``--n-train`` images) and a *style* (a composite style B
   from the held-out part of the world's ``style`` split, so mini never saw it; varied contents) are rendered.
2. A *subject detector* is fitted on world renders (real images, not generations): the subject's shape as a
   lone object vs 1..3 objects of the other shapes (mostly lone), both in the same style mix (uniform over
   the 576 styles, a fifth each in style A and style B, so style cannot decide it); ``--detector-n``
   renders plus a blurred/noisy copy of each (the probes' augmentation). It is a small MLP on a fixed
   shape descriptor (:func:`shape_feature`: the harmonics of the radial signature of the objects
   :func:`stylekit.metrics.segment_objects` finds), so an image counts only if its object has the subject's
   outline (a blob is never the subject). It is validated on ``--detector-val`` fresh renders:
   ``subject_detector`` = ``{"real_subject_recall", "real_other_false_positive", "vae_subject_recall",
   "vae_other_false_positive" (the same renders after a round trip through the model's VAE: what the decoder
   lets through), "subject_images_recall" (the subject's own training images), "train_seconds",
   "reliable"}``; a warning is printed when the real recall < 0.9 or false positive > 0.1 (the content
   measures below would be unreliable).
3. Per method, a content adapter is trained on the subject and a style adapter on the style: ``blora``
   trains one B-LoRA per image set, both with the prompt ``"a [v] on paper"`` (B-LoRA's ``"a [v]"`` plus the
   world's "on paper": mini only knows world captions), and keeps its content / style half (the style
   image's run has its own content blocks, lr and steps: by default the preset's attention blocks without its
   ResNets, 1e-2, half the subject run's steps (1,000), since a ResNet content half soaks up the style
   image's style); ``b4m`` binds each set to its own words as in its official scripts (subject ``"a [v] on
   paper"``, style ``"a shape on [s] paper"``) and runs the content break (aux set: other styles), the style
   break (aux set: other contents) and the make stage on both sets (fused adapter = the composition).
4. ``--n`` images are generated (fixed seeds) with: the composition, the content adapter only, the style
   adapter only, from the method's prompt for that row (``PROMPTS``; b4m composes from ``"a [v] on [s]
   paper"``; recorded as ``prompts``); and with no adapter from ``"a [v] on paper"`` (the ``base`` row).
   For ``blora`` also with both halves of the subject's own B-LoRA (``subject_both_halves_*``: whether
   training learned the subject at all, before the split).
5. Measured: ``composed_content_acc`` / ``style_only_content_acc`` / ``content_only_content_acc`` = share
   of images the subject detector flags as the subject; the ``*_probe`` keys keep the earlier measure (share
   whose first shape the world content probe reads as the subject's, chance 0.1; it reads the subject's own
   renders poorly); ``composed_style_score`` / ``content_only_style_score`` =
   ``stylekit.metrics.style_score(output, subject image, style image)`` (0 = the subject image's style A,
   1 = the style image's style B), mean over images and references.
Targets: composition shows both; content only has style score <= 0.3; style only does not carry the subject
(its content acc near the base row's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from stylekit.adapters.lora_block_probe import PROMPT, world_sets
from stylekit.adapters.train_lora import TrainLoRAConfig, run
from stylekit.data import N_SHAPES, render_samples, sample_content, sample_style
from stylekit.lora_style import LoRAStyle
from stylekit.metrics import probe_augment, segment_objects, style_score_components, train_probe
from stylekit.models import load_pipeline
from stylekit.training.evaluate import reconstruct

SIGNATURE_BINS = 64
"""Angular bins of the radial signature."""

HARMONICS = 16
"""Harmonics of the radial signature kept by :func:`shape_feature`."""

STYLE_RUN_CONTENT_BLOCKS = "mid_block.attentions.0,up_blocks.1.attentions.*"
"""Default content half of the style image's B-LoRA run: the preset's attention blocks without its ResNets."""

RELIABLE_RECALL, RELIABLE_FALSE_POSITIVE = 0.9, 0.1
"""The subject detector is trusted when its held-out real recall / false-positive rate are within these."""


def shape_feature(image: np.ndarray) -> np.ndarray:
    """Rotation-, scale- and style-free shape descriptor of the objects in ``image`` (float32, ``HARMONICS + 4``).

    The objects' mask (:func:`stylekit.metrics.segment_objects`) gives the radial signature: the largest
    boundary radius in each of :data:`SIGNATURE_BINS` angles around the mask's centroid, over its mean;
    kept are the magnitudes of its harmonics 1..:data:`HARMONICS`, the mask area over the mean-radius disc
    (holes), whether the centroid is covered (one object or several), the foreground share and the log
    max / min radius. No object: zeros.
    """
    mask = segment_objects(image)
    out = np.zeros(HARMONICS + 4, np.float32)
    if mask.sum() < 8:
        return out
    pad = np.pad(mask, 1)
    inner = mask & pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    dy, dx = (v - c for v, c in zip(np.nonzero(mask & ~inner), (cy, cx), strict=True))
    bins = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * SIGNATURE_BINS).astype(np.int64) % SIGNATURE_BINS
    signature = np.full(SIGNATURE_BINS, -1.0)
    np.maximum.at(signature, bins, np.hypot(dy, dx))
    seen = np.flatnonzero(signature >= 0)
    if len(seen) < 4:
        return out
    signature = np.interp(np.arange(SIGNATURE_BINS), seen, signature[seen], period=SIGNATURE_BINS)
    mean = signature.mean()
    out[:HARMONICS] = np.abs(np.fft.rfft(signature / mean))[1 : HARMONICS + 1] * (10 / SIGNATURE_BINS)
    out[HARMONICS:] = (
        mask.sum() / (np.pi * mean**2),
        float(mask[int(cy), int(cx)]),
        mask.mean(),
        np.log(signature.max() / max(signature.min(), 0.5)),
    )
    return out


def detector_set(
    rng: np.random.Generator, shape: int, keys: list[tuple[int, int, int]], n: int, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` world renders and their labels (True = subject), alternating: a lone ``shape`` / 1..3 objects
    of the other shapes (5 in 7 lone). Every image's style is style ``keys[0]`` or ``keys[1]`` with
    probability 0.2 each, else uniform over all styles (the same mix for both classes)."""
    others = [s for s in range(N_SHAPES) if s != shape]
    contents, styles = [], []
    for i in range(n):
        if i % 2 == 0:
            contents.append(sample_content(rng, shapes=(shape,)))
        else:
            count = int(rng.choice([1, 1, 1, 1, 1, 2, 3]))
            contents.append(sample_content(rng, shapes=tuple(int(s) for s in rng.choice(others, count))))
        u = float(rng.random())
        styles.append(sample_style(rng, keys[0] if u < 0.2 else keys[1] if u < 0.4 else None))
    return render_samples(contents, styles, size).images, np.arange(n) % 2 == 0


class SubjectDetector(NamedTuple):
    """A small MLP on standardised :func:`shape_feature` descriptors: True = the subject's shape."""

    mean: np.ndarray
    std: np.ndarray
    head: torch.nn.Module

    @torch.no_grad()
    def flags(self, images: np.ndarray) -> np.ndarray:
        """bool ``(B,)``: which images show the subject."""
        feats = (np.stack([shape_feature(im) for im in images]) - self.mean) / self.std
        return (self.head(torch.from_numpy(feats))[:, 0] > 0).numpy()


def train_subject_detector(
    shape: int, keys: list[tuple[int, int, int]], n: int, size: int, seed: int
) -> SubjectDetector:
    """Fit a :class:`SubjectDetector` (32 hidden units, full-batch Adam, 1500 steps) on ``n`` renders of
    :func:`detector_set` and a blurred/noisy copy of each (the world probes' augmentation); deterministic
    by ``seed``."""
    images, labels = detector_set(np.random.default_rng([seed, 71]), shape, keys, n, size)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    blurred = probe_augment(x, torch.Generator().manual_seed(seed)).permute(0, 2, 3, 1).numpy()
    feats = np.stack([shape_feature(im) for im in [*images, *blurred]])
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    f = torch.from_numpy((feats - mean) / std)
    y = torch.from_numpy(np.concatenate([labels, labels]).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = torch.nn.Sequential(torch.nn.Linear(f.shape[1], 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(1500):
        loss = F.binary_cross_entropy_with_logits(head(f)[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return SubjectDetector(mean, std, head.eval())


def detector_rates(
    detector: SubjectDetector,
    rng: np.random.Generator,
    shape: int,
    keys: list[tuple[int, int, int]],
    n: int,
    size: int,
    vae: Any,
) -> dict[str, float]:
    """Recall / false-positive rate on ``n`` fresh renders of :func:`detector_set` (drawn with ``rng``), and
    the same after a round trip through the model's ``vae`` (``vae_*``,
    :func:`stylekit.training.evaluate.reconstruct`)."""
    images, labels = detector_set(rng, shape, keys, n, size)
    report = {}
    for prefix, batch in (("real", images), ("vae", reconstruct(vae, images))):
        flags = detector.flags(batch)
        report[f"{prefix}_subject_recall"] = round(float(flags[labels].mean()), 4)
        report[f"{prefix}_other_false_positive"] = round(float(flags[~labels].mean()), 4)
    return report


def validate_detector(
    detector: SubjectDetector,
    sets: dict[str, Any],
    keys: list[tuple[int, int, int]],
    n: int,
    seed: int,
    vae: Any,
) -> dict[str, float]:
    """:func:`detector_rates` on the subject's shape, and recall on the subject's own training images."""
    size = sets["subject"].shape[1]
    report = detector_rates(detector, np.random.default_rng([seed, 72]), sets["shape"], keys, n, size, vae)
    report["subject_images_recall"] = round(float(detector.flags(sets["subject"]).mean()), 4)
    return report


# Generation prompt per row. B-LoRA trains both image sets on one prompt and composes by blocks; B4M, as in
# its official scripts, binds content and style to their own words ("a photo of snq teddybear", "... in w@z
# style") and generates the composition from both; mini's tokenizer keeps "[v]" and "[s]" apart.
PROMPTS = {
    "blora": {
        "composed": PROMPT,
        "content_only": PROMPT,
        "style_only": PROMPT,
        "subject_both_halves": PROMPT,
    },
    "b4m": {
        "composed": "a [v] on [s] paper",
        "content_only": PROMPT,
        "style_only": "a shape on [s] paper",
    },
}


def _blocks(flag: str) -> list[str] | None:
    """A comma-separated block list from the command line, or None (the model's preset)."""
    return [b.strip() for b in flag.split(",") if b.strip()] or None


def checked_detector(
    sets: dict[str, Any], args: argparse.Namespace, vae: Any, size: int
) -> tuple[SubjectDetector, dict[str, Any]]:
    """The subject detector of ``sets`` (``--detector-n`` renders) and its check on ``--detector-val`` fresh
    renders (:func:`validate_detector`, ``train_seconds``, ``reliable``); warns on stderr when unreliable."""
    keys = sets["style_keys"]
    t0 = time.perf_counter()
    detector = train_subject_detector(sets["shape"], keys, args.detector_n, size, args.seed)
    check: dict[str, Any] = {"train_seconds": round(time.perf_counter() - t0, 1)}
    check.update(validate_detector(detector, sets, keys, args.detector_val, args.seed, vae))
    check["reliable"] = (
        check["real_subject_recall"] >= RELIABLE_RECALL
        and check["real_other_false_positive"] <= RELIABLE_FALSE_POSITIVE
    )
    if not check["reliable"]:
        print(
            f"WARNING: the subject detector is unreliable on real renders ({check}): recall should be "
            f">= {RELIABLE_RECALL} and false positive <= {RELIABLE_FALSE_POSITIVE}; content accs mean little",
            file=sys.stderr,
            flush=True,
        )
    return detector, check


METHOD_RECIPES = {"blora": (2000, 3e-3), "b4m": (1000, 1e-2)}
"""Default (training steps, lr) per method: the best measured on mini (docs/lora.md). B4M at B-LoRA's recipe
(2,000 steps, 3e-3) learned almost nothing (style 0.098 alone)."""


def recipe(method: str, args: argparse.Namespace) -> tuple[int, float]:
    """(training steps, lr) of ``method``'s runs: ``--train-steps`` / ``--lr`` when given, else its default."""
    steps, lr = METHOD_RECIPES[method]
    return args.train_steps or steps, args.lr or lr


def style_run_steps(args: argparse.Namespace) -> int:
    """Steps of the style image's B-LoRA run: ``--style-train-steps``, else half the subject run's."""
    return args.style_train_steps or max(1, recipe("blora", args)[0] // 2)


def train(method: str, sets: dict[str, Any], args: argparse.Namespace, root: Path) -> dict[str, Path]:
    """Adapters of one method: ``{"content": dir, "style": dir}`` (b4m: and ``"fused"``)."""
    dirs = sets["dirs"]
    train_steps, lr = recipe(method, args)
    common = dict(
        pretrained_model_name_or_path=args.model,
        rank=args.rank,
        max_train_steps=train_steps,
        learning_rate=lr,
        checkpointing_steps=0,
        seed=args.seed,
        train_batch_size=2,
        overwrite_output_dir=True,  # a reused --work folder retrains its adapters
    )
    if method == "blora":
        runs = {  # (image set, content blocks, lr, steps) of the subject's and the style's B-LoRA
            "c": ("subject", args.content_blocks, lr, train_steps),
            "s": ("style", args.style_content_blocks, args.style_lr, style_run_steps(args)),
        }
        for folder, (data, content_blocks, lr, steps) in runs.items():
            run(
                TrainLoRAConfig(
                    method="blora",
                    instance_data_dir=str(dirs[data]),
                    instance_prompt=PROMPT,
                    output_dir=str(root / folder),
                    content_blocks=_blocks(content_blocks),
                    style_blocks=_blocks(args.style_blocks),
                    **{**common, "learning_rate": lr, "max_train_steps": steps},
                )
            )
        return {
            "content": root / "c" / "content",
            "style": root / "s" / "style",
            "subject_style": root / "c" / "style",  # the subject B-LoRA's other half
        }
    out = root / "b4m"
    b4m = dict(
        method="b4m",
        output_dir=str(out),
        learning_rate_2=lr / 10,
        lora_blocks=_blocks(args.lora_blocks),
        **common,
    )
    content_prompt, style_prompt = PROMPTS["b4m"]["content_only"], PROMPTS["b4m"]["style_only"]
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["subject"]),
            instance_prompt=content_prompt,
            b4m_role="content",
            aux_data_dir=[str(dirs["other_styles"])],
            aux_prompt=["a shape on paper"],
            **b4m,
        )
    )
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["style"]),
            instance_prompt=style_prompt,
            b4m_role="style",
            aux_data_dir=[str(dirs["other_contents"])],
            aux_prompt=["a shape on paper"],
            **b4m,
        )
    )
    make = {
        **b4m,
        "max_train_steps": max(1, train_steps // 3),
        "riemannian_precondition": args.b4m_make_precondition,
    }
    run(
        TrainLoRAConfig(
            instance_data_dir=str(dirs["subject"]),
            instance_prompt=content_prompt,
            b4m_stage="make",
            content_lora=str(out / "content"),
            style_lora=str(out / "style"),
            aux_data_dir=[str(dirs["style"])],
            aux_prompt=[style_prompt],
            **make,
        )
    )
    return {"content": out / "content", "style": out / "style", "fused": out / "fused"}


def generate(pipe: Any, lora: LoRAStyle | None, args: argparse.Namespace, prompt: str = PROMPT) -> np.ndarray:
    generators = [torch.Generator().manual_seed(args.seed + i) for i in range(args.n)]
    call = dict(
        num_inference_steps=args.steps, guidance_scale=args.guidance, generator=generators, output_type="np"
    )
    if lora is None:
        images = pipe([prompt] * args.n, **call).images
    else:
        with lora.applied(pipe):
            images = pipe([prompt] * args.n, **call).images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def measure(
    images: np.ndarray, sets: dict[str, Any], probe: Any, detector: SubjectDetector
) -> dict[str, float]:
    """Subject rate (detector), first-shape rate (content probe) and mean style score of ``images``."""
    subject = float(detector.flags(images).mean())
    shape_acc = float((probe.predict(images)["shape"] == sets["shape"]).mean())
    k = len(sets["subject"])
    outs = np.repeat(images, k, axis=0)
    contents = np.tile(sets["subject"], (len(images), 1, 1, 1))
    styles = np.tile(sets["style"], (len(images), 1, 1, 1))
    score = float(style_score_components(outs, contents, styles)["style"].mean())
    return {
        "content_acc": round(subject, 4),
        "content_acc_probe": round(shape_acc, 4),
        "style_score": round(score, 4),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's options (``--style-content-blocks ''`` resolved to ``--content-blocks``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mini")
    parser.add_argument("--methods", default="blora,b4m")
    parser.add_argument(
        "--train-steps", type=int, default=None, help="default per method: blora 2000, b4m 1000"
    )
    parser.add_argument("--n-train", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None, help="default per method: blora 3e-3, b4m 1e-2")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--probe-steps", type=int, default=300)
    parser.add_argument("--detector-n", type=int, default=600, help="world renders the subject detector fits")
    parser.add_argument("--detector-val", type=int, default=400, help="fresh renders it is validated on")
    parser.add_argument(
        "--content-blocks", default="", help="blora: comma-separated content blocks (default: the preset)"
    )
    parser.add_argument(
        "--style-blocks", default="", help="blora: comma-separated style blocks (default: the preset)"
    )
    parser.add_argument(  # the LoCon content half of the preset soaks up a style image's style (docs/lora.md)
        "--style-content-blocks",
        default=STYLE_RUN_CONTENT_BLOCKS,
        help="blora: content blocks of the style image's B-LoRA run ('' = --content-blocks)",
    )
    parser.add_argument("--style-lr", type=float, default=1e-2, help="blora: lr of the style image's run")
    parser.add_argument(
        "--style-train-steps",
        type=int,
        default=None,
        help="blora: steps of the style image's run (default: half the subject run's, 1,000 by default)",
    )
    parser.add_argument(
        "--style-start",
        type=float,
        default=0.0,
        help="blora: the composed row's style half acts from this fraction of the schedule on "
        "(LoRAStyle style_steps=(START, 1)); 0 = the whole schedule",
    )
    parser.add_argument(
        "--lora-blocks", default="", help="b4m: comma-separated blocks (default: every attention block)"
    )
    parser.add_argument(
        "--b4m-make-precondition",
        action="store_true",
        help="b4m: Riemannian-precondition the make stage's gradients (the official make stage's AdamWr)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--work",
        default=None,
        help="folder for data and adapters (default: a temp folder; adapters already there are retrained)",
    )
    args = parser.parse_args(argv)
    args.style_content_blocks = args.style_content_blocks or args.content_blocks  # '' = the subject run's
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    root = Path(args.work or tempfile.mkdtemp(prefix="lora_quality_"))
    pipe = load_pipeline(args.model, kind="text-to-image", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    sets = world_sets(args.seed, args.n_train, size, root / "data")
    detector, check = checked_detector(sets, args, pipe.vae, size)
    probe = train_probe("content", steps=args.probe_steps, size=size, seed=args.seed)
    report: dict[str, Any] = {
        "benchmark": "lora_quality",
        "model": args.model,
        "subject_shape": sets["shape"],
        "style_a": sets["style_a"],
        "style_b": sets["style_b"],
        "train_steps": args.train_steps,  # null: each method's default (its row's train_steps / lr)
        "rank": args.rank,
        "lr": args.lr,
        "blora_blocks": {"content": args.content_blocks or "preset", "style": args.style_blocks or "preset"},
        "blora_style_run": {
            "content_blocks": args.style_content_blocks or "preset",
            "lr": args.style_lr,
            "train_steps": style_run_steps(args),
            "composed_style_steps": [args.style_start, 1.0],
        },
        "b4m_blocks": args.lora_blocks or "every attention block",
        "b4m_make_precondition": args.b4m_make_precondition,
        "n": args.n,
        "subject_detector": check,
    }
    report["base"] = measure(generate(pipe, None, args), sets, probe, detector)
    methods: dict[str, Any] = {}
    for method in [m for m in args.methods.split(",") if m]:
        t0 = time.perf_counter()
        adapters = train(method, sets, args, root / method)
        composed = (
            LoRAStyle(adapters={"fused": adapters["fused"]})
            if "fused" in adapters
            else LoRAStyle(
                content=adapters["content"], style=adapters["style"], style_steps=(args.style_start, 1.0)
            )
        )
        rows = {
            "composed": composed,
            "content_only": LoRAStyle(content=adapters["content"]),
            "style_only": LoRAStyle(style=adapters["style"]),
        }
        if "subject_style" in adapters:  # did training learn the subject at all? (both of its halves)
            rows["subject_both_halves"] = LoRAStyle(
                content=adapters["content"], style=adapters["subject_style"]
            )
        row: dict[str, Any] = {"prompts": PROMPTS[method]}
        for name, lora in rows.items():
            measured = measure(generate(pipe, lora, args, PROMPTS[method][name]), sets, probe, detector)
            row.update({f"{name}_{key}": value for key, value in measured.items()})
        row["train_steps"], row["lr"] = recipe(method, args)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        methods[method] = row
        print(f"{method}: {methods[method]}", file=sys.stderr, flush=True)
    report["methods"] = methods
    report["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
