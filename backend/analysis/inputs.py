"""Validation of a COCO ground-truth dict and a COCO results list into flat numpy arrays.

Every check names the first offending entry (its index in the input list), the field, and
what would be accepted, so that a user can fix a results file without reading this code.
Valid inputs take a fast path (list comprehensions and vectorised checks); only when that
path fails are the entries walked one by one to explain the first problem.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "AnalysisInputError",
    "Detections",
    "GroundTruth",
    "parse_ground_truth",
    "parse_results",
]

_RESULT_FIELDS = "image_id, category_id, bbox [x, y, width, height] and score"
_ANNOTATION_FIELDS = "id, image_id, category_id and bbox [x, y, width, height]"


class AnalysisInputError(ValueError):
    """Ground truth or results the analysis cannot use; the message names entry and field."""


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """COCO ground truth as arrays; annotation arrays follow ``gt["annotations"]`` order."""

    image_ids: list[Any]  # in gt["images"] order
    image_index: dict[Any, int]  # image id -> position in image_ids
    category_ids: np.ndarray  # (n_categories,) ascending
    category_names: dict[int, str]
    ann_ids: np.ndarray  # (n_gt,) annotation ids
    image: np.ndarray  # (n_gt,) position of the annotation's image in image_ids
    category: np.ndarray  # (n_gt,) category id
    xywh: np.ndarray  # (n_gt, 4) float64
    area: np.ndarray  # (n_gt,) the annotation's "area" field, w * h when absent
    # (n_gt,) the "iscrowd" field as pycocotools reads it (0 when absent); "ignore" is not
    # read, as pycocotools overwrites it with iscrowd: an ignore=1 box is an ordinary object
    iscrowd: np.ndarray
    crowd: np.ndarray  # (n_gt,) iscrowd != 0: a region, not an object

    @property
    def n_images(self) -> int:
        """Number of images in the ground truth."""
        return len(self.image_ids)


@dataclass(frozen=True, eq=False)
class Detections:
    """Validated results kept at or above a score threshold, in input order."""

    index: np.ndarray  # (n,) position in the input results list
    image: np.ndarray  # (n,) position of the image in GroundTruth.image_ids
    category: np.ndarray  # (n,) category id
    score: np.ndarray  # (n,) float64
    # (n, 4) float64, width and height >= 0: real detectors emit zero-size boxes, and COCO
    # scores them (they overlap nothing, so they are false positives)
    xywh: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def at_least(self, score_thr: float) -> Detections:
        """The detections with score >= score_thr, in the same order."""
        keep = self.score >= score_thr
        return Detections(
            index=self.index[keep],
            image=self.image[keep],
            category=self.category[keep],
            score=self.score[keep],
            xywh=self.xywh[keep],
        )

    @property
    def degenerate(self) -> int:
        """How many boxes have zero width or height."""
        return int(((self.xywh[:, 2] == 0) | (self.xywh[:, 3] == 0)).sum())


def _numeric(values: list[Any], shape: tuple[int, ...]) -> np.ndarray:
    """Float64 array of ints/floats (bool and str rejected); ValueError for anything else."""
    array = np.asarray(values)
    if shape[0] == 0:
        return np.zeros(shape, dtype=np.float64)
    if array.shape != shape or array.dtype.kind not in "iuf":
        raise ValueError("not numeric")
    return array.astype(np.float64, copy=False)


def _integers(values: list[Any]) -> np.ndarray:
    """Int64 array of ints (floats, bool and str rejected); ValueError for anything else."""
    array = np.asarray(values)
    if not len(values):
        return np.zeros(0, dtype=np.int64)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise ValueError("not integers")
    return array.astype(np.int64, copy=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _is_integer(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _box_problem(value: Any, *, allow_empty: bool) -> str | None:
    """Why ``value`` is not an acceptable [x, y, w, h] box, or None when it is."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        return f"got {type(value).__name__} {value!r}"
    if len(value) != 4 or not all(_is_number(v) for v in value):
        return f"got {list(value)!r}"
    if not all(np.isfinite(float(v)) for v in value):
        return f"got {list(value)!r} (not finite)"
    w, h = float(value[2]), float(value[3])
    if (w < 0 or h < 0) if allow_empty else (w <= 0 or h <= 0):
        return f"got {list(value)!r} (width/height)"
    return None


