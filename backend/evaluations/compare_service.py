"""Two jobs on the same val split, image by image."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analysis.tables import MAJOR_ERRORS
from backend.errors import Conflict, Invalid
from backend.evaluations.models import ImageResult
from backend.jobs import service as job_service

__all__ = ["compare_images"]


def compare_images(
    *, session: Session, job_a: int, job_b: int, limit: int = 24, offset: int = 0
) -> tuple[list[dict[str, Any]], int]:
    """Images one job gets right (no misclassified, mislocated or missed object) and the other
    does not, the most lopsided first."""
    first = job_service.get(session=session, job_id=job_a)
    second = job_service.get(session=session, job_id=job_b)
    if first.dataset_id != second.dataset_id:
        raise Invalid(
            f"jobs {job_a} and {job_b} ran on different datasets ({first.dataset_id} "
            f"and {second.dataset_id}); compare jobs of the same dataset"
        )
    rows_a = {
        r.image_id: r
        for r in session.scalars(select(ImageResult).where(ImageResult.job_id == job_a))
    }
    rows_b = {
        r.image_id: r
        for r in session.scalars(select(ImageResult).where(ImageResult.job_id == job_b))
    }
    for job_id, rows in ((job_a, rows_a), (job_b, rows_b)):
        if not rows:
            raise Conflict(f"job {job_id} has no per-image analysis yet")
    differing: list[dict[str, Any]] = []
    for image_id in sorted(rows_a.keys() & rows_b.keys()):
        a, b = rows_a[image_id], rows_b[image_id]
        errors_a = sum(getattr(a, k) for k in MAJOR_ERRORS)
        errors_b = sum(getattr(b, k) for k in MAJOR_ERRORS)
        if (errors_a == 0) != (errors_b == 0):
            differing.append(
                {
                    "image_id": image_id,
                    "file_name": a.file_name,
                    "a": {
                        "job_id": job_a,
                        "tp": a.tp,
                        "errors": errors_a,
                        "missed": a.missed,
                        "badness": a.badness,
                    },
                    "b": {
                        "job_id": job_b,
                        "tp": b.tp,
                        "errors": errors_b,
                        "missed": b.missed,
                        "badness": b.badness,
                    },
                    "better": "a" if errors_a == 0 else "b",
                }
            )
    differing.sort(key=lambda d: -abs(d["a"]["badness"] - d["b"]["badness"]))
    return differing[offset : offset + limit], len(differing)
