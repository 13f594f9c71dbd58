"""Dataset routes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from backend.datasets import service
from backend.datasets.schemas import DatasetCreate, DatasetPage, DatasetRead
from backend.deps import ImageId, Offset, RowId, SessionDep, SettingsDep

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post("", response_model=DatasetRead, status_code=201)
def register_dataset(dataset_in: DatasetCreate, session: SessionDep, settings: SettingsDep):
    return service.register(session=session, dataset_in=dataset_in, roots=settings.data_roots)


@router.get("", response_model=DatasetPage)
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
):
    items, total = service.list_datasets(session=session, limit=limit, offset=offset)
    return DatasetPage(items=[DatasetRead.model_validate(d) for d in items], total=total)


@router.get("/{dataset_id}", response_model=DatasetRead)
def get_dataset(dataset_id: RowId, session: SessionDep):
    return service.get(session=session, dataset_id=dataset_id)


@router.get("/{dataset_id}/images/{image_id}", response_class=FileResponse)
def get_image(
    dataset_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    split: Literal["train", "val"] = "val",
):
    dataset = service.get(session=session, dataset_id=dataset_id)
    return FileResponse(service.image_file(dataset=dataset, image_id=image_id, split=split))