def _example_ids(ids: Sequence[Any]) -> str:
    shown = ", ".join(repr(i) for i in list(ids)[:8])
    return shown + (", ..." if len(ids) > 8 else "")


def _explain_annotation(i: int, ann: Any, image_index: Mapping[Any, int], cats: Any) -> None:
    """Raise the error for annotation ``i`` if it is invalid."""
    where = f"gt['annotations'][{i}]"
    if not isinstance(ann, Mapping):
        raise AnalysisInputError(
            f"{where}: expected a dict with {_ANNOTATION_FIELDS}; got {type(ann).__name__}"
        )
    for key in ("id", "image_id", "category_id", "bbox"):
        if key not in ann:
            raise AnalysisInputError(
                f"{where}: missing field '{key}'; each annotation needs {_ANNOTATION_FIELDS}"
            )
    if not _is_integer(ann["id"]):
        raise AnalysisInputError(f"{where}: field 'id' must be an int; got {ann['id']!r}")
    if _hashable(ann["image_id"]) not in image_index:
        raise AnalysisInputError(
            f"{where}: image_id {ann['image_id']!r} is not in gt['images']; accepted: "
            f"{_example_ids(list(image_index))}"
        )
    if not _is_integer(ann["category_id"]) or ann["category_id"] not in cats:
        raise AnalysisInputError(
            f"{where}: category_id {ann['category_id']!r} is not in gt['categories']; "
            f"accepted: {_example_ids(sorted(cats))}"
        )
    problem = _box_problem(ann["bbox"], allow_empty=True)
    if problem:
        raise AnalysisInputError(
            f"{where}: field 'bbox' must be [x, y, width, height], 4 finite numbers with "
            f"width >= 0 and height >= 0; {problem}"
        )
    for key in ("iscrowd", "ignore", "area"):
        if key in ann and not _is_number(ann[key]):
            raise AnalysisInputError(f"{where}: field '{key}' must be a number; got {ann[key]!r}")


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return None
    return value


def parse_ground_truth(gt: Mapping[str, Any]) -> GroundTruth:
    """Validate a COCO ground-truth dict (images, annotations, categories) into arrays."""
    if not isinstance(gt, Mapping):
        raise AnalysisInputError(
            f"ground truth must be a COCO dict with 'images', 'annotations' and 'categories'; "
            f"got {type(gt).__name__}"
        )
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise AnalysisInputError(
                f"ground truth: field '{key}' must be a list (COCO format with 'images', "
                f"'annotations' and 'categories'); got {type(gt.get(key)).__name__}"
            )
    image_index: dict[Any, int] = {}
    for i, image in enumerate(gt["images"]):
        if not isinstance(image, Mapping) or _hashable(image.get("id")) is None:
            raise AnalysisInputError(f"gt['images'][{i}]: expected a dict with an int 'id'")
        image_index.setdefault(image["id"], len(image_index))
    names: dict[int, str] = {}
    for i, cat in enumerate(gt["categories"]):
        if not isinstance(cat, Mapping) or not _is_integer(cat.get("id")):
            raise AnalysisInputError(f"gt['categories'][{i}]: expected a dict with an int 'id'")
        names[int(cat["id"])] = str(cat.get("name", cat["id"]))
    category_ids = np.array(sorted(names), dtype=np.int64)

    anns = gt["annotations"]
    n = len(anns)
    try:
        ann_ids = _integers([a["id"] for a in anns])
        image = np.array([image_index.get(a["image_id"], -1) for a in anns], dtype=np.int64)
        category = _integers([a["category_id"] for a in anns])
        xywh = _numeric([a["bbox"] for a in anns], (n, 4))
        iscrowd = _numeric([a.get("iscrowd", 0) for a in anns], (n,))
        area = _numeric([a.get("area", a["bbox"][2] * a["bbox"][3]) for a in anns], (n,))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        for i, ann in enumerate(anns):
            _explain_annotation(i, ann, image_index, names)
        raise AnalysisInputError(
            f"gt['annotations']: could not read the entries; each needs {_ANNOTATION_FIELDS}"
        ) from None
    bad = (
        (image < 0)
        | ~np.isin(category, category_ids)
        | ~np.isfinite(xywh).all(axis=1)
        | (xywh[:, 2] < 0)
        | (xywh[:, 3] < 0)
    )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        _explain_annotation(i, anns[i], image_index, names)
    return GroundTruth(
        image_ids=list(image_index),
        image_index=image_index,
        category_ids=category_ids,
        category_names=names,
        ann_ids=ann_ids,
        image=image,
        category=category,
        xywh=xywh,
        area=area,
        iscrowd=iscrowd,
        crowd=iscrowd != 0,
    )


