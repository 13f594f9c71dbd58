"""`detlab-worker`: start a Celery worker on some of this host's GPUs (or on CPU).

    detlab-worker --gpus 0,1,2,3          # four GPUs: up to four 1-GPU jobs at once,
                                          # or one job of up to 4 GPUs, or any mix
    detlab-worker --gpus 4,5,6,7 --name w2
    detlab-worker --gpus none             # a CPU worker (a job of gpus N runs N gloo processes)

It is `celery -A worker.celery_app worker` with DETLAB_WORKER_GPUS and DETLAB_QUEUE set, one
pool process per GPU, and a node name that says which GPUs it has. Arguments after `--` go to
Celery unchanged.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from backend.config import SettingsError, get_settings
from worker.devices import discover_gpus

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    args, extra = _parser().parse_known_args(argv)
    if extra and extra[0] == "--":
        extra = extra[1:]
    if args.gpus is not None:
        os.environ["DETLAB_WORKER_GPUS"] = args.gpus
    if args.queue is not None:
        os.environ["DETLAB_QUEUE"] = args.queue
    get_settings.cache_clear()
    try:
        settings = get_settings()
        gpus = discover_gpus(settings.worker_gpus)
    except (SettingsError, ValueError) as exc:
        sys.exit(f"detlab-worker: {exc}")
    label = "gpu" + "-".join(gpu.index for gpu in gpus) if gpus else "cpu"
    name = args.name or f"detlab-{label}@{socket.gethostname()}"
    if "@" not in name:
        name = f"{name}@{socket.gethostname()}"
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--hostname",
        name,
        "--loglevel",
        args.loglevel,
        *extra,
    ]
    print(
        f"detlab-worker {name}: queue {settings.queue}, "
        + (f"GPUs {', '.join(g.index + ' ' + g.name for g in gpus)}" if gpus else "CPU"),
        flush=True,
    )
    os.execv(sys.executable, command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detlab-worker",
        description="Start a DetLab worker on some of this host's GPUs (see README, Scaling out).",
    )
    parser.add_argument(
        "--gpus",
        help="GPU indices as nvidia-smi numbers them (0,1,2,3), or 'none' for a CPU worker; "
        "default: CUDA_VISIBLE_DEVICES, else every GPU of the host",
    )
    parser.add_argument("--name", help="the worker's name in the fleet (default: its GPUs@host)")
    parser.add_argument("--queue", help="the queue to take jobs from (default: DETLAB_QUEUE)")
    parser.add_argument("--loglevel", default="INFO")
    return parser


if __name__ == "__main__":
    main()
