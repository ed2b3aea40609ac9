"""Style similarity and search with the bundled style extractor (offline, a few seconds on a CPU).

    python examples/style_similarity.py [--output DIR]

Renders a small gallery from the synthetic world (4 styles x 4 different contents), embeds it with the
extractor, prints the mean similarity of same-style and different-style pairs, and for one query image
writes ``DIR/style_search.png``: the query, then its 6 nearest gallery images by style (the same style
should come first even though the contents differ).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from stylekit.data import sample_styles, style_set
from stylekit.extractors import load_default
from stylekit.metrics_style import style_similarity

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", type=Path, default=HERE / "output", help="output folder (examples/output)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: mini is overhead-bound)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    styles = sample_styles(rng, 4)
    images = np.concatenate([style_set(rng, 4, style=style, size=64).images for style in styles])
    labels = np.repeat(np.arange(len(styles)), 4)

    extractor = load_default()
    embeddings = extractor.embed(images)  # (16, D), L2-normalised
    matrix = (embeddings @ embeddings.T).numpy()
    same = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    print(
        f"mean similarity: same style {matrix[same & off_diagonal].mean():.3f}, other styles {matrix[~same].mean():.3f}"
    )
    print(f"query vs its first neighbour: {float(style_similarity(images[0:1], images[1:2])[0]):.3f}")

    query = 0
    order = [int(i) for i in np.argsort(-matrix[query]) if i != query][:6]
    tiles = [(images[query], "query")]
    tiles += [
        (images[i], f"{matrix[query, i]:.2f} {'same' if labels[i] == labels[query] else 'other'}")
        for i in order
    ]
    sheet = Image.new("RGB", (128 * len(tiles), 148), "white")
    draw = ImageDraw.Draw(sheet)
    for index, (array, caption) in enumerate(tiles):
        sheet.paste(Image.fromarray(array).resize((128, 128), Image.Resampling.NEAREST), (index * 128, 0))
        draw.text((index * 128 + 4, 132), caption, fill="black")
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "style_search.png"
    sheet.save(path)
    hits = sum(labels[i] == labels[query] for i in order[:3])
    print(f"{hits}/3 of the nearest images share the query's style -> {path}")


if __name__ == "__main__":
    main()
