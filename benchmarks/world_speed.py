"""Speed of the synthetic style world renderer; prints one JSON line.

Usage: ``python benchmarks/world_speed.py [--size 64] [--n 4096] [--repeats 3] [--seed 0]``

``images_per_s`` is rendering throughput (``render`` on pre-sampled specs, best of ``--repeats`` wall-clock
runs, one process, numpy single-threaded); ``images_per_cpu_s`` the same on process CPU time (less
sensitive to other load on the machine); ``end_to_end_images_per_s`` includes sampling the specs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from stylekit.data import render, sample_content, sample_style


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    contents = [sample_content(rng) for _ in range(args.n)]
    styles = [sample_style(rng) for _ in range(args.n)]
    sample_s = time.perf_counter() - t0

    render(contents[:64], styles[:64], args.size)  # warm-up
    best_wall = best_cpu = float("inf")
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        images, _ = render(contents, styles, args.size)
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    print(
        json.dumps(
            {
                "benchmark": "world_speed",
                "size": args.size,
                "n": args.n,
                "images_per_s": round(args.n / best_wall, 1),
                "images_per_cpu_s": round(args.n / best_cpu, 1),
                "end_to_end_images_per_s": round(args.n / (best_wall + sample_s), 1),
                "checksum": int(images[:8].astype(np.int64).sum()),
                "numpy": np.__version__,
                "cpus": os.cpu_count(),
                "machine": platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
