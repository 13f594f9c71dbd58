"""Leaderboard route."""

from __future__ import annotations

from functools import partial
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Query, Response
from pydantic import TypeAdapter
from sqlalchemy.orm import Session

from backend.db import session_slots
from backend.deps import LazySessionDep, Offset, OptionalId
from backend.errors import Invalid, error_responses
from backend.leaderboard import service
from backend.leaderboard.cache import answers
from backend.leaderboard.schemas import Leaderboard
from backend.users.access import ViewerDep

router = APIRouter(tags=["leaderboard"], responses=error_responses(401, 422, 503))


@router.get("/leaderboard", response_model=Leaderboard, responses=error_responses(404))
async def leaderboard(
    session: LazySessionDep,
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
        # the JSON kept from an earlier request while no row it shows has changed (cache.py),
        # sent from the event loop: no route thread, no session slot; significance tests are
        # not kept: they read the runs' prediction files
        key = (dataset, metric, order, tuple(sorted(filters.items())), limit, offset, group)
        body = await answers.answer_async(
            session=session, key=key, compute=lambda: _json(session, query)
        )
        return Response(body, media_type="application/json")
    async with session_slots():
        return await anyio.to_thread.run_sync(partial(_tested, session, query))


def _tested(session: Session, query: dict[str, Any]) -> dict[str, Any]:
    """The rows, each tested against the leader; the session's transaction ended."""
    items, total = service.rows(session=session, **query)
    service.mark_ties_with_leader(
        session=session,
        dataset_id=query["dataset_id"],
        metric=query["metric"],
        descending=query["descending"],
        filters=query["filters"],
        items=items,
    )
    session.commit()  # it only read: the connection goes back before the slot does
    # a dict, not a Leaderboard: FastAPI validates the response model once, not twice
    answer = {"dataset_id": query["dataset_id"], "metric": query["metric"]}
    return {**answer, "items": items, "total": total}


# the response model's own validation and JSON, as FastAPI would apply them to the dict
LEADERBOARD = TypeAdapter(Leaderboard)


def _json(session: Session, query: dict[str, Any]) -> bytes:
    """The answer's JSON, the bytes FastAPI would send."""
    items, total = service.rows(session=session, **query)
    answer = {"dataset_id": query["dataset_id"], "metric": query["metric"]}
    return LEADERBOARD.dump_json(
        LEADERBOARD.validate_python({**answer, "items": items, "total": total}), by_alias=True
    )
