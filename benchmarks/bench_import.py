"""Time importing a results file against scoring the same file as a job's own predictions.

Target (issue 16): importing and fully evaluating a 5,000-image, 500,000-box COCO results file
takes no more than the evaluation itself plus 5 s of copying, checking and storing.

Both paths run on one synthetic set (bench_analysis's generator), each in a fresh process on
its own SQLite database built by the migrations, alternating, twice each:
- "evaluate": `analysis_service.evaluate_job` on the file, as a finished job's end does
  (metrics, analysis, per-image rows, then bootstrap intervals);
- "import": `runs.service.import_predictions` with the file as the upload: copied in blocks,
  parsed, every entry checked against the val split, then the same evaluate_job.

    python benchmarks/bench_import.py [--images N] [--preds P] [--classes C]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_analysis import synthetic_set  # the sibling script: one generator for all

MODES = ("evaluate", "import")


def _database(folder: Path, tag: str) -> Any:
    from sqlalchemy.orm import Session

    from backend.datasets.models import Dataset
    from backend.db import make_engine
    from backend.migrate import upgrade_head

    url = f"sqlite:///{folder / f'{tag}.db'}"
    upgrade_head(url)
    session = Session(make_engine(url), expire_on_commit=False)
    categories = json.loads((folder / "gt.json").read_text())["categories"]
    dataset = Dataset(
        name="bench",
        train_ann=str(folder / "gt.json"),
        val_ann=str(folder / "gt.json"),
        train_images=str(folder),
        val_images=str(folder),
        stats={"categories": categories, "train": {"images": 1}},
    )
    session.add(dataset)
    session.commit()
    return session, dataset


def run_mode(mode: str, folder: Path, tag: str) -> dict[str, Any]:
    """One path on the files in ``folder`` (runs in its own process)."""
    from backend.config import Settings
    from backend.evaluations import analysis_service
    from backend.jobs.models import Job, JobKind, JobStatus
    from backend.runs.service import import_predictions

    session, dataset = _database(folder, tag)
    results = folder / "results.json"
    start = time.perf_counter()
    if mode == "evaluate":
        job = Job(kind=JobKind.finetune, status=JobStatus.running, dataset_id=dataset.id, spec={})
        session.add(job)
        session.commit()
        evaluation = analysis_service.evaluate_job(
            session=session, job_id=job.id, predictions_path=results
        )
    else:
        settings = Settings(home=folder / tag, artifact_root=folder / tag / "artifacts")
        with results.open("rb") as upload:
            _, evaluation = import_predictions(
                session=session,
                settings=settings,
                dataset_id=dataset.id,
                name="bench",
                source={},
                upload=upload,
            )
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mAP": evaluation.bbox_mAP}


def _in_subprocess(mode: str, folder: Path, tag: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--mode", mode, "--folder", str(folder), "--tag", tag],
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
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(run_mode(args.mode, args.folder, args.tag)))
        return 0

    print(f"load average at start: {_load_average()} (cpus: {os.cpu_count()})")
    gt, results = synthetic_set(args.images, args.preds, args.classes)
    for image in gt["images"]:
        image.setdefault("file_name", f"{image['id']:06d}.jpg")
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "gt.json").write_text(json.dumps(gt))
        (folder / "results.json").write_text(json.dumps(results))
        size_mb = (folder / "results.json").stat().st_size / 1e6
        print(
            f"synthetic set: {len(gt['images'])} images, {len(results)} predictions "
            f"({size_mb:.0f} MB of JSON)"
        )
        del gt, results
        mAPs = set()
        for round_ in range(args.rounds):
            order = MODES if round_ % 2 == 0 else MODES[::-1]
            for mode in order:
                report = _in_subprocess(mode, folder, f"{mode}{round_}")
                times[mode].append(report["seconds"])
                mAPs.add(report["mAP"])
                print(f"  round {round_ + 1} {mode:<8} {report['seconds']:6.2f} s")
    best = {mode: min(values) for mode, values in times.items()}
    print(
        f"best of {args.rounds}: evaluate {best['evaluate']:.2f} s, import {best['import']:.2f} s"
    )
    extra = best["import"] - best["evaluate"]
    print(
        f"import costs {extra:+.2f} s over the evaluation "
        f"({best['import'] / best['evaluate']:.2f}x); "
        f"target: at most +5 s -> {'met' if extra <= 5 else 'MISSED'}"
    )
    print(f"same mAP on both paths: {len(mAPs) == 1}; load average at end: {_load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