def _explain_result(i: int, result: Any, ground_truth: GroundTruth) -> None:
    """Raise the error for result ``i`` if it is invalid."""
    where = f"results[{i}]"
    if not isinstance(result, Mapping):
        raise AnalysisInputError(
            f"{where}: expected a dict with {_RESULT_FIELDS}; got {type(result).__name__}"
        )
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in result:
            raise AnalysisInputError(
                f"{where}: missing field '{key}'; each result needs {_RESULT_FIELDS}"
            )
    if _hashable(result["image_id"]) not in ground_truth.image_index:
        known = _example_ids(list(ground_truth.image_index))
        raise AnalysisInputError(
            f"{where}: field 'image_id' is {result['image_id']!r}, not an image of the ground "
            f"truth; accepted: an id from gt['images'] ({known})"
        )
    cat = result["category_id"]
    if not _is_integer(cat) or int(cat) not in ground_truth.category_names:
        raise AnalysisInputError(
            f"{where}: field 'category_id' is {cat!r}, not a category of the ground truth; "
            f"accepted: {_example_ids(sorted(ground_truth.category_names))}"
        )
    score = result["score"]
    if not _is_number(score) or not np.isfinite(float(score)):
        raise AnalysisInputError(f"{where}: field 'score' must be a finite number; got {score!r}")
    problem = _box_problem(result["bbox"], allow_empty=True)
    if problem:
        raise AnalysisInputError(
            f"{where}: field 'bbox' must be [x, y, width, height], 4 finite numbers with "
            f"width >= 0 and height >= 0; {problem}"
        )


def parse_results(
    results: Sequence[Mapping[str, Any]],
    ground_truth: GroundTruth,
    *,
    score_thr: float = 0.0,
) -> Detections:
    """Validate every result, then keep those with score >= ``score_thr``."""
    if isinstance(results, str | bytes | Mapping) or not isinstance(results, Sequence):
        raise AnalysisInputError(
            f"results must be a list of dicts with {_RESULT_FIELDS}; got {type(results).__name__}"
        )
    n = len(results)
    lookup = ground_truth.image_index.get
    try:
        image = np.array([lookup(r["image_id"], -1) for r in results], dtype=np.int64)
        category = _integers([r["category_id"] for r in results])
        score = _numeric([r["score"] for r in results], (n,))
        xywh = _numeric([r["bbox"] for r in results], (n, 4))
    except (KeyError, TypeError, ValueError, IndexError):
        for i, result in enumerate(results):
            _explain_result(i, result, ground_truth)
        raise AnalysisInputError(
            f"results: could not read the entries; each needs {_RESULT_FIELDS}"
        ) from None
    with np.errstate(invalid="ignore"):
        bad = (
            (image < 0)
            | ~np.isin(category, ground_truth.category_ids)
            | ~np.isfinite(score)
            | ~np.isfinite(xywh).all(axis=1)
            | ~(xywh[:, 2] >= 0)
            | ~(xywh[:, 3] >= 0)
        )
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        _explain_result(i, results[i], ground_truth)
    keep = np.flatnonzero(score >= score_thr)
    return Detections(
        index=keep,
        image=image[keep],
        category=category[keep],
        score=score[keep],
        xywh=xywh[keep],
    )
