"""Style-extractor benchmark on held-out styles of the synthetic world; prints one JSON line.

    python benchmarks/extractor.py                       # the bundled extractor (stylekit/assets/extractor)
    python benchmarks/extractor.py --extractor runs/extractor/extractor

All data comes from the test part of the ``style`` split (63 composite styles never seen in training):

- retrieval: per style 2 queries and 10 database images (other contents and seeds); relevant = same
  composite style. ``map_at_k`` is CSD's mAP@k (mean of precision@1..k), ``ap`` the standard AP.
- content leakage: accuracy of a linear probe (L2 logistic regression) predicting the content class (30)
  from the embedding, trained on 2000 images and tested on 1000 others; ``content_chance`` = the
  majority-class rate of the test set. Per-factor probes (palette, texture, stroke) on the same features.
- hard-negative AUC: cosine of (same style, other content) pairs against (same content and seed, other
  style) pairs.

Every method's features are centred on the evaluation set's mean and L2-normalised before cosine
similarity (so raw pixels and histograms are compared fairly). Baselines, measured in the same run: raw
pixels, a colour histogram, Gram matrices of a random-init CNN, and the untrained backbone (the
extractor's architecture with random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from stylekit.data import StyleSpec, hard_negatives, held_out_styles, positive_pairs, sample_world, style_set
from stylekit.extractors import DEFAULT_PATH, StyleExtractor
from stylekit.metrics_style import pair_auc, probe_accuracy, retrieval_metrics

SPLIT = "style"


def world_eval_data(seed: int = 2024, per_style: int = 12, probe_n: int = 3000, pairs: int = 1000) -> dict:
    """The fixed evaluation sets (all from held-out styles)."""
    rng = np.random.default_rng(seed)
    styles = held_out_styles(SPLIT)
    retrieval = [style_set(rng, per_style, StyleSpec.from_index(s), split=SPLIT, part="test") for s in styles]
    probe = sample_world(rng, probe_n, split=SPLIT, part="test")
    pa, pb = positive_pairs(rng, pairs, split=SPLIT, part="test")
    anchors, negatives = hard_negatives(rng, pairs // 4, k=4, split=SPLIT, part="test")
    return {
        "retrieval_images": np.concatenate([s.images for s in retrieval]),
        "retrieval_labels": np.repeat(np.array(styles), per_style),
        "per_style": per_style,
        "probe": probe,
        "pos": (pa.images, pb.images),
        "neg": (anchors.images, negatives.images),
    }


def colour_histogram(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Joint RGB histogram with ``bins`` per channel, normalised to sum 1: ``(N, bins**3)``."""
    q = (images.astype(np.int64) * bins) // 256
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    out = np.zeros((len(images), bins**3), dtype=np.float32)
    for i, c in enumerate(codes.reshape(len(images), -1)):
        out[i] = np.bincount(c, minlength=bins**3)
    return out / out.sum(1, keepdims=True)


