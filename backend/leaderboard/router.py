"""Leaderboard route."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter

from backend.deps import Offset, OptionalId, SessionDep
from backend.errors import Invalid, error_responses
from backend.leaderboard import service
from backend.leaderboard.cache import answers
from backend.leaderboard.schemas import Leaderboard
from backend.users.access import ViewerDep

router = APIRouter(tags=["leaderboard"], responses=error_responses(401, 422, 503))


@router.get("/leaderboard", response_model=Leaderboard, responses=error_responses(404))
def leaderboard(
    session: SessionDep,
    _: ViewerDep,
    dataset: OptionalId = None,
    metric: str = "bbox_mAP",
    order: Literal["desc", "asc"] = "desc",
    detector: str | None = None,
    backbone: str | None = None,
    neck: str | None = None,
    init: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
    offset: Offset = 0,
    group: Annotated[
        bool, Query(description="one row per replicate group: means over seeds, with spread")
    ] = False,
    significance: Annotated[
        bool,
        Query(description="test each row shown against the top row (paired bootstrap, Holm)"),
    ] = False,
):
    filters = {
        axis: value
        for axis, value in (
            ("detector", detector),
            ("backbone", backbone),
            ("neck", neck),
            ("init", init),
        )
        if value is not None
    }
    query: dict[str, Any] = {
        "dataset_id": dataset,
        "metric": metric,
        "descending": order == "desc",
        "filters": filters,
        "limit": limit,
        "offset": offset,
        "grouped": group,
    }
    if significance and group:
        raise Invalid(
            "significance compares single runs with the leader; for replicate groups use "
            "GET /groups/{a}/compare/{b}, or drop group=true"
        )
    if not significance:
        # the JSON kept from an earlier request while no row it shows has changed (cache.py);
        # significance tests are not kept: they read the runs' prediction files
        key = (dataset, metric, order, tuple(sorted(filters.items())), limit, offset, group)
        body = answers.answer(session=session, key=key, compute=lambda: _json(session, query))
        return Response(body, media_type="application/json")
    items, total = service.rows(session=session, **query)
    service.mark_ties_with_leader(
        session=session,
        dataset_id=dataset,
        metric=metric,
        descending=order == "desc",
        filters=filters,
        items=items,
    )
    # a dict, not a Leaderboard: FastAPI validates the response model once, not twice
    return {"dataset_id": dataset, "metric": metric, "items": items, "total": total}


# the response model's own validation and JSON, as FastAPI would apply them to the dict
LEADERBOARD = TypeAdapter(Leaderboard)


def _json(session: SessionDep, query: dict[str, Any]) -> bytes:
    """The answer's JSON, the bytes FastAPI would send."""
    items, total = service.rows(session=session, **query)
    answer = {"dataset_id": query["dataset_id"], "metric": query["metric"]}
    return LEADERBOARD.dump_json(
        LEADERBOARD.validate_python({**answer, "items": items, "total": total}), by_alias=True
    )
