"""Weights routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from backend.audit.service import record_request
from backend.deps import Offset, RowId, SessionDep, SettingsDep
from backend.errors import error_responses
from backend.users.access import MemberDep, ViewerDep
from backend.weights import service
from backend.weights.schemas import WeightsDetail, WeightsImport, WeightsPage, WeightsRead

router = APIRouter(prefix="/weights", tags=["weights"], responses=error_responses(401, 422, 503))


@router.post(
    "",
    response_model=WeightsRead,
    status_code=201,
    responses=error_responses(400, 403, 409, 413, 415),
)
def import_weights(
    weights_in: WeightsImport,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    user: MemberDep,
):
    assert settings.artifact_root is not None  # Settings fills it in
    weights = service.import_weights(
        session=session,
        weights_in=weights_in,
        roots=settings.data_roots,
        artifact_root=settings.artifact_root,
        owner_id=user.id,
    )
    record_request(
        request,
        session=session,
        user=user,
        action="weights.import",
        object_id=weights.id,
        detail={"name": weights.name, "sha256": weights.sha256},
    )
    return weights


@router.get("", response_model=WeightsPage)
def list_weights(
    session: SessionDep,
    _: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Offset = 0,
):
    items, total = service.list_weights(session=session, limit=limit, offset=offset)
    return WeightsPage(items=[WeightsRead.model_validate(w) for w in items], total=total)


@router.get("/{weights_id}", response_model=WeightsDetail, responses=error_responses(404))
def get_weights(weights_id: RowId, session: SessionDep, _: ViewerDep):
    return service.detail(session=session, weights_id=weights_id)
