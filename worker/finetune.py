"""Runs one fine-tune job: config, training with mmengine's Runner, COCO evaluation."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.datasets.models import Dataset
from backend.db import utcnow
from backend.errors import DomainError
from backend.evaluations import analysis_service
from backend.evaluations import service as evaluation_service
from backend.jobs.models import FINISHED_STATUSES, Job, JobStatus
from backend.jobs.spec import CheckpointInit, FinetuneSpec
from backend.weights.models import Weights
from worker.checkpoints import allow_own_checkpoints, check_user_checkpoint
from worker.mmdet_config import JobPaths, build_finetune_config
from worker.progress import JobCancelled, JobFailed, JobProgressHook

__all__ = ["run_job", "claim"]

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
    """Run a claimed-or-queued job to its end and record the outcome; never raises."""
    claimed = claim(sessions, job_id)
    if claimed is None:
        with sessions() as session:
            job = session.get(Job, job_id)
            return job.status if job else JobStatus.failed
    job, resuming = claimed
    status, error = JobStatus.succeeded, None
    try:
        _train_and_evaluate(job, resuming=resuming, settings=settings, sessions=sessions)
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


def _describe(exc: BaseException, *, spec: dict[str, Any]) -> str:
    """A failure reason a user can act on."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        return (
            f"CUDA out of memory with batch_size {spec.get('batch_size')} at image_scale "
            f"{spec.get('image_scale')}; lower either, or enable amp"
        )
    return f"{name}: {text}"[:2000]


def _load_inputs(
    job: Job, settings: Settings, sessions: sessionmaker[Session]
) -> tuple[FinetuneSpec, Dataset, str | None]:
    spec = FinetuneSpec.model_validate(job.spec)
    with sessions() as session:
        dataset = session.get(Dataset, spec.dataset_id)
        weights = session.get(Weights, job.weights_id) if job.weights_id else None
    if dataset is None:
        raise JobFailed(f"dataset {spec.dataset_id} no longer exists")
    for label in ("train_ann", "val_ann", "train_images", "val_images"):
        if not Path(getattr(dataset, label)).exists():
            raise JobFailed(
                f"dataset {dataset.name!r} is gone: its {label} "
                f"{getattr(dataset, label)} does not exist"
            )
    weights_path = weights.path if weights else None
    user_checkpoint = spec.init.checkpoint if isinstance(spec.init, CheckpointInit) else None
    for path in filter(None, (user_checkpoint, weights_path)):
        try:
            check_user_checkpoint(path)
        except ValueError as exc:
            raise JobFailed(f"backbone init failed: {exc}") from None
    if spec.amp:
        import torch

        if not torch.cuda.is_available():
            raise JobFailed(
                "amp (fp16 mixed precision) needs a CUDA GPU and this worker has "
                "none; submit with amp false or run a GPU worker"
            )
    return spec, dataset, weights_path


def _train_and_evaluate(
    job: Job, *, resuming: bool, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    assert settings.artifact_root is not None
    spec, dataset, weights_path = _load_inputs(job, settings, sessions)
    paths = JobPaths.for_job(settings.artifact_root, job.id)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_finetune_config(spec, dataset=dataset, paths=paths, weights_path=weights_path)
    cfg.dump(str(paths.config))
    with sessions() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(config_text=paths.config.read_text(encoding="utf-8"))
        )
        session.commit()

    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=True)
    has_checkpoint = (paths.work_dir / "last_checkpoint").is_file()
    cfg.resume = resuming and has_checkpoint
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    hook = JobProgressHook(job_id=job.id, sessions=sessions)
    runner.register_hook(hook)
    if cfg.resume:
        log.info("job %s: resuming from %s", job.id, paths.work_dir)
    with allow_own_checkpoints() if cfg.resume else _nothing():
        runner.train()
    if hook.last_val_iter != runner.iter or not paths.predictions.is_file():
        runner.val()
    store_evaluation(
        job_id=job.id,
        val_ann=Path(dataset.val_ann),
        predictions=paths.predictions,
        sessions=sessions,
    )


def _nothing():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.nullcontext()


def store_evaluation(
    *, job_id: int, val_ann: Path, predictions: Path, sessions: sessionmaker[Session]
) -> None:
    """pycocotools' COCO metrics of the saved val predictions, stored as the job's evaluation."""
    from backend.analysis import coco_metrics

    gt = json.loads(val_ann.read_text(encoding="utf-8"))
    results = json.loads(predictions.read_text(encoding="utf-8"))
    metrics = coco_metrics(gt, results)
    per_class = metrics.pop("classwise", {})
    with sessions() as session:
        evaluation_service.store(
            session=session,
            job_id=job_id,
            metrics=metrics,
            per_class_ap=per_class,
            predictions_path=str(predictions),
        )
    with sessions() as session:
        try:
            analysis_service.analyze_job(session=session, job_id=job_id)
        except DomainError as exc:
            # the COCO metrics stand on their own; a failed breakdown is reported beside them
            session.rollback()
            evaluation = evaluation_service.get_for_job(session=session, job_id=job_id)
            evaluation.analysis = {"error": exc.message}
            session.commit()
