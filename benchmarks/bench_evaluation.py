"""Time COCO bbox evaluation: the numpy engine (backend.analysis.engine) against pycocotools'
COCOeval, and faster-coco-eval when it is installed, on one synthetic set; check the stats.

Default: 5,000 images x 100 predictions x 20 classes (500k boxes, bench_analysis's generator).
The set is written as JSON to a temporary folder; each tool then runs in a fresh process that
loads the JSON, builds what it needs (COCO indexes; the engine validates inside evaluate), runs
its evaluation and reports seconds, peak RSS and the 12 stats. Target: engine evaluate +
summarize well under 3 s on 2 cores (pycocotools: ~20 s).

    python benchmarks/bench_evaluation.py [--images N] [--preds P] [--classes C]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_analysis import synthetic_set  # the sibling script: one generator for both

TOOLS = ("engine", "job-store", "pycocotools", "faster-coco-eval")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cocoeval_steps(coco_cls: Any, eval_cls: Any, gt: Any, results: Any) -> dict[str, Any]:
    """Index, evaluate, accumulate, summarize with a pycocotools-style API; seconds of each."""
    seconds = {}
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        coco_gt = coco_cls()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        seconds["index"] = time.perf_counter() - start
        evaluator = eval_cls(coco_gt, coco_dt, iouType="bbox")
        for step in ("evaluate", "accumulate", "summarize"):
            start = time.perf_counter()
            getattr(evaluator, step)()
            seconds[step] = time.perf_counter() - start
    return {"seconds": seconds, "stats": [float(s) for s in evaluator.stats]}


def _job_store(folder: Path) -> dict[str, Any]:
    """What a job's end stores, timed whole: read both files, score with the engine, the error
    analysis, confusion matrix, and the evaluation and per-image rows written to a database
    (SQLite under ``folder``, built by the migrations)."""
    from sqlalchemy.orm import Session

    from backend.datasets.models import Dataset
    from backend.db import make_engine
    from backend.evaluations import analysis_service
    from backend.jobs.models import Job, JobKind, JobStatus
    from backend.migrate import upgrade_head

    url = f"sqlite:///{folder / 'bench.db'}"
    upgrade_head(url)
    with Session(make_engine(url), expire_on_commit=False) as session:
        dataset = Dataset(
            name="bench",
            train_ann=str(folder / "gt.json"),
            val_ann=str(folder / "gt.json"),
            train_images=str(folder),
            val_images=str(folder),
            stats={},
        )
        session.add(dataset)
        session.flush()
        job = Job(kind=JobKind.finetune, status=JobStatus.running, dataset_id=dataset.id, spec={})
        session.add(job)
        session.commit()
        start = time.perf_counter()
        evaluation = analysis_service.evaluate_job(
            session=session,
            job_id=job.id,
            predictions_path=folder / "results.json",
            resamples=None,  # the intervals, committed after, are bench_bootstrap.py's part
        )
        total = time.perf_counter() - start
        stats = [evaluation.bbox_mAP, evaluation.bbox_mAP_50]
    return {"seconds": {"store": total}, "stats_head": stats}


def run_tool(tool: str, folder: Path) -> dict[str, Any]:
    """One tool on the JSON files in ``folder`` (runs in its own process)."""
    if tool == "job-store":
        report = _job_store(folder)
        return {**report, "load_s": 0.0, "load_rss_mb": 0.0, "peak_rss_mb": _peak_rss_mb()}
    if tool == "faster-coco-eval":
        try:
            from faster_coco_eval import COCO as FastCOCO  # noqa: N811
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            return {"missing": True}
    start = time.perf_counter()
    gt = json.loads((folder / "gt.json").read_text())
    results = json.loads((folder / "results.json").read_text())
    load_s, load_rss = time.perf_counter() - start, _peak_rss_mb()
    if tool == "engine":
        from backend.analysis.engine import evaluate, summarize

        start = time.perf_counter()
        matches = evaluate(gt, results)
        evaluate_s = time.perf_counter() - start
        start = time.perf_counter()
        stats = summarize(matches).stats.tolist()
        report = {"seconds": {"evaluate": evaluate_s, "summarize": time.perf_counter() - start}}
        report["stats"] = stats
    elif tool == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        report = _cocoeval_steps(COCO, COCOeval, gt, results)
    else:
        report = _cocoeval_steps(FastCOCO, COCOeval_faster, gt, results)
    return {**report, "load_s": load_s, "load_rss_mb": load_rss, "peak_rss_mb": _peak_rss_mb()}


def _in_subprocess(tool: str, folder: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--tool", tool, "--folder", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--preds", type=int, default=100, help="predictions per image")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tool", choices=TOOLS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tool:
        print(json.dumps(run_tool(args.tool, args.folder)))
        return 0

    print(f"load average at start: {_load_average()} (cpus: {os.cpu_count()})")
    start = time.perf_counter()
    gt, results = synthetic_set(args.images, args.preds, args.classes, seed=args.seed)
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT, "
        f"{len(results)} predictions, {args.classes} classes "
        f"(built in {time.perf_counter() - start:.1f} s)"
    )
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for image in gt["images"]:  # a registered dataset names every image's file
            image.setdefault("file_name", f"{image['id']:06d}.jpg")
        (folder / "gt.json").write_text(json.dumps(gt))
        (folder / "results.json").write_text(json.dumps(results))
        del gt, results
        for tool in TOOLS:
            reports[tool] = _in_subprocess(tool, folder)

    print(
        f"{'tool':<17} {'json load':>9} {'index':>7} {'evaluate':>9} {'accum.':>7} "
        f"{'summ.':>7} {'eval total':>10} {'vs engine':>9} {'RSS load':>9} {'peak RSS':>9}"
    )
    engine_total = sum(reports["engine"]["seconds"].values())
    for tool, report in reports.items():
        if report.get("missing"):
            print(f"{tool:<17} not installed")
            continue
        seconds = report["seconds"]
        total = sum(seconds.values())
        steps = " ".join(
            f"{seconds[step]:>{width - 1}.2f}s" if step in seconds else f"{'-':>{width}}"
            for step, width in (("index", 7), ("evaluate", 9), ("accumulate", 7), ("summarize", 7))
        )
        print(
            f"{tool:<17} {report['load_s']:>8.2f}s {steps} {total:>9.2f}s "
            f"{total / engine_total:>8.1f}x {report['load_rss_mb']:>7.0f}MB "
            f"{report['peak_rss_mb']:>7.0f}MB"
        )
    print(
        "(eval total: everything after the JSON load; engine evaluate includes validation; "
        "job-store: the end-of-job step up to its first commit: JSON load, metrics, analysis, rows "
        "written; the intervals that follow are timed by bench_bootstrap.py)"
    )

    reference = np.array(reports["pycocotools"]["stats"])
    failed = False
    for tool in ("engine", "faster-coco-eval"):
        if reports[tool].get("missing"):
            continue
        diff = float(np.abs(np.array(reports[tool]["stats"]) - reference).max())
        exact = reports[tool]["stats"] == reports["pycocotools"]["stats"]
        print(f"{tool} stats vs pycocotools: max abs diff {diff:.3g}, bit-identical: {exact}")
        failed |= tool == "engine" and diff > 1e-9
    stored = reports["job-store"]["stats_head"]
    same = stored == reference[:2].tolist()
    print(f"job-store stored bbox_mAP, bbox_mAP_50 {stored}: equal to pycocotools': {same}")
    failed |= not same
    print("stats (pycocotools): " + " ".join(f"{s:.4f}" for s in reference))
    print(f"load average at end: {_load_average()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
