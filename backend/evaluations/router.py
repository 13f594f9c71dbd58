"""Evaluation and error-analysis routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse

from backend.analysis.tables import DEFAULTS, legend
from backend.deps import ImageId, Offset, RowId, SessionDep
from backend.evaluations import (
    analysis_service,
    compare_service,
    images_service,
    replicates_service,
    service,
    significance_service,
)
from backend.evaluations.schemas import EvaluationRead, ImagePage, ImageResultRead

router = APIRouter(prefix="/jobs", tags=["evaluations"])
legend_router = APIRouter(prefix="/analysis", tags=["evaluations"])
groups_router = APIRouter(prefix="/groups", tags=["evaluations"])

Threshold = Annotated[float, Query(ge=0, le=1)]


@legend_router.get("/legend")
def analysis_legend() -> dict[str, Any]:
    """Outcomes (names, colours, which are errors), metric names and default thresholds."""
    return legend()


@router.get("/{job_id}/evaluation", response_model=EvaluationRead)
def get_evaluation(job_id: RowId, session: SessionDep):
    return service.get_for_job(session=session, job_id=job_id)


@router.get("/{job_id}/predictions", response_class=FileResponse)
def download_predictions(job_id: RowId, session: SessionDep):
    """The val predictions as a COCO results file."""
    path = service.predictions_file(session=session, job_id=job_id)
    return FileResponse(path, media_type="application/json", filename=f"job{job_id}.bbox.json")


@router.post("/{job_id}/analysis", response_model=EvaluationRead)
def recompute_analysis(
    job_id: RowId,
    session: SessionDep,
    score_thr: Threshold = DEFAULTS.count_score_thr,
    confusion_score_thr: Threshold = DEFAULTS.draw_score_thr,
    iou_thr: Annotated[float, Query(gt=0, le=1)] = DEFAULTS.confusion_iou_thr,
    resamples: Annotated[int, Query(ge=100, le=10_000)] = DEFAULTS.resamples,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = DEFAULTS.bootstrap_seed,
):
    """Score the stored predictions again (COCO metrics with the current engine, its record)
    and recompute the error breakdown and per-image rows, at other thresholds if given."""
    return analysis_service.evaluate_job(
        session=session,
        job_id=job_id,
        score_thr=score_thr,
        confusion_score_thr=confusion_score_thr,
        iou_thr=iou_thr,
        resamples=resamples,
        seed=seed,
    )


@router.get("/{job_id}/images", response_model=ImagePage)
def list_images(
    job_id: RowId,
    session: SessionDep,
    error_type: str | None = None,
    class_name: Annotated[str | None, Query(alias="class")] = None,
    sort: str = "worst",
    limit: Annotated[int, Query(ge=1, le=500)] = 24,
    offset: Offset = 0,
):
    items, total = images_service.list_images(
        session=session,
        job_id=job_id,
        error_type=error_type,
        class_name=class_name,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return ImagePage(items=[ImageResultRead.model_validate(i) for i in items], total=total)


@router.get("/{job_id}/images/{image_id}/detections")
def image_detections(
    job_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    score_thr: Threshold = DEFAULTS.count_score_thr,
) -> dict[str, Any]:
    return images_service.image_detections(
        session=session, job_id=job_id, image_id=image_id, score_thr=score_thr
    )


@router.get(
    "/{job_id}/images/{image_id}/overlay.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def overlay(
    job_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    score_thr: Threshold = DEFAULTS.draw_score_thr,
    show: str = "gt,tp,errors",
    max_width: Annotated[int | None, Query(ge=64, le=8192)] = None,
    min_width: Annotated[
        int | None,
        Query(ge=64, le=4096, description="enlarge smaller images to this width (up to 8x)"),
    ] = None,
    legend: Annotated[
        str,
        Query(
            description="auto (in the corner, or in a strip below small images), inside, "
            "below or none"
        ),
    ] = "auto",
):
    png = images_service.overlay_png(
        session=session,
        job_id=job_id,
        image_id=image_id,
        score_thr=score_thr,
        show=[part.strip() for part in show.split(",") if part],
        max_width=max_width,
        min_width=min_width,
        legend=legend,
    )
    return Response(png, media_type="image/png")


@router.get("/{job_a}/compare/{job_b}/images")
def compare_images(
    job_a: RowId,
    job_b: RowId,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 24,
    offset: Offset = 0,
) -> dict[str, Any]:
    items, total = compare_service.compare_images(
        session=session, job_a=job_a, job_b=job_b, limit=limit, offset=offset
    )
    return {"items": items, "total": total}


@router.get("/{job_a}/compare/{job_b}")
def compare_jobs(
    job_a: RowId,
    job_b: RowId,
    session: SessionDep,
    metric: str = "bbox_mAP",
    resamples: Annotated[int, Query(ge=100, le=10_000)] = DEFAULTS.resamples,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = DEFAULTS.bootstrap_seed,
) -> dict[str, Any]:
    """Is B better than A? Differences (B - A) of every metric and per-class AP with 95%
    intervals and two-sided p-values from a paired bootstrap over the shared val images, and
    one sentence on `metric`. Jobs scored on different val splits are a 422."""
    return significance_service.compare_jobs(
        session=session, job_a=job_a, job_b=job_b, metric=metric, resamples=resamples, seed=seed
    )


@groups_router.get("/{group_id}")
def replicate_group(group_id: RowId, session: SessionDep) -> dict[str, Any]:
    """A replicate group's runs and, per metric, mean, std and 95% interval over seeds, with
    how much of a single run's variance comes from the seed and how much from the val images."""
    return replicates_service.summary(session=session, group_id=group_id)


@groups_router.get("/{group_a}/compare/{group_b}")
def compare_groups(
    group_a: RowId,
    group_b: RowId,
    session: SessionDep,
    metric: str = "bbox_mAP",
    resamples: Annotated[int, Query(ge=100, le=10_000)] = DEFAULTS.resamples,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = DEFAULTS.bootstrap_seed,
) -> dict[str, Any]:
    """Is group B better than group A? Difference of the groups' mean figures with intervals
    and p-values from a two-level bootstrap (val images, paired; seeds within each group)."""
    return replicates_service.compare(
        session=session,
        group_a=group_a,
        group_b=group_b,
        metric=metric,
        resamples=resamples,
        seed=seed,
    )
