"""Unsupervised object proposals per image: the pseudo-boxes of AlignDet's box-domain pretraining.

AlignDet uses selective search (Uijlings et al., IJCV 2013). When OpenCV's contrib module is
installed (``cv2.ximgproc``), proposals are exactly that: its selective search in fast mode,
ranked as it ranks them. The contrib build is not installed beside mmcv's OpenCV, so the
documented alternative is DetLab's own colour-region grouping, the same idea on main-module
OpenCV and numpy:

1. over-segmentation: a blurred copy downscaled to ``WORK_SIDE`` px, in Lab, quantised by
   k-means (numpy, seeded) at each granularity in ``GRANULARITIES``; the connected components
   of each colour (``cv2.connectedComponents``) are the initial regions, those under
   ``MIN_REGION_PX`` handed to their nearest neighbour (noise would give hundreds);
2. hierarchical grouping: adjacent regions are merged greedily, most similar first, with
   Uijlings' similarity ``s_colour + s_size + s_fill`` (histogram intersection of 25-bin
   per-channel Lab histograms; size favours merging small regions early; fill favours pairs
   whose union fills its box). The texture term (gradient histograms) is left out for speed;
3. every region and every merge gives a box. Ranking is not selective search's randomised
   hierarchy level (level times a random number, which scatters objects down the list) but an
   objectness-like score, the region's *distinctness*: 1 minus the similarity of the merge that
   absorbed it. A region unlike everything around it (an object on its background) is absorbed
   late and at low similarity, so it ranks first; a fragment of a larger uniform area is
   absorbed at once and ranks last. Ties keep creation order. On the shapes data (recall at
   IoU 0.5, 32 / 64 boxes an image) distinctness gives 0.97 / 0.97 on 128 px images and
   0.90 / 0.97 on 256 px, the randomised level 0.82 / 0.92 and 0.78 / 0.90.

About 25 ms of one core per 256 px image; past WORK_SIDE the image size barely matters.

Both methods are deterministic for the same image. ``folder_proposals`` caches a folder's
proposals in one ``.npz`` file keyed by the files, the settings and ``PROPOSALS_METHOD``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from backend.artifacts_io import atomic_path

__all__ = [
    "PROPOSALS_METHOD",
    "folder_proposals",
    "folder_proposals_computed",
    "image_proposals",
]

_XIMGPROC: Any = getattr(cv2, "ximgproc", None)
PROPOSALS_METHOD: str = (
    "opencv selective search (fast)" if _XIMGPROC is not None else "detlab colour-region grouping 1"
)

DEDUP_IOU = 0.9  # a box this close to a better-ranked one adds nothing
MAX_AREA_SHARE = 0.9  # a box covering more of the image than this is the image, not an object
WORK_SIDE = 128  # the long side of the copy that is segmented (px)
GRANULARITIES = (6, 14)  # k-means colours of each over-segmentation (coarse, fine)
HIST_BINS = 25  # per channel, as Uijlings et al.
MIN_REGION_PX = 8  # smaller components (noise, anti-aliased edges) join their neighbour
KMEANS_SAMPLES = 2048
KMEANS_ITERATIONS = 8
SEED = 0
SS_MAX_SIDE = 500  # selective search slows sharply with image size; larger images are downscaled

# How many times folder_proposals computed a folder instead of reading its cache (tests read it).
folder_proposals_computed = 0


def image_proposals(image_bgr: np.ndarray, *, per_image: int, min_size: int = 8) -> np.ndarray:
    """Up to per_image proposals (n, 4) float32 [x1, y1, x2, y2] in pixels, best first."""
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(
            f"image is {image_bgr.dtype} of shape {image_bgr.shape}; expected uint8 (H, W, 3) BGR"
        )
    if per_image < 1 or min_size < 1:
        raise ValueError(f"per_image {per_image}, min_size {min_size}; expected both >= 1")
    ranked = _selective_search(image_bgr) if _XIMGPROC is not None else _region_grouping(image_bgr)
    return _filter(ranked, image_bgr.shape[:2], per_image=per_image, min_size=min_size)


def _filter(
    ranked: np.ndarray, shape: tuple[int, ...], *, per_image: int, min_size: int
) -> np.ndarray:
    """The ranked boxes without small, whole-image and duplicate ones, at most per_image."""
    height, width = shape
    boxes = ranked.astype(np.float32).reshape(-1, 4)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = boxes[(w >= min_size) & (h >= min_size) & (w * h <= MAX_AREA_SHARE * width * height)]
    kept = np.zeros((per_image, 4), np.float32)
    count = 0
    for box in boxes:
        if count:
            previous = kept[:count]
            ix = np.minimum(previous[:, 2], box[2]) - np.maximum(previous[:, 0], box[0])
            iy = np.minimum(previous[:, 3], box[3]) - np.maximum(previous[:, 1], box[1])
            inter = ix.clip(0) * iy.clip(0)
            areas = (previous[:, 2] - previous[:, 0]) * (previous[:, 3] - previous[:, 1])
            union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
            if (inter > DEDUP_IOU * union).any():
                continue
        kept[count] = box
        count += 1
        if count == per_image:
            break
    return kept[:count].copy()


def _selective_search(image_bgr: np.ndarray) -> np.ndarray:
    """OpenCV contrib's selective search (fast mode), boxes in its own ranking."""
    height, width = image_bgr.shape[:2]
    scale = min(1.0, SS_MAX_SIDE / max(height, width))
    small = image_bgr
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA)
    cv2.setRNGSeed(SEED)  # its ranking draws random numbers
    search = _XIMGPROC.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(small)
    search.switchToSelectiveSearchFast()
    rects = np.asarray(search.process(), np.float32).reshape(-1, 4)  # x, y, w, h
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    return boxes / scale


