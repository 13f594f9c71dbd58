"""Dataset routes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse

from backend.audit.service import record_request
from backend.datasets import service
from backend.datasets.schemas import DatasetCreate, DatasetPage, DatasetRead
from backend.deps import ImageId, Offset, RowId, SessionDep, SettingsDep
from backend.errors import error_responses
from backend.users.access import MemberDep, ViewerDep

router = APIRouter(prefix="/datasets", tags=["datasets"], responses=error_responses(401, 422, 503))
# what FileResponse sends: the type its extension names
IMAGE_CONTENT = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in ("image/jpeg", "image/png", "image/*")
}


@router.post(
    "",
    response_model=DatasetRead,
    status_code=201,
    responses=error_responses(400, 403, 409, 413, 415),
)
def register_dataset(
    dataset_in: DatasetCreate,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: MemberDep,
):
    """Register a COCO dataset. A sync route, so the annotation files are parsed in the
    threadpool, not in the event loop."""
    dataset = service.register(
        session=session,
        dataset_in=dataset_in,
        roots=settings.data_roots,
        max_annotation_bytes=settings.max_annotation_bytes,
        owner_id=user.id,
    )
    record_request(
        request,
        session=session,
        user=user,
        action="dataset.register",
        object_id=dataset.id,
        detail={"name": dataset.name},
    )
    return dataset


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
):
    items, total = service.list_datasets(session=session, limit=limit, offset=offset)
    return DatasetPage(items=[DatasetRead.model_validate(d) for d in items], total=total)


@router.get("/{dataset_id}", response_model=DatasetRead, responses=error_responses(404))
def get_dataset(dataset_id: RowId, session: SessionDep, _: ViewerDep):
    return service.get(session=session, dataset_id=dataset_id)


@router.get(
    "/{dataset_id}/images/{image_id}",
    response_class=FileResponse,
    responses={
        200: {"content": IMAGE_CONTENT, "description": "The image file"},
        **error_responses(404),
    },
)
def get_image(
    dataset_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    _: ViewerDep,
    split: Literal["train", "val"] = "val",
):
    dataset = service.get(session=session, dataset_id=dataset_id)
    return FileResponse(service.image_file(dataset=dataset, image_id=image_id, split=split))
