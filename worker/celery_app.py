"""The Celery app of the GPU workers: `celery -A worker.celery_app worker`.

The parent process never touches CUDA: each job runs in a child that exits after
one task, so the GPU memory of a finished job is returned.
"""

from __future__ import annotations

import logging
import multiprocessing
import socket

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from backend.config import get_settings
from backend.db import get_engine, session_factory
from backend.queue import TASK_NAME, celery_config

__all__ = ["app", "run"]

log = logging.getLogger(__name__)

settings = get_settings()
settings.prepare_folders()
app = Celery("detlab-worker")
app.conf.update(celery_config(settings))


@worker_process_init.connect
def _prepare_child(**_: object) -> None:
    # a forked child must not reuse the parent's database connections
    get_engine().dispose(close=False)
    # The pool marks its children daemonic, and Python then refuses them children of their
    # own, which PyTorch's DataLoader workers are. The child runs one job and exits; torch
    # reaps its loader workers itself (and they exit when their parent dies).
    multiprocessing.current_process()._config["daemon"] = False  # type: ignore[attr-defined]


@worker_ready.connect
def _requeue_orphans(**_: object) -> None:
    """Jobs left 'running' by a worker on this host that died are queued again to resume."""
    from backend.jobs import service as job_service

    with session_factory()() as session:
        orphans = job_service.orphans(session=session, host=socket.gethostname())
    for job_id in orphans:
        log.warning("job %s was running when this host's worker stopped; resuming it", job_id)
        app.send_task(TASK_NAME, args=[job_id])


@app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
def run(job_id: int) -> str:
    """Run one job by id; its state is read from and written to the database."""
    from worker.runner import run_job

    return run_job(job_id, settings=settings, sessions=session_factory()).value