def _region_grouping(image_bgr: np.ndarray) -> np.ndarray:
    """DetLab's alternative (see module): boxes of all granularities, most distinct first."""
    height, width = image_bgr.shape[:2]
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image_bgr, size, interpolation=cv2.INTER_AREA) if scale < 1 else image_bgr
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (3, 3), 0), cv2.COLOR_BGR2LAB)
    pixels = lab.reshape(-1, 3).astype(np.float32)
    boxes, scores = [], []
    for k in GRANULARITIES:
        labels = _kmeans_labels(pixels, k).reshape(lab.shape[:2])
        regions = _absorb_small(_components(labels))
        b, s = _group(regions, lab)
        boxes.append(b)
        scores.append(s)
    all_boxes = np.concatenate(boxes)
    order = np.argsort(-np.concatenate(scores), kind="stable")
    # region boxes are whole pixels [min, max]; the image box of a pixel is [x, x + 1)
    out = all_boxes[order].astype(np.float32)
    out[:, 2:] += 1
    out[:, 0::2] *= width / size[0]
    out[:, 1::2] *= height / size[1]
    return out


def _kmeans_labels(pixels: np.ndarray, k: int) -> np.ndarray:
    """Each pixel's nearest of k colours, fitted by Lloyd's k-means on a seeded sample."""
    rng = np.random.default_rng(SEED)
    sample = pixels[rng.choice(len(pixels), min(KMEANS_SAMPLES, len(pixels)), replace=False)]
    centres = sample[rng.choice(len(sample), min(k, len(sample)), replace=False)]
    for _ in range(KMEANS_ITERATIONS):
        nearest = _nearest(sample, centres)
        counts = np.bincount(nearest, minlength=len(centres))
        for channel in range(3):
            sums = np.bincount(nearest, weights=sample[:, channel], minlength=len(centres))
            centres[:, channel] = np.where(
                counts > 0, sums / np.maximum(counts, 1), centres[:, channel]
            )
    return _nearest(pixels, centres)


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # one centre at a time: a matrix product would start BLAS threads for a few ms of work
    distances = np.stack([((points - centre) ** 2).sum(1) for centre in centres])
    return distances.argmin(0)


def _components(labels: np.ndarray) -> np.ndarray:
    """A region id per pixel: the 4-connected components of each colour, numbered 0..R-1."""
    regions = np.zeros(labels.shape, np.int32)
    offset = 0
    for colour in np.unique(labels):
        count, component = cv2.connectedComponents(
            (labels == colour).astype(np.uint8), connectivity=4, ltype=cv2.CV_32S
        )
        mask = component > 0
        regions[mask] = component[mask] + offset - 1
        offset += count - 1
    return regions


def _absorb_small(regions: np.ndarray) -> np.ndarray:
    """Regions under MIN_REGION_PX px handed, pixel by pixel, to the nearest larger region."""
    sizes = np.bincount(regions.ravel())
    small = sizes[regions] < MIN_REGION_PX
    if not small.any() or small.all():
        return regions
    # each small pixel's nearest kept pixel (numbered in row-major order from 1)
    _, nearest = cv2.distanceTransformWithLabels(
        small.astype(np.uint8), cv2.DIST_L1, 3, labelType=cv2.DIST_LABEL_PIXEL
    )
    filled = regions.copy()
    filled[small] = regions[~small][nearest[small] - 1]
    return np.unique(filled, return_inverse=True)[1].reshape(regions.shape).astype(np.int32)


