"""Evaluation and error-analysis routes."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse

from backend.analysis.tables import DEFAULTS, legend
from backend.audit.service import record_request
from backend.deps import ImageId, Offset, RowId, SessionDep
from backend.errors import error_responses
from backend.evaluations import (
    analysis_service,
    compare_service,
    images_service,
    replicates_service,
    reproduction_service,
    service,
    significance_service,
)
from backend.evaluations.images_service import ImageFilter
from backend.evaluations.schemas import (
    EvaluationRead,
    ImageComparisonPage,
    ImagePage,
    ImageResultRead,
)
from backend.jobs import service as job_service
from backend.users.access import MemberDep, ViewerDep, check_owner

COMMON = error_responses(401, 422, 503)
router = APIRouter(prefix="/jobs", tags=["evaluations"], responses=COMMON)
legend_router = APIRouter(prefix="/analysis", tags=["evaluations"], responses=COMMON)
groups_router = APIRouter(prefix="/groups", tags=["evaluations"], responses=COMMON)

Threshold = Annotated[float, Query(ge=0, le=1)]
ClassName = Annotated[
    str | None,
    Query(alias="class", description="only the boxes involving this class (see README)"),
]
GtClass = Annotated[
    str | None,
    Query(description="with predicted_class: a confusion-matrix cell (a class or 'background')"),
]
PredictedClass = Annotated[
    str | None,
    Query(description="with gt_class: a confusion-matrix cell (a class or 'background')"),
]


@legend_router.get("/legend")
def analysis_legend(_: ViewerDep) -> dict[str, Any]:
    """Outcomes (names, colours, which are errors), metric names and default thresholds."""
    return legend()


@router.get("/{job_id}/evaluation", response_model=EvaluationRead, responses=error_responses(404))
def get_evaluation(job_id: RowId, session: SessionDep, _: ViewerDep):
    return service.get_for_job(session=session, job_id=job_id)


@router.get(
    "/{job_id}/predictions",
    response_class=FileResponse,
    responses={
        200: {
            "content": {"application/json": {"schema": {"type": "array", "items": {}}}},
            "description": "A COCO results file: a list of detections",
        },
        **error_responses(404),
    },
)
def download_predictions(job_id: RowId, session: SessionDep, _: ViewerDep):
    """The val predictions as a COCO results file."""
    path = service.predictions_file(session=session, job_id=job_id)
    return FileResponse(path, media_type="application/json", filename=f"job{job_id}.bbox.json")


@router.post(
    "/{job_id}/analysis", response_model=EvaluationRead, responses=error_responses(403, 404, 415)
)
def recompute_analysis(
    job_id: RowId,
    request: Request,
    session: SessionDep,
    user: MemberDep,
    score_thr: Threshold = DEFAULTS.count_score_thr,
    confusion_score_thr: Threshold = DEFAULTS.draw_score_thr,
    iou_thr: Annotated[float, Query(gt=0, le=1)] = DEFAULTS.confusion_iou_thr,
    resamples: Annotated[int, Query(ge=100, le=10_000)] = DEFAULTS.resamples,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = DEFAULTS.bootstrap_seed,
):
    """Score the stored predictions again (COCO metrics with the current engine, its record)
    and recompute the error breakdown and per-image rows, at other thresholds if given. A job
    of yours (an admin: anyone's)."""
    check_owner(
        user=user, owner=job_service.get(session=session, job_id=job_id).owner, what=f"job {job_id}"
    )
    evaluation = analysis_service.evaluate_job(
        session=session,
        job_id=job_id,
        score_thr=score_thr,
        confusion_score_thr=confusion_score_thr,
        iou_thr=iou_thr,
        resamples=resamples,
        seed=seed,
    )
    record_request(
        request,
        session=session,
        user=user,
        action="job.rescore",
        object_id=job_id,
        detail={"score_thr": score_thr, "iou_thr": iou_thr, "resamples": resamples},
    )
    return evaluation


@router.get("/{job_id}/reproduction", responses=error_responses(404, 409))
def job_reproduction(
    job_id: RowId, session: SessionDep, _: ViewerDep, metric: str = "bbox_mAP"
) -> dict[str, Any]:
    """For a re-run (POST /jobs/{id}/rerun): whether its score falls inside the original's 95%
    interval over val images, whether the config is the same, and what else differs in the
    two runs' reproducibility records."""
    return reproduction_service.reproduction(session=session, job_id=job_id, metric=metric)


@router.get("/{job_id}/images", response_model=ImagePage, responses=error_responses(404, 409))
def list_images(
    job_id: RowId,
    session: SessionDep,
    _: ViewerDep,
    error_type: str | None = None,
    class_name: ClassName = None,
    gt_class: GtClass = None,
    predicted_class: PredictedClass = None,
    sort: str = "worst",
    limit: Annotated[int, Query(ge=1, le=500)] = 24,
    offset: Offset = 0,
):
    """The job's val images that have errors of `error_type` and/or errors involving `class`,
    or that add to the confusion-matrix cell (`gt_class`, `predicted_class`); `sort=worst`
    puts those with the most of it first. Each item's `selected` counts them."""
    found = images_service.list_images(
        session=session,
        job_id=job_id,
        error_type=error_type,
        class_name=class_name,
        gt_class=gt_class,
        predicted_class=predicted_class,
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return ImagePage(
        items=[
            ImageResultRead.model_validate(i).model_copy(
                update={"selected": found.selected.get(i.image_id)}
            )
            for i in found.items
        ],
        total=found.total,
        score_thr=found.score_thr,
        selected_label=found.selected_label,
        selected_score_thr=found.selected_score_thr,
    )


@router.get("/{job_id}/images/{image_id}/detections", responses=error_responses(404, 409))
def image_detections(
    job_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    _: ViewerDep,
    score_thr: Annotated[
        float | None, Query(ge=0, le=1, description="default: the analysis' threshold")
    ] = None,
    show: Annotated[
        str | None, Query(description="as overlay.png's; default: every outcome")
    ] = None,
    error_type: str | None = None,
    class_name: ClassName = None,
    gt_class: GtClass = None,
    predicted_class: PredictedClass = None,
) -> dict[str, Any]:
    """One image's boxes with outcome, IoU and ground truth; with the parameters of an
    overlay, exactly the boxes it draws."""
    return images_service.image_detections(
        session=session,
        job_id=job_id,
        image_id=image_id,
        score_thr=score_thr,
        show=None if show is None else [part.strip() for part in show.split(",") if part],
        image_filter=ImageFilter(error_type, class_name, gt_class, predicted_class),
    )


@router.get(
    "/{job_id}/images/{image_id}/overlay.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(404, 409),
    },
)
def overlay(
    job_id: RowId,
    image_id: ImageId,
    session: SessionDep,
    _: ViewerDep,
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
    masks: Annotated[
        bool,
        Query(
            description="also fill the masks of the drawn boxes that have one (ground truth "
            "with a segmentation, a mask model's predictions; see the detections' has_mask)"
        ),
    ] = False,
    error_type: str | None = None,
    class_name: ClassName = None,
    gt_class: GtClass = None,
    predicted_class: PredictedClass = None,
):
    """The image with its boxes drawn in their outcomes' colours: those `show` names, from
    `score_thr`, narrowed by the same filters as the image listing's."""
    png = images_service.overlay_png(
        session=session,
        job_id=job_id,
        image_id=image_id,
        score_thr=score_thr,
        show=[part.strip() for part in show.split(",") if part],
        image_filter=ImageFilter(error_type, class_name, gt_class, predicted_class),
        max_width=max_width,
        min_width=min_width,
        legend=legend,
        masks=masks,
    )
    return Response(png, media_type="image/png")


@router.get(
    "/{job_a}/compare/{job_b}/images",
    response_model=ImageComparisonPage,
    responses=error_responses(404, 409),
)
def compare_images(
    job_a: RowId,
    job_b: RowId,
    session: SessionDep,
    _: ViewerDep,
    by: Annotated[
        str,
        Query(description="the per-image figure: errors (every type), tp, or one error type"),
    ] = "errors",
    better: Annotated[
        str | None, Query(description="a or b: only the images where that job does better")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 24,
    offset: Offset = 0,
):
    """The val images on which two jobs differ most in one per-image figure, how many go
    each way, and the confusion-matrix cells whose counts changed."""
    return compare_service.compare_images(
        session=session,
        job_a=job_a,
        job_b=job_b,
        by=by,
        better=better,
        limit=limit,
        offset=offset,
    )


@router.get("/{job_a}/compare/{job_b}", responses=error_responses(404))
def compare_jobs(
    job_a: RowId,
    job_b: RowId,
    session: SessionDep,
    _: ViewerDep,
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


@groups_router.get("/{group_id}", responses=error_responses(404))
def replicate_group(group_id: RowId, session: SessionDep, _: ViewerDep) -> dict[str, Any]:
    """A replicate group's runs and, per metric, mean, std and 95% interval over seeds, with
    how much of a single run's variance comes from the seed and how much from the val images."""
    return replicates_service.summary(session=session, group_id=group_id)


@groups_router.get("/{group_a}/compare/{group_b}", responses=error_responses(404, 409))
def compare_groups(
    group_a: RowId,
    group_b: RowId,
    session: SessionDep,
    _: ViewerDep,
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
