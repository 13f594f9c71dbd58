"""The Celery app of the GPU workers: `celery -A worker.celery_app worker`.

The parent process never touches CUDA: each job runs in a child that exits after
one task, so the GPU memory of a finished job is returned.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time

from celery import Celery, Task
from celery.signals import celeryd_after_setup, worker_process_init, worker_ready, worker_shutdown

from backend.config import get_settings
from backend.db import get_engine, session_factory
from backend.queue import TASK_NAME, celery_config
from worker.fleet import Registration
from worker.runner import worker_devices

__all__ = ["app", "run"]

log = logging.getLogger(__name__)

settings = get_settings()
settings.prepare_folders()
app = Celery("detlab-worker")
app.conf.update(celery_config(settings))
# one child per GPU (a multi-GPU job takes one child and several GPUs); CPU workers run
# DETLAB_WORKER_CPU_SLOTS jobs at once. `--concurrency` on the command line still wins (and
# then decides how many jobs share the cores' threads).
app.conf.worker_concurrency = worker_devices(settings).slots
registration: Registration | None = None
# the pool's size as the worker started it (`--concurrency` or the slots), set in the parent
# before its children fork, so that each child knows how many jobs share the cores
pool_size: int | None = None


@celeryd_after_setup.connect
def _remember_pool_size(instance: object = None, **_: object) -> None:
    global pool_size
    found = getattr(instance, "concurrency", None)
    pool_size = found if isinstance(found, int) and found > 0 else None


@worker_process_init.connect
def _prepare_child(**_: object) -> None:
    # a forked child must not reuse the parent's database connections
    get_engine().dispose(close=False)
    # The pool marks its children daemonic, and Python then refuses them children of their
    # own, which PyTorch's DataLoader workers are. The child runs one job and exits; torch
    # reaps its loader workers itself (and they exit when their parent dies).
    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]
    # CPU slots share the cores: two jobs of two threads each on two cores run slower than one
    threads = worker_devices(settings).threads_per_job(len(os.sched_getaffinity(0)), pool_size)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@worker_ready.connect
def _start_reconciler(sender: object = None, **_: object) -> None:
    """The worker registers itself (GET /workers) and beats every DETLAB_HEARTBEAT_INTERVAL_S;
    the queue's reconciler runs once now (jobs left by a dead worker, messages the broker lost)
    and then every DETLAB_RECONCILE_INTERVAL_S, in threads of this parent process."""
    global registration
    name = getattr(sender, "hostname", None) or f"detlab@{socket.gethostname()}"
    pool = getattr(getattr(sender, "controller", None), "concurrency", None)
    registration = Registration(
        name=name,
        settings=settings,
        sessions=session_factory(),
        devices=worker_devices(settings),
        slots=pool if isinstance(pool, int) else None,
    ).start()
    thread = threading.Thread(target=_reconcile_forever, name="reconciler", daemon=True)
    thread.start()


@worker_shutdown.connect
def _deregister(**_: object) -> None:
    if registration is not None:
        registration.stop()


def _reconcile_forever() -> None:
    from backend.jobs.reconciler import reconcile

    interval = settings.reconcile_interval_s
    while True:
        try:
            reconcile(sessions=session_factory(), settings=settings)
        except Exception:  # a blip or a broker hiccup: the next pass tries again
            log.exception(
                "the queue's reconciler failed; retrying in %g s", settings.reconcile_interval_s
            )
        time.sleep(interval)


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
def run(self: Task, job_id: int) -> str:
    """Wake for a message: claim and run the oldest queued job (state lives in the database)."""
    from worker.runner import run_job

    status = run_job(
        job_id, settings=settings, sessions=session_factory(), host=self.request.hostname or ""
    )
    return status.value if status else "nothing to run"