def _group(regions: np.ndarray, lab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uijlings' greedy grouping; the box ([min, max] pixels) and distinctness of every region."""
    height, width = regions.shape
    image_area = float(height * width)
    n = int(regions.max()) + 1
    total = 2 * n - 1  # the initial regions and one per merge
    flat = regions.ravel()
    sizes = np.zeros(total, np.float64)
    sizes[:n] = np.bincount(flat, minlength=n)
    # each region's pixel extent: its pixels' coordinates, grouped by sorting the region ids
    order = np.argsort(flat, kind="stable")
    ys, xs = np.divmod(order, width)
    starts = np.searchsorted(flat[order], np.arange(n))
    boxes = np.zeros((total, 4), np.int64)
    boxes[:n, 0] = np.minimum.reduceat(xs, starts)
    boxes[:n, 1] = ys[starts]  # row-major order: a region's first pixel is on its top row
    boxes[:n, 2] = np.maximum.reduceat(xs, starts)
    boxes[:n, 3] = ys[np.r_[starts[1:], len(flat)] - 1]
    hists = np.zeros((total, 3 * HIST_BINS), np.float64)
    bins = lab.reshape(-1, 3).astype(np.int64) * HIST_BINS // 256 + np.arange(3) * HIST_BINS
    index = (flat[:, None] * 3 * HIST_BINS + bins).ravel()
    hists[:n] = np.bincount(index, minlength=n * 3 * HIST_BINS).reshape(n, -1)
    hists[:n] /= 3 * sizes[:n, None]  # each row sums to 1, so the intersection is in [0, 1]

    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        colour = np.minimum(hists[a], hists[b]).sum(1)
        joint = sizes[a] + sizes[b]
        lo = np.minimum(boxes[a, :2], boxes[b, :2])
        hi = np.maximum(boxes[a, 2:], boxes[b, 2:])
        box_area = (hi - lo + 1).prod(1).astype(np.float64)
        return colour + (1 - joint / image_area) + (1 - (box_area - joint) / image_area)

    neighbours: list[set[int]] = [set() for _ in range(total)]
    pairs = np.concatenate(
        [
            np.stack([regions[:, :-1].ravel(), regions[:, 1:].ravel()], 1),
            np.stack([regions[:-1].ravel(), regions[1:].ravel()], 1),
        ]
    )
    pairs = np.unique(np.sort(pairs[pairs[:, 0] != pairs[:, 1]], 1), axis=0)
    for a, b in pairs.tolist():
        neighbours[a].add(b)
        neighbours[b].add(a)
    negatives = (-similarity(pairs[:, 0], pairs[:, 1])).tolist()
    heap = list(zip(negatives, pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))
    heapq.heapify(heap)
    distinct = np.zeros(total, np.float64)  # the root (the whole image) keeps 0
    alive = np.zeros(total, bool)
    alive[:n] = True
    new = n
    while heap:
        negative, a, b = heapq.heappop(heap)
        if not (alive[a] and alive[b]):
            continue
        # similarity is at most 3 (identical colours, tiny, filling their box)
        distinct[a] = distinct[b] = 1 + negative / 3
        alive[a] = alive[b] = False
        sizes[new] = sizes[a] + sizes[b]
        hists[new] = (hists[a] * sizes[a] + hists[b] * sizes[b]) / sizes[new]
        boxes[new, :2] = np.minimum(boxes[a, :2], boxes[b, :2])
        boxes[new, 2:] = np.maximum(boxes[a, 2:], boxes[b, 2:])
        joined = (neighbours[a] | neighbours[b]) - {a, b}
        for other in joined:
            neighbours[other] -= {a, b}
            neighbours[other].add(new)
        neighbours[new] = joined
        alive[new] = True
        if joined:
            others = np.fromiter(joined, np.int64, len(joined))
            sims = similarity(np.full(len(others), new), others).tolist()
            for sim, other in zip(sims, others.tolist(), strict=True):
                heapq.heappush(heap, (-sim, new, other))
        new += 1
    return boxes[:new], distinct[:new]


def _cache_key(folder: Path, names: list[str], *, per_image: int, min_size: int) -> str:
    """A digest of everything the folder's proposals depend on."""
    files = []
    for name in sorted(names):
        stat = (folder / name).stat()
        files.append([name, stat.st_size, stat.st_mtime_ns])
    facts = {
        "folder": str(folder.resolve()),
        "files": files,
        "per_image": per_image,
        "min_size": min_size,
        "method": PROPOSALS_METHOD,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def _read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not an image OpenCV can read (expected JPEG, PNG, ...)")
    return image


def folder_proposals(
    folder: Path, names: list[str], *, cache_dir: Path, per_image: int, min_size: int = 8
) -> dict[str, np.ndarray]:
    """Proposals of every image (names relative to folder), computed once and cached."""
    global folder_proposals_computed
    unique = sorted(set(names))
    key = _cache_key(folder, unique, per_image=per_image, min_size=min_size)
    cache = cache_dir / f"proposals-{key}.npz"
    if cache.exists():
        with np.load(cache, allow_pickle=False) as stored:
            counts = stored["counts"]
            flat = stored["boxes"]
            stored_names = [str(name) for name in stored["names"]]
        ends = np.cumsum(counts)
        return {
            name: flat[end - count : end]
            for name, count, end in zip(stored_names, counts.tolist(), ends.tolist(), strict=True)
        }

    def one(name: str) -> np.ndarray:
        return image_proposals(_read_image(folder / name), per_image=per_image, min_size=min_size)

    # OpenCV's selective search releases the GIL; the grouping is Python and would not gain
    workers = min(4, os.cpu_count() or 1) if _XIMGPROC is not None else 1
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(one, unique))
    else:
        results = [one(name) for name in unique]
    folder_proposals_computed += 1
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache) as temporary, open(temporary, "wb") as out:
        # a file object: given a path without ".npz", numpy would add the suffix itself
        np.savez(
            out,
            names=np.array(unique, dtype=str),
            counts=np.array([len(r) for r in results], np.int64),
            boxes=np.concatenate(results) if results else np.zeros((0, 4), np.float32),
        )
    return dict(zip(unique, results, strict=True))
