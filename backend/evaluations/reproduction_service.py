"""Whether a re-run reproduced its original: its score against the original's interval, and
what differs between the two runs' records."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analysis.tables import METRIC_KEYS
from backend.errors import Conflict, Invalid
from backend.evaluations.models import Evaluation
from backend.jobs import service as job_service

__all__ = ["reproduction"]


def _scored(session: Session, job_id: int) -> Evaluation | None:
    return session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))


def reproduction(*, session: Session, job_id: int, metric: str) -> dict[str, Any]:
    """For a re-run: the original's `metric` with its 95% interval over val images, the
    re-run's, whether it falls inside, and the record fields that differ (a re-run should
    differ in none; config_sha256 above all)."""
    if metric not in METRIC_KEYS:
        raise Invalid(f"metric {metric!r} is not accepted; accepted: {', '.join(METRIC_KEYS)}")
    rerun = job_service.get(session=session, job_id=job_id)
    if rerun.rerun_of_id is None:
        raise Conflict(
            f"job {job_id} is not a re-run; POST /jobs/{job_id}/rerun queues one, and this "
            "route then compares the two"
        )
    original = job_service.get(session=session, job_id=rerun.rerun_of_id)
    scored_original, scored_rerun = _scored(session, original.id), _scored(session, rerun.id)
    entry: dict[str, Any] = {}
    if scored_original is not None:
        entry = ((scored_original.intervals or {}).get("metrics") or {}).get(metric) or {}
    original_value = getattr(scored_original, metric) if scored_original else None
    rerun_value = getattr(scored_rerun, metric) if scored_rerun else None
    low, high = entry.get("low"), entry.get("high")
    inside = None
    if rerun_value is not None and low is not None and high is not None:
        inside = low <= rerun_value <= high
    a, b = original.record or {}, rerun.record or {}
    differs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)) if a and b else []
    if rerun_value is None:
        verdict = f"the re-run has no {metric} yet (it is {rerun.status.value})"
    elif inside is None:
        verdict = f"the original has no interval of {metric} to compare with"
    elif inside:
        verdict = (
            f"reproduced: {metric} {rerun_value:.4f} falls inside the original's 95% interval "
            f"[{low:.4f}, {high:.4f}]"
        )
    else:
        verdict = (
            f"not reproduced: {metric} {rerun_value:.4f} falls outside the original's 95% "
            f"interval [{low:.4f}, {high:.4f}]"
        )
    return {
        "job_id": rerun.id,
        "rerun_of_id": original.id,
        "metric": metric,
        "original": {"value": original_value, "low": low, "high": high},
        "rerun": {"value": rerun_value, "status": rerun.status.value},
        "inside": inside,
        "config_same": (a.get("config_sha256") == b.get("config_sha256")) if a and b else None,
        "record_differs": differs,
        "verdict": verdict,
    }
