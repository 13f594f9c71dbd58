"""Images/s of a fine-tune job run through the DetLab worker vs plain mmdet, on one GPU.

Both runs train the very same config: the one the worker generates and saves with the
job, which the plain run hands to mmdet's own tools/train.py. Throughput is read the same
way for both, from mmengine's per-iteration times (scalars.json), after a warm-up share.

    python benchmarks/bench_gpu_finetune.py --out /tmp/bench --iters 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {
    "fp32 batch 2": {"batch_size": 2, "amp": False},
    "amp batch 8": {"batch_size": 8, "amp": True},
}


def throughput(work_dir: Path, batch_size: int, warmup: float = 0.3) -> tuple[float, int]:
    """Images/s from mmengine's logged iteration times, skipping the first warm-up share."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not logs:
        raise SystemExit(f"no scalars.json under {work_dir}")
    times = [
        json.loads(line)["time"]
        for line in logs[-1].read_text().splitlines()
        if '"time"' in line and '"loss"' in line
    ]
    kept = times[int(len(times) * warmup) :]
    return batch_size / statistics.mean(kept), len(kept)


def register_shapes(shapes: Any, *, name: str, sessions: Any, settings: Any) -> Any:
    """Register generate_shapes' dataset through the datasets service; the Dataset."""
    from backend.datasets import service as dataset_service
    from backend.datasets.schemas import DatasetCreate

    with sessions() as session:
        return dataset_service.register(
            session=session,
            dataset_in=DatasetCreate(
                name=name,
                train_ann=str(shapes.train_ann),
                val_ann=str(shapes.val_ann),
                train_images=str(shapes.train_images),
                val_images=str(shapes.val_images),
            ),
            roots=settings.data_roots,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--workers", type=int, default=8, help="data loader workers")
    args = parser.parse_args()
    home = args.out.resolve()
    env = {**os.environ, "DETLAB_HOME": str(home), "DETLAB_DATA_ROOTS": str(home / "data")}
    os.environ.update(env)

    import torch
    import torchvision

    from backend.config import get_settings
    from backend.datasets.shapes import generate_shapes
    from backend.db import session_factory
    from backend.jobs import service as job_service
    from backend.jobs.spec import FinetuneSpec
    from backend.migrate import upgrade_head
    from backend.queue import enqueue

    settings = get_settings()
    settings.prepare_folders()
    upgrade_head(settings.database_url)
    started = time.monotonic()
    shapes = generate_shapes(
        home / "data" / "shapes", seed=0, num_train=args.images, num_val=8, image_size=(1333, 800)
    )
    print(f"dataset: {args.images} images of 1333x800 in {time.monotonic() - started:.0f}s")
    # R50 weights in torchvision's layout, as an ImageNet init would bring (random values:
    # only speed is measured), so the backbone is set up as mmdet's R50 configs are
    backbone = home / "data" / "r50_torchvision.pth"
    torch.save(torchvision.models.resnet50().state_dict(), backbone)

    sessions = session_factory()
    dataset = register_shapes(shapes, name="bench", sessions=sessions, settings=settings)

    worker_log = (home / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--loglevel=INFO"],
        cwd=ROOT,
        env=env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    results = {}
    try:
        for label, setting in SETTINGS.items():
            spec = FinetuneSpec(
                dataset_id=dataset.id,
                backbone="resnet50",
                detector="faster_rcnn",
                init={"checkpoint": str(backbone)},
                norm="frozen_bn",
                iterations=args.iters,
                eval_interval=args.iters,
                lr=0.0025,
                warmup_iters=100,
                num_workers=args.workers,
                **setting,
            )
            with sessions() as session:
                (job,) = job_service.create(session=session, spec=spec, roots=settings.data_roots)
            enqueue(job.id)
            while True:
                with sessions() as session:
                    job = job_service.get(session=session, job_id=job.id)
                if job.status.value in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(2)
            if job.status.value != "succeeded":
                raise SystemExit(f"{label}: worker job {job.id} {job.status.value}: {job.error}")
            job_dir = settings.artifact_root / "jobs" / str(job.id)
            via_worker = throughput(job_dir / "work", setting["batch_size"])

            import mmdet

            train_py = Path(mmdet.__file__).parent / ".mim" / "tools" / "train.py"
            plain_dir = home / "plain" / label.replace(" ", "_")
            subprocess.run(
                [
                    sys.executable,
                    str(train_py),
                    str(job_dir / "config.py"),
                    "--work-dir",
                    str(plain_dir),
                ],
                cwd=home,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            plain = throughput(plain_dir, setting["batch_size"])
            overhead = (plain[0] - via_worker[0]) / plain[0] * 100
            results[label] = {
                "worker_img_s": round(via_worker[0], 2),
                "plain_mmdet_img_s": round(plain[0], 2),
                "worker_overhead_pct": round(overhead, 2),
                "logged_windows": via_worker[1],
            }
            print(
                f"{label}: worker {via_worker[0]:.2f} img/s, plain mmdet {plain[0]:.2f} img/s,"
                f" overhead {overhead:+.2f}%",
                flush=True,
            )
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    print(
        json.dumps(
            {
                "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
                "iterations": args.iters,
                "results": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
