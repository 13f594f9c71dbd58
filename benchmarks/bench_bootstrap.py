"""Time bootstrap intervals (backend.analysis.bootstrap) against calling the engine's summarize
once per resample, on one synthetic set; check the fast path against summarize.

Default: 5,000 images x 100 predictions x 20 classes (bench_analysis's generator), B = 1000.
Job A is the generated results list; job B the same with every score jittered and 5% of the
predictions dropped, scored on the same ground truth (for the paired comparison). Both are
matched here, then a fresh process loads the matches and times the intervals of A, the paired
comparison and the baseline (summarize per resample), and reports its peak RSS. Targets on 2
cores: intervals of one job <= 30 s (goal 10 s), the paired comparison <= 30 s.

    python benchmarks/bench_bootstrap.py [--images N] [--preds P] [--classes C] [--resamples B]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_analysis import synthetic_set  # the sibling script: one generator for all

from backend.analysis.bootstrap import bootstrap_intervals, paired_comparison, resample_counts
from backend.analysis.bootstrap_stats import N_STATS, plan_resampling, weighted_stats
from backend.analysis.engine import evaluate, summarize

NAIVE_RESAMPLES = 20  # summarize calls timed for the baseline, extrapolated to B


def _peak_rss_mb() -> float:
    """Peak RSS since the last _reset_peak (VmHWM), or of the whole process elsewhere."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _rss_mb() -> float:
    """Resident memory now (Linux), 0 where unknown."""
    with contextlib.suppress(OSError):
        return (
            int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 2**20
        )
    return 0.0


def _reset_peak() -> None:
    """Restart the peak RSS from the current RSS (Linux: clear_refs 5), so that loading the
    matches does not count."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def _job_b(results: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Another run on the same images: scores jittered, 5% of the predictions dropped."""
    rng = np.random.default_rng(seed + 1)
    jitter = rng.normal(0, 0.05, len(results))
    kept = rng.random(len(results)) >= 0.05
    return [
        {**r, "score": float(np.clip(r["score"] + j, 0, 1))}
        for r, j, keep in zip(results, jitter.tolist(), kept.tolist(), strict=True)
        if keep
    ]


def run_timings(folder: Path, resamples: int, seed: int) -> dict[str, Any]:
    """Load both jobs' matches and time the library and the baseline (in its own process, so
    that peak RSS is the matches' plus the bootstrap's, not the JSON set's)."""
    with (folder / "jobs.pickle").open("rb") as file:
        job_a, job_b = pickle.load(file)
    gc.collect()
    _reset_peak()
    report: dict[str, Any] = {"rss_loaded_mb": _rss_mb()}
    start = time.perf_counter()
    intervals = bootstrap_intervals(job_a, resamples=resamples, seed=seed)
    report["intervals_s"] = time.perf_counter() - start
    report["rss_intervals_mb"] = _peak_rss_mb()
    start = time.perf_counter()
    comparison = paired_comparison(job_a, job_b, resamples=resamples, seed=seed)
    report["paired_s"] = time.perf_counter() - start
    report["rss_paired_mb"] = _peak_rss_mb()

    # Baseline: summarize once per resample, on the first resamples the library drew.
    counts = next(
        resample_counts(job_a.n_images, NAIVE_RESAMPLES, seed=seed, chunk=NAIVE_RESAMPLES)
    )
    start = time.perf_counter()
    naive = np.array([summarize(job_a, row).stats[:N_STATS] for row in counts])
    report["naive_s"] = (time.perf_counter() - start) * resamples / NAIVE_RESAMPLES
    fast, _ = weighted_stats(plan_resampling(job_a), counts)
    report["same"] = bool(np.array_equal(np.where(naive < 0, np.nan, naive), fast, equal_nan=True))
    report["method"] = intervals.method
    report["figures"] = {
        key: [
            intervals.metrics[key].estimate,
            intervals.metrics[key].low,
            intervals.metrics[key].high,
            comparison.metrics[key].estimate,
            comparison.metrics[key].low,
            comparison.metrics[key].high,
            comparison.metrics[key].p_value,
        ]
        for key in ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_s")
    }
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--preds", type=int, default=100, help="predictions per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.folder:
        print(json.dumps(run_timings(args.folder, args.resamples, args.seed)))
        return 0

    print(f"load average at start: {_load_average()} (cpus: {os.cpu_count()})")
    start = time.perf_counter()
    gt, results = synthetic_set(args.images, args.preds, args.classes, seed=args.seed)
    job_a, job_b = evaluate(gt, results), evaluate(gt, _job_b(results, args.seed))
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT, "
        f"{len(job_a.det_image)} / {len(job_b.det_image)} kept predictions (jobs A / B), "
        f"{args.classes} classes (built and matched in {time.perf_counter() - start:.1f} s)"
    )
    del gt, results
    with tempfile.TemporaryDirectory() as tmp:
        with (Path(tmp) / "jobs.pickle").open("wb") as file:
            pickle.dump((job_a, job_b), file)
        del job_a, job_b
        done = subprocess.run(
            [sys.executable, __file__, "--folder", tmp]
            + ["--resamples", str(args.resamples), "--seed", str(args.seed)],
            check=True,
            capture_output=True,
            text=True,
        )
    report = json.loads(done.stdout.strip().splitlines()[-1])

    naive_s = report["naive_s"]
    print(f"B = {args.resamples} resamples, seed {args.seed}, method {report['method']!r}")
    print(f"{'':<32} {'seconds':>8} {'vs naive':>9} {'peak RSS':>9}")
    print(f"{'naive: summarize per resample':<32} {naive_s:>7.1f}s {1:>8.1f}x")
    for label, seconds, naive, rss in (
        ("intervals of job A", report["intervals_s"], naive_s, report["rss_intervals_mb"]),
        ("paired comparison A vs B", report["paired_s"], 2 * naive_s, report["rss_paired_mb"]),
    ):
        print(f"{label:<32} {seconds:>7.1f}s {naive / seconds:>8.1f}x {rss:>7.0f}MB")
    print(
        f"(naive: {NAIVE_RESAMPLES} summarize calls timed, times B / {NAIVE_RESAMPLES}, twice "
        f"that for a pair; peak RSS: of the timing process, which holds both jobs' matches, "
        f"{report['rss_loaded_mb']:.0f}MB before resampling)"
    )
    print(
        f"fast path equals summarize on the {NAIVE_RESAMPLES} baseline resamples: {report['same']}"
    )
    for key, (est, low, high, diff, d_low, d_high, p) in report["figures"].items():
        print(
            f"  {key:<12} A {est:.4f} [{low:.4f}, {high:.4f}]   "
            f"B - A {diff:+.4f} [{d_low:+.4f}, {d_high:+.4f}] p {p:.3g}"
        )
    print(f"load average at end: {_load_average()}")
    return 0 if report["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
