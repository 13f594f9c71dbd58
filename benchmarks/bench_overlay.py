"""Time ``render_overlay`` on a 1333x800 image with 100 labelled boxes (+10 GT).

Target: median <= 50 ms. Most of the time is PNG compression, which depends on the
content, so three images are timed: a photo (matplotlib's sample portrait, resized), a
gradient with sensor-like grain (sigma 6, as in DetLab's shapes images) and one with heavy
noise (sigma 12, a worst case for deflate). Run: ``python benchmarks/bench_overlay.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from backend.analysis.matching import PredictionMatch
from backend.analysis.overlay import render_overlay
from backend.analysis.tables import PREDICTION_OUTCOMES

WIDTH, HEIGHT = 1333, 800


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--renders", type=int, default=50)
    parser.add_argument("--boxes", type=int, default=100)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    categories = {1: "circle", 2: "ellipse", 3: "square", 4: "triangle"}
    kinds = [o for o in PREDICTION_OUTCOMES if o != "ignored"]
    matches = []
    for i in range(args.boxes):
        w, h = rng.uniform(20, 300, 2).tolist()
        x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
        cat = int(rng.integers(1, 5))
        kind = kinds[i % len(kinds)]
        matches.append(
            PredictionMatch(
                1, i, cat, float(rng.uniform(0.3, 1)), (x, y, w, h), kind, 0.6, 1, (cat % 4) + 1
            )
        )
    gt_boxes = [
        {"bbox": m.bbox, "category_id": m.category_id, "missed": i % 7 == 0}
        for i, m in enumerate(matches[:10])
    ]

    print(f"render_overlay {WIDTH}x{HEIGHT}, {len(matches)} predictions + {len(gt_boxes)} GT")
    images = (
        ("photo", _photo()),
        ("grain sigma 6", _noisy_gradient(rng, 6.0)),
        ("noise sigma 12", _noisy_gradient(rng, 12.0)),
    )
    for name, image in images:
        timings = []
        for _ in range(args.renders):
            start = time.perf_counter()
            png = render_overlay(image, gt_boxes, matches, categories=categories, score_thr=0.0)
            timings.append(time.perf_counter() - start)
        ms = sorted(t * 1000 for t in timings)
        print(
            f"  {name:>15}: median {statistics.median(ms):.1f} ms, min {ms[0]:.1f} ms, "
            f"max {ms[-1]:.1f} ms over {args.renders} renders; PNG {len(png) / 1024:.0f} KiB"
        )


def _photo() -> Image.Image:
    """matplotlib's sample portrait (installed with pycocotools) resized to WIDTHxHEIGHT."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as file:
        return Image.open(file).convert("RGB").resize((WIDTH, HEIGHT), Image.BILINEAR)


def _noisy_gradient(rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Colour gradient plus per-pixel Gaussian noise: the noisier, the slower to deflate."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    base = np.stack(((xx * 255 // WIDTH), (yy * 255 // HEIGHT), (xx + yy) % 256), axis=2)
    return np.clip(base + rng.normal(0, sigma, base.shape), 0, 255).astype(np.uint8)


if __name__ == "__main__":
    main()
