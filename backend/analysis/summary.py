"""The whole analysis of one evaluation: matches, per-image summaries, counts and dAP."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from backend.analysis.inputs import Detections, GroundTruth, parse_ground_truth, parse_results
from backend.analysis.matching import (
    CLASSIFICATION,
    GtMatch,
    MatchTable,
    PredictionMatch,
    match_table,
)
from backend.analysis.tables import DEFAULTS, PREDICTION_OUTCOMES, code, is_error_code
from backend.analysis.tide import ap50, class_error_counts, delta_ap, error_counts

__all__ = [
    "Analysis",
    "BoxSelection",
    "ImageSummary",
    "analyze",
    "analyze_arrays",
    "image_summaries",
]

_MISSED = len(PREDICTION_OUTCOMES)  # code for "missed" next to the prediction outcomes


@dataclass(frozen=True, slots=True)
class ImageSummary:
    """Outcome counts of one image and a badness score to sort images by.

    ``badness`` = sum of the scores of its error predictions (classification, localization,
    both, duplicate, background) + 1 per missed GT: a confident mistake or a lost object
    weighs about the same, a low-score false positive little.
    """

    image_id: Any
    n_gt: int  # regular GT (no crowd / ignore regions)
    n_pred: int  # predictions with score >= score_thr, ignored ones included
    tp: int
    classification: int
    localization: int
    both: int
    duplicate: int
    background: int
    ignored: int
    missed: int
    # (error type, category id) for each error present; a classification error adds both
    # its predicted and its GT class, a missed GT its own class.
    error_pairs: frozenset[tuple[str, int]]
    badness: float


@dataclass(frozen=True, eq=False)
class Analysis:
    """Everything ``analyze`` finds; AP values in points (0..100)."""

    score_thr: float
    table: MatchTable
    images: list[ImageSummary]  # every image, in gt["images"] order
    counts: dict[str, int]  # per prediction outcome, plus "missed"
    class_counts: dict[int, dict[str, int]]  # the same per category id
    ap50: float
    class_ap50: dict[int, float]  # categories with regular GT
    dap: dict[str, float]  # per error type of tables.ERROR_TYPES, plus "missed"

    # One object per box is built only when asked for (a page showing one image's boxes):
    # at 500k predictions building them costs more than the whole breakdown.
    @cached_property
    def predictions(self) -> list[PredictionMatch]:
        """Results with score >= score_thr, in input order."""
        return self.table.predictions()

    @cached_property
    def ground_truth(self) -> list[GtMatch]:
        """Every annotation, in gt["annotations"] order."""
        return self.table.ground_truth_matches()


def image_summaries(table: MatchTable) -> list[ImageSummary]:
    """One ImageSummary per image of the ground truth, in gt["images"] order."""
    gt, det = table.ground_truth, table.detections
    n_img, n_codes = gt.n_images, len(PREDICTION_OUTCOMES) + 1
    missed_image = gt.image[table.gt_missed]
    grid = np.bincount(
        np.concatenate((det.image * n_codes + table.outcome, missed_image * n_codes + _MISSED)),
        minlength=n_img * n_codes,
    ).reshape(n_img, n_codes)
    n_gt = np.bincount(gt.image[~gt.crowd], minlength=n_img)
    is_error = is_error_code(table.outcome)
    badness = np.bincount(det.image[is_error], weights=det.score[is_error], minlength=n_img)
    badness = badness.astype(np.float64)
    badness += grid[:, _MISSED]

    # (image, code, category) triples of the errors, deduplicated as one int64 key each.
    cats = gt.category_ids
    cls = np.flatnonzero(table.outcome == CLASSIFICATION)
    image = np.concatenate((det.image[is_error], det.image[cls], missed_image))
    code = np.concatenate(
        (
            table.outcome[is_error],
            np.full(len(cls), CLASSIFICATION),
            np.full(len(missed_image), _MISSED),
        )
    ).astype(np.int64)
    category = np.concatenate(
        (det.category[is_error], gt.category[table.gt[cls]], gt.category[table.gt_missed])
    )
    keys = np.unique((image * n_codes + code) * len(cats) + np.searchsorted(cats, category))
    pairs: list[set[tuple[str, int]]] = [set() for _ in range(n_img)]
    names = (*PREDICTION_OUTCOMES, "missed")
    cat_list = cats.tolist()
    for img, rest in zip(
        (keys // (n_codes * len(cats))).tolist(),
        (keys % (n_codes * len(cats))).tolist(),
        strict=True,
    ):
        pairs[img].add((names[rest // len(cats)], cat_list[rest % len(cats)]))

    return [
        ImageSummary(
            image_id=image_id,
            n_gt=n,
            n_pred=sum(row[:_MISSED]),
            **dict(zip(names, row, strict=True)),
            error_pairs=frozenset(found),
            badness=bad,
        )
        for image_id, n, row, found, bad in zip(
            gt.image_ids, n_gt.tolist(), grid.tolist(), pairs, badness.tolist(), strict=True
        )
    ]


def analyze(
    gt: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    *,
    score_thr: float = DEFAULTS.count_score_thr,
) -> Analysis:
    """Validate, match (TIDE rules, see ``matching``), summarise and compute dAP."""
    ground_truth = parse_ground_truth(gt)
    return analyze_arrays(
        ground_truth, parse_results(results, ground_truth, score_thr=score_thr), score_thr
    )


def analyze_arrays(ground_truth: GroundTruth, detections: Detections, score_thr: float) -> Analysis:
    """analyze of parsed inputs; ``detections`` already cut at score_thr (recorded as such)."""
    table = match_table(ground_truth, detections)
    mean_ap, class_ap = ap50(table)
    return Analysis(
        score_thr=score_thr,
        table=table,
        images=image_summaries(table),
        counts=error_counts(table),
        class_counts=class_error_counts(table),
        ap50=mean_ap,
        class_ap50=class_ap,
        dap=delta_ap(table),
    )


@dataclass(frozen=True)
class BoxSelection:
    """Which boxes of a match table a view counts or draws.

    ``outcomes``: prediction outcome names, "missed" (ground truth no prediction matched) and
    "gt" (every other ground-truth box). ``category_id``: only the boxes that involve that
    class, by the rule the per-image (error type, class) index uses: a prediction of the class,
    a classification error on a ground-truth box of the class, a ground-truth box of the class.
    ``min_score``: predictions below it are left out.
    """

    outcomes: frozenset[str]
    category_id: int | None = None
    min_score: float = 0.0

    @classmethod
    def of(
        cls, outcomes: Collection[str], *, category_id: int | None = None, min_score: float = 0.0
    ) -> BoxSelection:
        return cls(frozenset(outcomes), category_id, min_score)

    def masks(self, table: MatchTable) -> tuple[np.ndarray, np.ndarray]:
        """(predictions, ground truth): boolean masks over the table's detections and
        annotations."""
        det, gt = table.detections, table.ground_truth
        wanted = np.array([name in self.outcomes for name in PREDICTION_OUTCOMES], dtype=bool)
        predictions = wanted[table.outcome] & (det.score >= self.min_score)
        missed = table.gt_missed
        truth = np.where(missed, "missed" in self.outcomes, "gt" in self.outcomes)
        if self.category_id is not None:
            relevant = np.append(gt.category, -1)[table.gt]  # -1: no relevant ground truth
            own = det.category == self.category_id
            through_truth = (table.outcome == code("classification")) & (
                relevant == self.category_id
            )
            predictions &= own | through_truth
            truth = truth & (gt.category == self.category_id)
        return predictions, np.asarray(truth, dtype=bool)

    def per_image(self, table: MatchTable) -> np.ndarray:
        """(n_images,) how many selected boxes each image has."""
        predictions, truth = self.masks(table)
        n_images = table.ground_truth.n_images
        return np.bincount(table.detections.image[predictions], minlength=n_images) + np.bincount(
            table.ground_truth.image[truth], minlength=n_images
        )
