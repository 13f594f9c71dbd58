"""Images/s of a fine-tune job alone against two jobs at once, through real DetLab workers.

On a host with two or more GPUs: one 1-GPU job alone, two 1-GPU jobs at once on one worker
(`detlab-worker --gpus 0,1`), and one `gpus: 2` job across both (torch.distributed, NCCL). On
a host with one GPU: one job alone, then two at once sharing it (two workers given the same
GPU, each with lock files of its own: a measurement of sharing, not how a fleet places jobs).
Without a GPU the same runs happen on CPU (gloo). Throughput is read from mmengine's logged
iteration times after a warm-up share, as benchmarks/bench_gpu_finetune.py reads it.

    python benchmarks/bench_fleet.py --out /tmp/fleet --iters 200
    python benchmarks/bench_fleet.py --out /tmp/fleet --iters 10 --images 8 --size 128  # CPU

Embedded defaults (SQLite, filesystem broker), so it needs no server. Prints one line per run
and a JSON summary with the device, the load average and each job's images/s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_gpu_finetune import register_shapes, throughput  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=800, help="image height (width x 5/3)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, default=4)
    args = parser.parse_args()
    home = args.out.resolve()
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "DETLAB_HOME": str(home), "DETLAB_DATA_ROOTS": str(home / "data")}
    os.environ.update(env)

    from backend.config import get_settings
    from backend.datasets.shapes import generate_shapes
    from backend.db import session_factory
    from backend.jobs import service as job_service
    from backend.jobs.spec import FinetuneSpec
    from backend.migrate import upgrade_head
    from worker.devices import discover_gpus

    settings = get_settings()
    settings.prepare_folders()
    upgrade_head(settings.database_url)
    gpus = [gpu.index for gpu in discover_gpus("")]
    size = (args.size * 5 // 3, args.size)
    shapes = generate_shapes(
        home / "data" / "shapes", seed=0, num_train=args.images, num_val=4, image_size=size
    )
    sessions = session_factory()
    dataset = register_shapes(shapes, name="fleet-bench", sessions=sessions, settings=settings)

    def submit(processes: int = 1) -> int:
        spec = FinetuneSpec(
            dataset_id=dataset.id,
            backbone="resnet50",
            init="scratch",
            norm="bn",
            image_scale=size,
            iterations=args.iters,
            eval_interval=args.iters,
            batch_size=args.batch_size,
            lr=0.0025,
            warmup_iters=min(100, args.iters // 10),
            num_workers=args.loader_workers,
            gpus=processes,
        )
        with sessions() as session:
            (job,) = job_service.create(session=session, spec=spec, roots=settings.data_roots)
            job_service.mark_unsent(session=session, job_ids=[job.id])  # the reconciler sends
            return job.id

    def finish(job_ids: list[int]) -> list[float]:
        """Wait for the jobs; the images/s of each (all processes together)."""
        while True:
            with sessions() as session:
                jobs = [job_service.get(session=session, job_id=i) for i in job_ids]
            if all(job.status.value in ("succeeded", "failed", "cancelled") for job in jobs):
                break
            time.sleep(2)
        rates = []
        for job in jobs:
            if job.status.value != "succeeded":
                raise SystemExit(f"job {job.id} {job.status.value}: {job.error}")
            work = settings.artifact_root / "jobs" / str(job.id) / "work"
            rates.append(throughput(work, args.batch_size * job.gpus)[0])
        return rates

    def workers(*plans: tuple[str, str]) -> list[subprocess.Popen[bytes]]:
        """Start one worker per (name, gpus); each has lock files of its own."""
        started = []
        for name, selection in plans:
            tmp = home / "tmp" / name
            tmp.mkdir(parents=True, exist_ok=True)
            started.append(
                subprocess.Popen(
                    [sys.executable, "-m", "worker.cli", "--gpus", selection, "--name", name],
                    cwd=ROOT,
                    env={**env, "TMPDIR": str(tmp), "DETLAB_RECONCILE_INTERVAL_S": "2"},
                    stdout=(home / f"{name}.log").open("w"),
                    stderr=subprocess.STDOUT,
                )
            )
        return started

    def stop(processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=120)

    results: dict[str, list[float]] = {}
    first = gpus[0] if gpus else "none"
    running = workers(("alone", first))
    results["one job alone"] = finish([submit()])
    stop(running)
    if len(gpus) >= 2:
        running = workers(("pair", f"{gpus[0]},{gpus[1]}"))
        results["two 1-GPU jobs at once (one worker, 2 GPUs)"] = finish([submit(), submit()])
        results["one gpus:2 job"] = finish([submit(2)])
        stop(running)
    else:
        running = workers(("a", first), ("b", first))
        label = "two jobs at once sharing one GPU" if gpus else "two jobs at once on CPU"
        results[label] = finish([submit(), submit()])
        stop(running)
        if not gpus:
            running = workers(("dist", "none"))
            results["one gpus:2 job (gloo)"] = finish([submit(2)])
            stop(running)
    alone = results["one job alone"][0]
    for label, rates in results.items():
        shown = ", ".join(f"{rate:.2f}" for rate in rates)
        print(f"{label}: {shown} img/s per job (x{sum(rates) / alone:.2f} of one job alone)")
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary = {
        "device": device,
        "gpus": gpus,
        "load_average": os.getloadavg(),
        "iterations": args.iters,
        "img_s": {label: [round(r, 2) for r in rates] for label, rates in results.items()},
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
