"""Runs one job of any kind: claim it, train it with mmengine, record how it ended."""

from __future__ import annotations

import contextlib
import logging
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

import backend.models  # noqa: F401 - every table, so the ORM can resolve foreign keys
from backend.config import Settings
from backend.db import utcnow
from backend.jobs.models import FINISHED_STATUSES, Job, JobKind, JobStatus
from worker.checkpoints import allow_own_checkpoints
from worker.progress import JobCancelled, JobFailed, JobProgressHook

__all__ = ["run_job", "claim", "train", "save_config", "require_cuda_for_amp"]

log = logging.getLogger(__name__)


def claim(sessions: sessionmaker[Session], job_id: int) -> tuple[Job, bool] | None:
    """Mark a job running on this host; returns (job, resuming) or None when it must not run."""
    with sessions() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the task", job_id)
            return None
        if job.status in FINISHED_STATUSES:
            log.info("job %s is already %s; nothing to do", job_id, job.status.value)
            return None
        if job.cancel_requested:
            _finish(session, job, JobStatus.cancelled, "cancelled before it started")
            return None
        resuming = job.status == JobStatus.running  # a redelivered task: a worker died
        job.status = JobStatus.running
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        job.worker_host = socket.gethostname()
        session.commit()
        return job, resuming


def _finish(session: Session, job: Job, status: JobStatus, error: str | None) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(status=status, error=error, finished_at=utcnow(), heartbeat_at=utcnow())
    )
    session.commit()


def run_job(job_id: int, *, settings: Settings, sessions: sessionmaker[Session]) -> JobStatus:
    """Run a queued (or redelivered) job to its end and record the outcome; never raises."""
    try:
        claimed = claim(sessions, job_id)
    except Exception as exc:
        log.exception("job %s could not be started", job_id)
        _record_failure(
            sessions, job_id, f"the worker could not start it: {_describe(exc, spec={})}"
        )
        return JobStatus.failed
    if claimed is None:
        with sessions() as session:
            job = session.get(Job, job_id)
            return job.status if job else JobStatus.failed
    job, resuming = claimed
    status, error = JobStatus.succeeded, None
    try:
        if job.kind == JobKind.pretrain:
            from worker.pretrain import run_pretrain

            run_pretrain(job, resuming=resuming, settings=settings, sessions=sessions)
        else:
            from worker.finetune import run_finetune

            run_finetune(job, resuming=resuming, settings=settings, sessions=sessions)
    except JobCancelled as exc:
        status, error = JobStatus.cancelled, str(exc)
    except JobFailed as exc:
        status, error = JobStatus.failed, str(exc)
    except Exception as exc:  # noqa: BLE001 - every failure must be recorded, never lost
        status, error = JobStatus.failed, _describe(exc, spec=job.spec)
        log.exception("job %s failed", job_id)
    with sessions() as session:
        _finish(session, job, status, error)
    return status


def _record_failure(sessions: sessionmaker[Session], job_id: int, reason: str) -> None:
    """Best effort: a job that cannot even be claimed must not stay queued forever."""
    try:
        with sessions() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=JobStatus.failed, error=reason[:2000], finished_at=utcnow())
            )
            session.commit()
    except Exception:
        log.exception("could not record the failure of job %s", job_id)


def _describe(exc: BaseException, *, spec: dict[str, Any]) -> str:
    """A failure reason a user can act on."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        size = spec.get("image_scale") or spec.get("image_size")
        return (
            f"CUDA out of memory with batch_size {spec.get('batch_size')} at image size "
            f"{size}; lower either, or enable amp"
        )
    return f"{name}: {text}"[:2000]


def require_cuda_for_amp(amp: bool) -> None:
    """AMP here means fp16 on a CUDA GPU; say so instead of failing deep in mmengine."""
    if amp:
        import torch

        if not torch.cuda.is_available():
            raise JobFailed(
                "amp (fp16 mixed precision) needs a CUDA GPU and this worker has "
                "none; submit with amp false or run a GPU worker"
            )


def save_config(cfg: Any, path: Path, *, job_id: int, sessions: sessionmaker[Session]) -> None:
    """Write the generated config beside the job's files and into the job's row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(path))
    with sessions() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(config_text=path.read_text(encoding="utf-8"))
        )
        session.commit()


def train(
    cfg: Any, *, job_id: int, resuming: bool, sessions: sessionmaker[Session]
) -> tuple[Any, JobProgressHook]:
    """Train with mmengine's Runner and DetLab's progress hook, resuming a redelivered job
    from its last checkpoint (ours, so mmengine's pickled types are allowed to load)."""
    from mmengine.runner import Runner

    work_dir = Path(cfg.work_dir)
    cfg.resume = resuming and (work_dir / "last_checkpoint").is_file()
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    hook = JobProgressHook(job_id=job_id, sessions=sessions)
    runner.register_hook(hook)
    if cfg.resume:
        log.info("job %s: resuming from %s", job_id, work_dir)
    with allow_own_checkpoints() if cfg.resume else contextlib.nullcontext():
        runner.train()
    return runner, hook
