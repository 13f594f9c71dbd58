"""The job lifecycle in backend/jobs/service.py, on the real database: claim, progress,
resume, finish, cancel and orphans."""

from __future__ import annotations

import factories
import pytest
from sqlalchemy import select

from backend.jobs import service as job_service
from backend.jobs.models import JobStatus, MetricPoint


def _points(steps: range, key: str = "train/loss") -> list[dict]:
    return [{"key": key, "step": step, "epoch": None, "value": float(step)} for step in steps]


def test_claim_runs_a_queued_job_once_and_marks_a_redelivery_as_resuming(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)

    claimed, resuming = job_service.claim(session=db, job_id=job.id, host="gpu-1")
    assert claimed.status == JobStatus.running and not resuming and claimed.attempts == 1
    again, resuming = job_service.claim(session=db, job_id=job.id, host="gpu-2")
    assert resuming and again.attempts == 2 and again.worker_host == "gpu-2"

    job_service.finish(session=db, job_id=job.id, status=JobStatus.succeeded)
    assert job_service.claim(session=db, job_id=job.id, host="gpu-1") is None
    with pytest.raises(ValueError, match="final status"):
        job_service.finish(session=db, job_id=job.id, status=JobStatus.running)


def test_a_cancel_asked_before_the_claim_ends_the_job(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.cancel(session=db, job_id=job.id)
    assert job_service.claim(session=db, job_id=job.id, host="gpu-1") is None
    db.refresh(job)
    assert job.status == JobStatus.cancelled


def test_progress_tells_the_worker_to_stop_once_a_cancel_is_asked(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.claim(session=db, job_id=job.id, host="gpu-1")
    assert not job_service.record_progress(
        session=db, job_id=job.id, points=_points(range(1, 4)), progress_iter=3
    )
    job_service.cancel(session=db, job_id=job.id)
    assert job_service.record_progress(session=db, job_id=job.id, progress_iter=4)
    db.refresh(job)
    assert job.progress_iter == 4 and job.heartbeat_at is not None


def test_a_resumed_run_writes_each_step_once(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.claim(session=db, job_id=job.id, host="gpu-1")
    # the first attempt got to step 14, its last checkpoint was at 10, then it was killed
    job_service.record_progress(session=db, job_id=job.id, points=_points(range(1, 15)))
    job_service.record_progress(session=db, job_id=job.id, points=_points([10], key="val/bbox_mAP"))
    job_service.claim(session=db, job_id=job.id, host="gpu-1")
    job_service.record_progress(session=db, job_id=job.id, progress_iter=10, resumed_at=10)
    job_service.record_progress(session=db, job_id=job.id, points=_points(range(11, 21)))

    steps = db.scalars(
        select(MetricPoint.step)
        .where(MetricPoint.job_id == job.id, MetricPoint.key == "train/loss")
        .order_by(MetricPoint.step)
    ).all()
    assert steps == list(range(1, 21))
    series = {s.key: s for s in job_service.metric_series(session=db, job_id=job.id)}
    assert series["val/bbox_mAP"].steps == [10]


def test_a_step_written_again_keeps_one_point_with_the_new_value(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.record_progress(session=db, job_id=job.id, points=_points(range(1, 4)))
    again = [{"key": "train/loss", "step": 2, "epoch": 1, "value": 42.0}]
    job_service.record_progress(session=db, job_id=job.id, points=again + again)

    (series,) = job_service.metric_series(session=db, job_id=job.id)
    assert series.steps == [1, 2, 3] and series.values == [1.0, 42.0, 3.0]
    assert series.epochs == [None, 1, None]


def test_orphans_are_the_running_jobs_of_a_host(db, dataset_id):
    mine = factories.job(db, dataset_id=dataset_id)
    theirs = factories.job(db, dataset_id=dataset_id)
    done = factories.job(db, dataset_id=dataset_id)
    for job, host in ((mine, "gpu-1"), (theirs, "gpu-2"), (done, "gpu-1")):
        job_service.claim(session=db, job_id=job.id, host=host)
    job_service.finish(session=db, job_id=done.id, status=JobStatus.failed, error="x" * 3000)

    assert mine.id in job_service.orphans(session=db, host="gpu-1")
    assert theirs.id not in job_service.orphans(session=db, host="gpu-1")
    assert done.id not in job_service.orphans(session=db, host="gpu-1")
    db.refresh(done)
    assert len(done.error) == 2000 and done.finished_at is not None
