"""Fleet routes: the workers, their GPUs and what runs where."""

from __future__ import annotations

from fastapi import APIRouter

from backend.deps import SessionDep, SettingsDep
from backend.errors import error_responses
from backend.users.access import ViewerDep
from backend.workers import service
from backend.workers.schemas import WorkerPage

router = APIRouter(prefix="/workers", tags=["workers"], responses=error_responses(401, 422, 503))


@router.get("", response_model=WorkerPage)
def list_workers(
    session: SessionDep, settings: SettingsDep, _: ViewerDep, include_stopped: bool = False
):
    """Every worker that registered, by name: its GPUs (busy with a job, or idle), its running
    jobs, and its state (stale: no heartbeat for DETLAB_HEARTBEAT_STALE_S). Workers that shut
    down cleanly are left out unless include_stopped."""
    items = service.list_workers(
        session=session, stale_s=settings.heartbeat_stale_s, include_stopped=include_stopped
    )
    return WorkerPage(items=items, total=len(items))
