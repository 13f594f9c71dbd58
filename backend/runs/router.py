"""Run routes: `POST /runs/import` takes a COCO results file made elsewhere."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from backend.audit.service import record_request
from backend.deps import MAX_ID, SessionDep, SettingsDep
from backend.errors import Invalid, error_responses
from backend.evaluations.schemas import EvaluationRead
from backend.jobs.schemas import JobRead
from backend.runs import service
from backend.users.access import MemberDep

router = APIRouter(prefix="/runs", tags=["runs"], responses=error_responses(401, 422, 503))


class ImportedRun(BaseModel):
    """The run an import created, and its evaluation."""

    job: JobRead
    evaluation: EvaluationRead  # type: ignore[valid-type]


@router.post(
    "/import",
    response_model=ImportedRun,
    status_code=201,
    responses=error_responses(400, 403, 413, 415),
)
async def import_run(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: MemberDep,
    file: Annotated[UploadFile, File(description="a COCO results JSON for the val split")],
    dataset_id: Annotated[int, Form(ge=1, le=MAX_ID)],
    name: Annotated[str, Form(min_length=1, max_length=200)],
    source: Annotated[
        str,
        Form(
            max_length=10_000,
            description='JSON object: what made the predictions, e.g. {"model": '
            '"faster-rcnn r50 from detectron2", "source": "paper X"}',
        ),
    ] = "{}",
):
    """Import predictions made elsewhere (detectron2, mmdet's test tool, YOLO, ...) as a run of
    kind import: scored, analysed and on the leaderboard like DetLab's own, marked imported.
    Multipart upload, up to DETLAB_MAX_UPLOAD_BYTES (2 GB by default)."""
    try:
        metadata: Any = json.loads(source)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise Invalid(f"source: {source[:100]!r} is not a JSON object; send e.g. {{}}")
    # the upload is on disk already (spooled by the form parser); reading, checking and scoring
    # it are blocking work for a thread, so the event loop keeps serving
    job, evaluation = await run_in_threadpool(
        service.import_predictions,
        session=session,
        settings=settings,
        dataset_id=dataset_id,
        name=name,
        source=metadata,
        upload=file.file,
        owner_id=user.id,
    )
    await run_in_threadpool(
        record_request,
        request,
        session=session,
        user=user,
        action="run.import",
        object_id=job.id,
        detail={"name": name, "dataset_id": dataset_id, "source": metadata},
    )
    return ImportedRun(
        job=JobRead.model_validate(job),
        evaluation=EvaluationRead.model_validate(evaluation),
    )
