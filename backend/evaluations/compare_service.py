"""Two jobs on the same val split, image by image: where one does better than the other, and
which confusions changed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.analysis.confusion import cell_label
from backend.analysis.tables import COUNTED, FILTERABLE_ERRORS, OUTCOMES
from backend.errors import Conflict, Invalid
from backend.evaluations.models import Evaluation, ImageResult
from backend.jobs import service as job_service

__all__ = ["BETTER", "RANKINGS", "Ranking", "compare_images", "confusion_changes"]


@dataclass(frozen=True)
class Ranking:
    """A per-image figure two jobs are compared on."""

    name: str
    outcomes: tuple[str, ...]  # image_results columns summed
    higher_is_better: bool
    description: str  # what it counts, in words


_SIDES = {o.name: o.side for o in OUTCOMES}
RANKINGS: dict[str, Ranking] = {
    r.name: r
    for r in (
        Ranking("errors", FILTERABLE_ERRORS, False, "errors (every type, missed objects included)"),
        Ranking("tp", ("tp",), True, "true positives"),
        *(
            Ranking(
                name,
                (name,),
                False,
                f"{name} errors" if _SIDES[name] == "prediction" else f"{name} objects",
            )
            for name in FILTERABLE_ERRORS
        ),
    )
}
BETTER = ("a", "b")


def _analysed(session: Session, job_id: int) -> tuple[Evaluation, dict[int, ImageResult]]:
    evaluation = session.scalar(select(Evaluation).where(Evaluation.job_id == job_id))
    rows = {
        r.image_id: r
        for r in session.scalars(select(ImageResult).where(ImageResult.job_id == job_id))
    }
    if evaluation is None or not evaluation.analysis or not rows:
        raise Conflict(
            f"job {job_id} has no per-image analysis yet; it is computed when a fine-tune job "
            f"succeeds, or by POST /jobs/{job_id}/analysis"
        )
    return evaluation, rows


def _side(job_id: int, row: ImageResult) -> dict[str, Any]:
    return {
        "job_id": job_id,
        **{name: getattr(row, name) for name in COUNTED},
        "errors": sum(getattr(row, name) for name in FILTERABLE_ERRORS),
        "badness": row.badness,
    }


def compare_images(
    *,
    session: Session,
    job_a: int,
    job_b: int,
    by: str = "errors",
    better: str | None = None,
    limit: int = 24,
    offset: int = 0,
) -> dict[str, Any]:
    """The val images on which two jobs differ in one per-image figure (``by``), the largest
    differences first, those where A does better (``better="a"``), B does, or both; with how
    many images were compared, how many go each way, and the confusions that changed."""
    if by not in RANKINGS:
        raise Invalid(f"by {by!r} is not accepted; use one of {', '.join(RANKINGS)}")
    if better is not None and better not in BETTER:
        raise Invalid(f"better {better!r} is not accepted; use a or b, or leave it out for both")
    first = job_service.get(session=session, job_id=job_a)
    second = job_service.get(session=session, job_id=job_b)
    if first.dataset_id != second.dataset_id:
        raise Invalid(
            f"jobs {job_a} and {job_b} ran on different datasets ({first.dataset_id} "
            f"and {second.dataset_id}); compare jobs of the same dataset"
        )
    evaluation_a, rows_a = _analysed(session, job_a)
    evaluation_b, rows_b = _analysed(session, job_b)
    score_thr = evaluation_a.analysis["score_thr"]  # type: ignore[index]
    other_thr = evaluation_b.analysis["score_thr"]  # type: ignore[index]
    if score_thr != other_thr:
        raise Invalid(
            f"job {job_a} counted predictions from score {score_thr:g} and job {job_b} from "
            f"{other_thr:g}; per-image counts compare at one threshold: recompute one with "
            f"POST /jobs/{{id}}/analysis?score_thr={score_thr:g}"
        )
    ranking = RANKINGS[by]
    sign = 1 if ranking.higher_is_better else -1

    def value(row: ImageResult) -> int:
        return sum(getattr(row, name) for name in ranking.outcomes)

    shared = sorted(rows_a.keys() & rows_b.keys())
    differing: list[dict[str, Any]] = []
    for image_id in shared:
        a, b = rows_a[image_id], rows_b[image_id]
        gain = sign * (value(b) - value(a))  # > 0: B does better
        if gain == 0:
            continue
        changed = {
            name: getattr(b, name) - getattr(a, name)
            for name in COUNTED
            if getattr(b, name) != getattr(a, name)
        }
        differing.append(
            {
                "image_id": image_id,
                "file_name": a.file_name,
                "better": "b" if gain > 0 else "a",
                "difference": abs(gain),
                "a": _side(job_a, a),
                "b": _side(job_b, b),
                "changed": changed,
            }
        )
    better_in = {side: sum(d["better"] == side for d in differing) for side in BETTER}
    chosen = [d for d in differing if better is None or d["better"] == better]
    chosen.sort(key=lambda d: (-d["difference"], d["image_id"]))
    return {
        "by": by,
        "compared": ranking.description,
        "score_thr": score_thr,
        "images": len(shared),
        "better_in_a": better_in["a"],
        "better_in_b": better_in["b"],
        "same": len(shared) - len(differing),
        "sentence": _sentence(job_a, job_b, ranking, score_thr, len(shared), better_in),
        "total": len(chosen),
        "items": chosen[offset : offset + limit],
        "confusion": confusion_changes(evaluation_a, evaluation_b),
    }


def _sentence(
    job_a: int,
    job_b: int,
    ranking: Ranking,
    score_thr: float,
    images: int,
    better_in: dict[str, int],
) -> str:
    """What was compared and what came out, with the threshold; never more than was measured."""
    counted = f"counting predictions with score >= {score_thr:g}"
    if not better_in["a"] and not better_in["b"]:
        return (
            f"No val image differs in its number of {ranking.description} between job {job_a} "
            f"and job {job_b} ({_images(images)} compared, {counted}); they may still differ in "
            "other figures or in the scores of their boxes"
        )
    same = images - better_in["a"] - better_in["b"]
    fewer_or_more = "more" if ranking.higher_is_better else "fewer"
    return (
        f"Job {job_a} has {fewer_or_more} {ranking.description} on {_images(better_in['a'])}, "
        f"job {job_b} on {better_in['b']}, and {same} {'is' if same == 1 else 'are'} even "
        f"({_images(images)} compared, {counted})"
    )


def _images(count: int) -> str:
    return f"{count} val image{'' if count == 1 else 's'}"


def confusion_changes(evaluation_a: Evaluation, evaluation_b: Evaluation) -> dict[str, Any]:
    """The cells off the confusion matrices' diagonal whose counts differ between two
    evaluations (A's count, B's), the largest changes first; the matrices must have been
    counted with the same labels and thresholds, else the answer says why there is none."""
    first: dict[str, Any] = (evaluation_a.analysis or {}).get("confusion") or {}
    second: dict[str, Any] = (evaluation_b.analysis or {}).get("confusion") or {}
    if not first or not second:
        return {"changes": None, "why": "one of the jobs has no confusion matrix"}
    for key in ("labels", "score_thr", "iou_thr"):
        if first.get(key) != second.get(key):
            return {
                "changes": None,
                "why": f"the confusion matrices were counted with different {key} "
                f"({first.get(key)} and {second.get(key)})",
            }
    labels = first["labels"]
    changes = [
        {
            "gt": gt,
            "predicted": predicted,
            "label": cell_label(gt, predicted),
            "a": first["matrix"][row][col],
            "b": second["matrix"][row][col],
        }
        for row, gt in enumerate(labels)
        for col, predicted in enumerate(labels)
        if row != col and first["matrix"][row][col] != second["matrix"][row][col]
    ]
    changes.sort(key=lambda c: (-abs(c["b"] - c["a"]), c["gt"], c["predicted"]))
    return {
        "score_thr": first["score_thr"],
        "iou_thr": first["iou_thr"],
        "changes": changes,
        "why": None,
    }
