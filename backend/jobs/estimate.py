"""How long a job will take on this queue's workers, learned from the jobs they finished.

A job's work is the megapixels its training pushes through the network: steps x batch x image
area (two views for a self-supervised pretraining). The queue's speed is the median over its
last finished jobs of the same kind of work / (finished - started). The estimate is work /
speed: rough (it ignores the backbone and the evaluation), but it tells a 10-minute demo
fine-tune from a pretraining that would take weeks on a CPU worker. With no finished job of
that kind on the queue there is no estimate.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.datasets.models import Dataset
from backend.jobs.models import Job, JobKind, JobStatus

__all__ = ["Estimate", "estimate", "work_megapixels"]

HISTORY = 20  # finished jobs the speed is learned from


@dataclass(frozen=True)
class Estimate:
    seconds: float
    based_on: int  # finished jobs of this kind on the queue
    megapixels: float


def _train_images(session: Session, dataset_id: int | None) -> int | None:
    if dataset_id is None:
        return None
    stats = session.scalar(select(Dataset.stats).where(Dataset.id == dataset_id)) or {}
    images = (stats.get("train") or {}).get("images")
    return int(images) if images else None


def work_megapixels(session: Session, kind: JobKind, spec: dict[str, Any]) -> float | None:
    """The megapixels a job's training processes, or None when its size is unknown."""
    batch = spec.get("batch_size")
    if not batch:
        return None
    if kind == JobKind.finetune:
        width, height = spec.get("image_scale") or (1333, 800)
        pixels = width * height
        share = spec.get("data_fraction", 1.0)
    elif kind == JobKind.pretrain:
        pixels = 2 * spec.get("image_size", 224) ** 2  # two augmented views per image
        share = 1.0
    else:
        return None
    steps = spec.get("iterations")
    if steps is None:
        images = _train_images(session, spec.get("dataset_id"))
        if images is None or not spec.get("epochs"):
            return None
        steps = spec["epochs"] * math.ceil(images * share / batch)
    return steps * batch * pixels / 1e6


def estimate(session: Session, *, job: Job) -> Estimate | None:
    """The job's expected run time on its queue's workers (see the module docstring)."""
    work = work_megapixels(session, job.kind, job.spec)
    if work is None:
        return None
    done = session.execute(
        select(Job.kind, Job.spec, Job.started_at, Job.finished_at)
        .where(
            Job.queue == job.queue,
            Job.kind == job.kind,
            Job.status == JobStatus.succeeded,
            Job.started_at.is_not(None),
            Job.finished_at.is_not(None),
        )
        .order_by(Job.finished_at.desc())
        .limit(HISTORY)
    ).all()
    speeds = []
    for kind, spec, started, finished in done:
        seconds = (finished - started).total_seconds()
        past = work_megapixels(session, kind, spec)
        if past and seconds > 0:
            speeds.append(past / seconds)
    if not speeds:
        return None
    return Estimate(seconds=work / statistics.median(speeds), based_on=len(speeds), megapixels=work)
