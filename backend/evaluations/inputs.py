"""What an evaluation's analysis reads: the job, its dataset, its evaluation, GT and results."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analysis.inputs import (
    AnalysisInputError,
    Detections,
    GroundTruth,
    parse_ground_truth,
    parse_results,
)
from backend.analysis.metrics import CocoScore, score_masks
from backend.datasets import service as dataset_service
from backend.datasets.models import Dataset
from backend.errors import Conflict, Invalid, NotFound
from backend.evaluations.models import Evaluation
from backend.jobs import service as job_service
from backend.jobs.models import Job

__all__ = [
    "EvaluationInputs",
    "NotJson",
    "ParsedPredictions",
    "load_inputs",
    "parse_predictions",
    "score_mask_predictions",
    "read_json",
    "sha256_of",
]


class NotJson(ValueError):
    """A file that should hold JSON does not."""


@dataclass(frozen=True)
class EvaluationInputs:
    """A job's evaluation with the COCO ground truth and results it was computed from."""

    job: Job
    dataset: Dataset
    evaluation: Evaluation
    gt: dict[str, Any]
    results: list[dict[str, Any]]

    @property
    def category_names(self) -> dict[int, str]:
        return {c["id"]: c["name"] for c in self.gt["categories"]}


@lru_cache(maxsize=16)
def _read_json(path: str, mtime_ns: int) -> Any:
    # orjson parses a 500k-box results file about 4x faster than the json module
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        # Python's json also reads NaN and Infinity, which then fail validation by name
        try:
            return json.loads(data)
        except ValueError as exc:
            raise NotJson(f"{path} is not a JSON file: {exc}") from None


def read_json(path: str | Path) -> Any:
    """A JSON file, parsed once per modification (pages ask for the same files many times).
    Callers must not modify what it returns."""
    return _read_json(str(path), Path(path).stat().st_mtime_ns)


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True, eq=False)
class ParsedPredictions:
    """A job's val ground truth and predictions, read and validated for scoring."""

    gt: dict[str, Any]
    ground_truth: GroundTruth
    detections: Detections


def parse_predictions(
    *, job_id: int, val_ann: str | Path, predictions: str | Path
) -> ParsedPredictions:
    """Read and validate the files a job is scored from; NotFound or Invalid saying why not."""
    try:
        gt, results = read_json(val_ann), read_json(predictions)
    except FileNotFoundError as exc:
        raise NotFound(f"a file of job {job_id}'s evaluation is gone: {exc.filename}") from None
    except NotJson as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be scored: {exc}") from None
    try:
        ground_truth = parse_ground_truth(gt)
        detections = parse_results(results, ground_truth)
    except AnalysisInputError as exc:
        raise Invalid(f"the predictions of job {job_id} cannot be scored: {exc}") from None
    return ParsedPredictions(gt=gt, ground_truth=ground_truth, detections=detections)


def score_mask_predictions(
    *, job_id: int, gt: dict[str, Any], ground_truth: GroundTruth, predictions: str | Path
) -> CocoScore:
    """The mask (segm) metrics of a job's mask predictions file; Invalid saying why not."""
    try:
        results = read_json(predictions)
    except FileNotFoundError as exc:
        raise NotFound(f"a file of job {job_id}'s evaluation is gone: {exc.filename}") from None
    except NotJson as exc:
        raise Invalid(f"the mask predictions of job {job_id} cannot be scored: {exc}") from None
    try:
        return score_masks(gt, ground_truth, results)
    except AnalysisInputError as exc:
        raise Invalid(f"the mask predictions of job {job_id} cannot be scored: {exc}") from None


def load_inputs(*, session: Session, job_id: int) -> EvaluationInputs:
    """The inputs of a job's evaluation; Conflict before it has predictions."""
    job = job_service.get(session=session, job_id=job_id)
    evaluation = session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))
    if evaluation is None or not evaluation.predictions_path:
        raise Conflict(
            f"job {job_id} has no predictions yet (status {job.status.value}); "
            "they are stored when a fine-tune or evaluate job finishes, or on import"
        )
    dataset = dataset_service.get(session=session, dataset_id=job.dataset_id or 0)
    try:
        gt, results = read_json(dataset.val_ann), read_json(evaluation.predictions_path)
    except FileNotFoundError as exc:
        raise NotFound(f"a file of job {job_id}'s evaluation is gone: {exc.filename}") from None
    except NotJson as exc:
        raise Invalid(str(exc)) from None
    return EvaluationInputs(job=job, dataset=dataset, evaluation=evaluation, gt=gt, results=results)
