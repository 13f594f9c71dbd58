"""Per-user quotas on submission: jobs queued or running at once, and one job's length."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import Settings
from backend.datasets.models import Dataset
from backend.errors import Invalid, TooMany
from backend.jobs.models import Job, JobStatus
from backend.jobs.spec import EvaluateSpec, FinetuneSpec, PretrainSpec

__all__ = ["Quota", "check_active", "check_length", "iterations"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Quota:
    """DETLAB_MAX_ACTIVE_JOBS_PER_USER and DETLAB_MAX_ITERATIONS_PER_JOB."""

    max_active_jobs: int
    max_iterations: int

    @classmethod
    def of(cls, settings: Settings) -> Quota:
        return cls(
            max_active_jobs=settings.max_active_jobs_per_user,
            max_iterations=settings.max_iterations_per_job,
        )


def _count_images(folder: Path, *, enough: int) -> int:
    """Image files under folder, counting no further than `enough`."""
    count = 0
    for _, _, files in os.walk(folder):
        count += sum(name.lower().endswith(IMAGE_SUFFIXES) for name in files)
        if count >= enough:
            break
    return count


def iterations(
    session: Session, spec: FinetuneSpec | PretrainSpec | EvaluateSpec, *, enough: int
) -> int:
    """The job's length in iterations (an epoch run: epochs x iterations per epoch); 0 for an
    evaluation. Counting a folder's images stops once the result passes `enough`."""
    if isinstance(spec, EvaluateSpec):
        return 0
    if spec.iterations is not None:
        return spec.iterations
    epochs = spec.epochs or 0
    images_needed = enough * spec.batch_size // max(1, epochs) + 1
    if spec.dataset_id is not None:
        dataset = session.get(Dataset, spec.dataset_id)
        images = int(
            ((dataset.stats if dataset else None) or {}).get("train", {}).get("images") or 0
        )
    else:
        images = _count_images(Path(spec.image_folder or ""), enough=images_needed)
    if isinstance(spec, FinetuneSpec):
        images = math.ceil(images * spec.data_fraction)
    return epochs * max(1, math.ceil(images / spec.batch_size))


def check_length(
    *, session: Session, spec: FinetuneSpec | PretrainSpec | EvaluateSpec, quota: Quota
) -> None:
    """Refuse a job longer than the quota, naming the limit."""
    length = iterations(session, spec, enough=quota.max_iterations)
    if length > quota.max_iterations:
        raise Invalid(
            f"this job runs {length:,} iterations, over the limit of {quota.max_iterations:,} "
            "per job (DETLAB_MAX_ITERATIONS_PER_JOB); give fewer epochs or iterations, or a "
            "larger batch"
        )


def check_active(*, session: Session, owner_id: int, new_jobs: int, quota: Quota) -> None:
    """Refuse new_jobs more when the owner would have more queued or running than the quota."""
    running = Job.status.in_([JobStatus.queued, JobStatus.running])
    active = (
        session.scalar(
            select(func.count()).select_from(Job).where(Job.owner_id == owner_id, running)
        )
        or 0
    )
    if active + new_jobs > quota.max_active_jobs:
        raise TooMany(
            f"you have {active} jobs queued or running and this adds {new_jobs}; the limit is "
            f"{quota.max_active_jobs} per user (DETLAB_MAX_ACTIVE_JOBS_PER_USER); wait for some "
            "to finish or cancel some"
        )
