"""Evaluation routes."""

from __future__ import annotations

from fastapi import APIRouter

from backend.deps import SessionDep
from backend.evaluations import service
from backend.evaluations.schemas import EvaluationRead

router = APIRouter(prefix="/jobs", tags=["evaluations"])


@router.get("/{job_id}/evaluation", response_model=EvaluationRead)
def get_evaluation(job_id: int, session: SessionDep):
    return service.get_for_job(session=session, job_id=job_id)