class RandomGram(torch.nn.Module):
    """Gram matrices (upper triangles) of three random-init conv layers (Gatys-style texture statistics)."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64), seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        layers, cin = [], 3
        for w in widths:
            conv = torch.nn.Conv2d(cin, w, 3, 2, 1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / (cin * 9)) ** 0.5)
                conv.bias.zero_()
            layers.append(conv)
            cin = w
        self.layers = torch.nn.ModuleList(layers)

    @torch.no_grad()
    def forward(self, images: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(images), 256):
            x = torch.from_numpy(images[start : start + 256]).permute(0, 3, 1, 2).float() / 127.5 - 1
            feats = []
            for conv in self.layers:
                x = torch.relu(conv(x))
                f = x.flatten(2)
                gram = f @ f.transpose(1, 2) / f.shape[-1]
                iu = torch.triu_indices(gram.shape[1], gram.shape[1])
                feats.append(gram[:, iu[0], iu[1]])
            out.append(torch.cat(feats, 1))
        return torch.cat(out).numpy()


def _prep(features: np.ndarray, mean: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(features, dtype=np.float32) - mean)
    return torch.nn.functional.normalize(x, dim=-1)


def evaluate(featurize, data: dict) -> dict:
    """All metrics for one feature function ``images (N, S, S, 3) uint8 -> (N, F) array``."""
    images, labels = data["retrieval_images"], data["retrieval_labels"]
    feats = np.asarray(featurize(images), dtype=np.float32)
    mean = feats.mean(0)
    x = _prep(feats, mean)
    per = data["per_style"]
    is_query = (np.arange(len(labels)) % per) < 2
    sim = x[is_query] @ x[~is_query].T
    rel = labels[is_query][:, None] == labels[~is_query][None, :]
    r = retrieval_metrics(sim, rel, ks=(1, 10))
    probe = data["probe"]
    pf = _prep(featurize(probe.images), mean).numpy()
    tr, te = slice(0, 2000), slice(2000, None)

    def probe_of(y: np.ndarray) -> float:
        return probe_accuracy(pf[tr], y[tr], pf[te], y[te])

    content = probe.content_classes
    chance = float(np.bincount(content[te]).max() / len(content[te]))
    factors = {f: np.array([getattr(s, f) for s in probe.styles]) for f in ("palette", "texture", "stroke")}
    (pa, pb), (an, ng) = data["pos"], data["neg"]
    pos = (_prep(featurize(pa), mean) * _prep(featurize(pb), mean)).sum(1)
    k = len(ng) // len(an)
    neg = (_prep(featurize(an), mean).repeat_interleave(k, 0) * _prep(featurize(ng), mean)).sum(1)
    return {
        "map_at_1": r["map_at_1"],
        "map_at_10": r["map_at_10"],
        "ap": r["map"],
        "recall_at_1": r["recall_at_1"],
        "recall_at_10": r["recall_at_10"],
        "content_leakage": probe_of(content),
        "content_chance": chance,
        **{f"probe_{f}": probe_of(y) for f, y in factors.items()},
        "hard_negative_auc": pair_auc(pos, neg),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extractor", default=str(DEFAULT_PATH), help="a saved StyleExtractor folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-baselines", action="store_true", help="skip the baselines (quick check)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    data = world_eval_data()
    extractor = StyleExtractor.from_pretrained(args.extractor)
    torch.manual_seed(0)
    untrained = StyleExtractor(extractor.config).eval()
    gram = RandomGram()

    def embed_with(model: StyleExtractor):
        return lambda images: model.embed(images, progress=False).numpy()

    results = evaluate(embed_with(extractor), data)
    baselines = (
        {}
        if args.no_baselines
        else {
            "raw_pixels": evaluate(lambda im: im.reshape(len(im), -1).astype(np.float32) / 255.0, data),
            "colour_histogram": evaluate(colour_histogram, data),
            "random_cnn_gram": evaluate(gram, data),
            "untrained_backbone": evaluate(embed_with(untrained), data),
        }
    )
    summary_file = Path(args.extractor) / "train_summary.json"
    train_summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    targets = {
        "map_at_1": results["map_at_1"] >= 0.90,
        "content_leakage": results["content_leakage"] <= results["content_chance"] + 0.05,
        "hard_negative_auc": results["hard_negative_auc"] >= 0.95,
        "ahead_of_baselines": bool(baselines)
        and all(
            results["map_at_1"] > b["map_at_1"]
            and results["hard_negative_auc"] > b["hard_negative_auc"]
            and results["content_leakage"] < b["content_leakage"]
            for b in baselines.values()
        ),
    }
    line = {
        "benchmark": "extractor",
        "split": SPLIT,
        "held_out_styles": len(held_out_styles(SPLIT)),
        **{k: round(v, 4) for k, v in results.items()},
        "train_seconds": round(float(train_summary.get("seconds", float("nan"))), 1),
        "train_steps": train_summary.get("steps"),
        "baselines": {name: {k: round(v, 4) for k, v in b.items()} for name, b in baselines.items()},
        "targets_met": targets,
        "extractor": extractor.identity(),
        "eval_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
