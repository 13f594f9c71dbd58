"""The job lifecycle in backend/jobs/service.py, on the real database: claim, progress,
resume, finish, cancel and requeue, and the claim token that keeps a job to one attempt."""

from __future__ import annotations

from datetime import timedelta

import factories
import pytest
from sqlalchemy import select

from backend.db import utcnow
from backend.errors import Conflict
from backend.jobs import service as job_service
from backend.jobs.models import JobStatus, MetricPoint


def _points(steps: range, key: str = "train/loss") -> list[dict]:
    return [{"key": key, "step": step, "epoch": None, "value": float(step)} for step in steps]


def test_claim_takes_the_oldest_queued_job_once_and_a_rerun_resumes(db, dataset_id):
    first = factories.job(db, dataset_id=dataset_id)
    second = factories.job(db, dataset_id=dataset_id)

    claim = job_service.claim(session=db, queue="detlab", host="gpu-1")
    assert claim.job.id == first.id and claim.job.status == JobStatus.running
    assert not claim.resuming and claim.job.attempts == 1 and claim.job.claim_token == claim.token
    other = job_service.claim(session=db, queue="detlab", host="gpu-2")
    assert other.job.id == second.id and other.token != claim.token
    assert job_service.claim(session=db, queue="detlab", host="gpu-3") is None
    assert job_service.claim(session=db, queue="another", host="gpu-3") is None

    # the first attempt's worker died: the job goes back in line and the next claim resumes it
    job_service.requeue(session=db, job_id=first.id, stale_s=0)
    again = job_service.claim(session=db, queue="detlab", host="gpu-3")
    assert again.job.id == first.id and again.resuming and again.job.attempts == 2

    assert job_service.finish(
        session=db, job_id=first.id, status=JobStatus.succeeded, token=again.token
    )
    assert job_service.claim(session=db, queue="detlab", host="gpu-1") is None
    with pytest.raises(ValueError, match="final status"):
        job_service.finish(session=db, job_id=first.id, status=JobStatus.running)


def test_an_attempt_that_lost_its_claim_writes_nothing(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    old = job_service.claim(session=db, queue="detlab", host="gpu-1")
    job_service.requeue(session=db, job_id=job.id, stale_s=0)
    new = job_service.claim(session=db, queue="detlab", host="gpu-2")

    assert not job_service.heartbeat(session=db, job_id=job.id, token=old.token)
    with pytest.raises(job_service.ClaimLost):
        job_service.record_progress(
            session=db, job_id=job.id, points=_points(range(1, 4)), token=old.token
        )
    with pytest.raises(job_service.ClaimLost):
        job_service.save_config(session=db, job_id=job.id, config_text="x", token=old.token)
    assert not job_service.finish(
        session=db, job_id=job.id, status=JobStatus.failed, error="late", token=old.token
    )
    db.refresh(job)
    assert job.status == JobStatus.running and job.error is None and job.config_text is None
    assert job_service.metric_series(session=db, job_id=job.id) == []
    # the attempt that holds it writes
    assert job_service.heartbeat(session=db, job_id=job.id, token=new.token)
    job_service.record_progress(session=db, job_id=job.id, points=_points([1]), token=new.token)
    assert [s.steps for s in job_service.metric_series(session=db, job_id=job.id)] == [[1]]


def test_a_cancel_asked_before_the_claim_ends_the_job(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.cancel(session=db, job_id=job.id)
    assert job_service.claim(session=db, queue="detlab", host="gpu-1") is None
    db.refresh(job)
    assert job.status == JobStatus.cancelled


def test_progress_tells_the_worker_to_stop_once_a_cancel_is_asked(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    job_service.claim(session=db, queue="detlab", host="gpu-1")
    assert not job_service.record_progress(
        session=db, job_id=job.id, points=_points(range(1, 4)), progress_iter=3
    )
    job_service.cancel(session=db, job_id=job.id)
    assert job_service.record_progress(session=db, job_id=job.id, progress_iter=4)
    db.refresh(job)
    assert job.progress_iter == 4 and job.heartbeat_at is not None


def test_a_resumed_run_writes_each_step_once(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id)
    first = job_service.claim(session=db, queue="detlab", host="gpu-1")
    # the first attempt got to step 14, its last checkpoint was at 10, then it was killed
    for points in (_points(range(1, 15)), _points([10], key="val/bbox_mAP")):
        job_service.record_progress(session=db, job_id=job.id, points=points, token=first.token)
    job_service.requeue(session=db, job_id=job.id, stale_s=0)
    second = job_service.claim(session=db, queue="detlab", host="gpu-1")
    job_service.record_progress(
        session=db, job_id=job.id, progress_iter=10, resumed_at=10, token=second.token
    )
    job_service.record_progress(
        session=db, job_id=job.id, points=_points(range(11, 21)), token=second.token
    )

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


def test_a_long_error_is_cut_to_what_the_column_holds(db, dataset_id):
    done = factories.job(db, dataset_id=dataset_id, status=JobStatus.running)
    job_service.finish(session=db, job_id=done.id, status=JobStatus.failed, error="x" * 3000)
    db.refresh(done)
    assert len(done.error) == 2000 and done.finished_at is not None


def test_requeue_refuses_a_live_or_succeeded_job_and_sends_others_to_the_back(db, dataset_id):
    live = factories.job(db, dataset_id=dataset_id)
    waiting = factories.job(db, dataset_id=dataset_id)
    job_service.claim(session=db, queue="detlab", host="gpu-1")
    with pytest.raises(Conflict, match="is running on gpu-1.*cancel it first"):
        job_service.requeue(session=db, job_id=live.id, stale_s=120)
    done = factories.job(db, dataset_id=dataset_id, status=JobStatus.succeeded)
    with pytest.raises(Conflict, match="succeeded"):
        job_service.requeue(session=db, job_id=done.id, stale_s=120)

    failed = factories.job(db, dataset_id=dataset_id, status=JobStatus.failed, error="oom")
    back = job_service.requeue(session=db, job_id=failed.id, stale_s=120)
    assert back.status == JobStatus.queued and back.error is None and back.finished_at is None
    positions = job_service.queue_positions(session=db, jobs=[back, waiting, live])
    assert positions == {waiting.id: 1, back.id: 2}


def test_stale_running_jobs_go_back_in_line_keeping_their_place(db, dataset_id):
    stale = factories.job(db, dataset_id=dataset_id)
    fresh = factories.job(db, dataset_id=dataset_id)
    later = factories.job(db, dataset_id=dataset_id)
    for _ in range(2):
        job_service.claim(session=db, queue="detlab", host="gpu-1")
    stale.heartbeat_at = utcnow() - timedelta(seconds=300)
    db.commit()

    assert job_service.requeue_stale(session=db, queue="detlab", stale_s=120) == [stale.id]
    assert job_service.requeue_stale(session=db, queue="detlab", stale_s=120) == []
    db.refresh(fresh)
    assert fresh.status == JobStatus.running
    # it kept its place: it is claimed before the job queued after it
    assert job_service.claim(session=db, queue="detlab", host="gpu-2").job.id == stale.id
    assert job_service.claim(session=db, queue="detlab", host="gpu-2").job.id == later.id
