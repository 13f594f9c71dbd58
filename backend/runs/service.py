"""Importing a COCO results file as a run: stream it to disk, check it against the dataset's
val split with precise refusals, then store it as a job of kind import and score it exactly as
a fine-tune's predictions are scored (evaluation, analysis, per-image rows, intervals).

Nothing is left behind by a refused or failed import: no job row, no file.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from backend.artifacts_io import atomic_path
from backend.config import Settings
from backend.datasets import service as dataset_service
from backend.errors import DomainError, Invalid, NotFound
from backend.evaluations import analysis_service
from backend.evaluations.inputs import NotJson, read_json
from backend.evaluations.models import Evaluation
from backend.jobs import service as job_service
from backend.jobs.models import Job
from backend.jobs.paths import JobPaths

__all__ = ["TooLarge", "check_results", "import_predictions"]

FIELDS = ("image_id", "category_id", "bbox", "score")
LISTED = 10
CHUNK = 1 << 20


class TooLarge(DomainError):
    status_code = 413


def import_predictions(
    *,
    session: Session,
    settings: Settings,
    dataset_id: int,
    name: str,
    source: dict[str, Any],
    upload: BinaryIO,
    owner_id: int | None = None,
) -> tuple[Job, Evaluation]:
    """Store `upload` (a COCO results JSON for the dataset's val split) as an imported run
    and score it; TooLarge past DETLAB_MAX_UPLOAD_BYTES, Invalid naming each problem."""
    try:
        dataset = dataset_service.get(session=session, dataset_id=dataset_id)
    except NotFound:
        raise Invalid(
            f"dataset_id: dataset {dataset_id} not found; see GET /datasets for the registered ones"
        ) from None
    job = job_service.create_import(
        session=session, dataset_id=dataset_id, name=name, source=source, owner_id=owner_id
    )
    assert settings.artifact_root is not None
    paths = JobPaths.for_job(settings.artifact_root, job.id)
    try:
        size = _save(upload, paths.predictions, limit=settings.max_upload_bytes)
        if size == 0:
            raise Invalid(
                "the uploaded file is empty (0 bytes); upload a COCO results JSON: a list of "
                f"{{{', '.join(FIELDS)}}} objects"
            )
        try:
            results = read_json(paths.predictions)
        except NotJson:
            raise Invalid(
                "the uploaded file is not JSON; upload a COCO results JSON: a list of "
                f"{{{', '.join(FIELDS)}}} objects"
            ) from None
        try:
            # the engine validates every entry on its way in, vectorised; only a refused file
            # pays for the entry-by-entry check that lists every problem
            evaluation = analysis_service.evaluate_job(
                session=session, job_id=job.id, predictions_path=paths.predictions
            )
        except Invalid as refused:
            problems = check_results(results, read_json(dataset.val_ann))
            if not problems:
                raise
            raise Invalid(
                f"the results do not fit dataset {dataset.name!r}'s val split", problems=problems
            ) from refused
    except BaseException:
        session.rollback()
        job_service.discard(session=session, job_id=job.id)
        shutil.rmtree(paths.root, ignore_errors=True)
        raise
    session.refresh(job)
    return job, evaluation


def _save(upload: BinaryIO, path: Path, *, limit: int) -> int:
    """Copy the upload to path in blocks; TooLarge as soon as it passes limit bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with atomic_path(path) as partial, partial.open("wb") as out:
        while block := upload.read(CHUNK):
            size += len(block)
            if size > limit:
                raise TooLarge(
                    f"the uploaded file is over the limit of {limit} bytes "
                    "(DETLAB_MAX_UPLOAD_BYTES); split it or raise the limit"
                )
            out.write(block)
    return size


def _listed(values: Sequence[Any]) -> str:
    shown = ", ".join(repr(v) for v in values[:LISTED])
    return shown + (", ..." if len(values) > LISTED else "")


def check_results(results: Any, gt: dict[str, Any]) -> list[str]:
    """Every way `results` fails to be a COCO results list for the ground truth `gt`, each
    problem once with its count and the first ten offenders; [] when it is one."""
    if not isinstance(results, list):
        return [
            f"the file holds a JSON {type(results).__name__}, not a list; a COCO results file "
            f"is a list of {{{', '.join(FIELDS)}}} objects"
        ]
    images = {image["id"] for image in gt["images"]}
    categories = {category["id"] for category in gt["categories"]}
    not_objects: list[int] = []
    missing: dict[str, list[int]] = {field: [] for field in FIELDS}
    unknown_images: list[Any] = []
    unknown_categories: list[Any] = []
    bad_boxes: list[int] = []
    not_finite: list[int] = []
    negative: list[int] = []
    for i, result in enumerate(results):
        if not isinstance(result, dict):
            not_objects.append(i)
            continue
        for field in FIELDS:
            if field not in result:
                missing[field].append(i)
        if "image_id" in result and result["image_id"] not in images:
            unknown_images.append(result["image_id"])
        if "category_id" in result and result["category_id"] not in categories:
            unknown_categories.append(result["category_id"])
        box, score = result.get("bbox"), result.get("score")
        if box is not None and not (
            isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)
        ):
            bad_boxes.append(i)
            box = None
        numbers = (box or []) + ([score] if _number(score) else [])
        if "score" in result and not _number(score):
            bad_boxes.append(i)
        if any(not math.isfinite(v) for v in numbers):
            not_finite.append(i)
        elif box is not None and (box[2] < 0 or box[3] < 0):
            negative.append(i)
    problems = []
    if not_objects:
        problems.append(f"{len(not_objects)} entries are not objects (at {_listed(not_objects)})")
    for field, where in missing.items():
        if where:
            problems.append(f"{len(where)} entries have no {field!r} (at {_listed(where)})")
    if unknown_images:
        distinct = sorted(set(unknown_images), key=repr)
        problems.append(
            f"{len(unknown_images)} entries name {len(distinct)} image ids not in the val split: "
            f"{_listed(distinct)}"
        )
    if unknown_categories:
        distinct = sorted(set(unknown_categories), key=repr)
        problems.append(
            f"{len(unknown_categories)} entries name {len(distinct)} category ids not in the "
            f"dataset ({_listed(sorted(categories))}): {_listed(distinct)}"
        )
    if bad_boxes:
        problems.append(
            f"{len(bad_boxes)} entries have a bbox that is not 4 numbers [x, y, width, height] "
            f"or a score that is not a number (at {_listed(bad_boxes)})"
        )
    if not_finite:
        problems.append(
            f"{len(not_finite)} entries hold NaN or Infinity (at {_listed(not_finite)})"
        )
    if negative:
        problems.append(
            f"{len(negative)} entries have a negative width or height (at {_listed(negative)})"
        )
    return problems


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
