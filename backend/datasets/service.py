"""Dataset registration and lookup."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.config import get_settings
from backend.datasets.models import Dataset
from backend.datasets.schemas import DatasetCreate
from backend.datasets.validation import PathOutsideRoots, check_splits, confine, oversized_files
from backend.errors import Conflict, Invalid, NotFound

__all__ = ["register", "list_datasets", "get", "image_file", "masks_missing", "SPLITS"]

SPLITS = ("train", "val")


def register(
    *,
    session: Session,
    dataset_in: DatasetCreate,
    roots: list[Path],
    max_annotation_bytes: int | None = None,
    owner_id: int | None = None,
) -> Dataset:
    """Validate a COCO dataset under the allowed roots and store it with its statistics.

    Refused before any file is parsed: a name in use (409), a path outside the roots (422),
    annotation files already registered (409, see `_registered_as`) and an annotation file
    over max_annotation_bytes (422; DETLAB_MAX_ANNOTATION_BYTES when not given).
    """
    if session.scalar(select(Dataset.id).where(Dataset.name == dataset_in.name)) is not None:
        raise Conflict(f"a dataset named {dataset_in.name!r} exists; choose another name")
    paths: dict[str, Path] = {}
    outside = []
    for field in ("train_ann", "val_ann", "train_images", "val_images"):
        try:
            paths[field] = confine(getattr(dataset_in, field), roots)
        except PathOutsideRoots as exc:
            outside.append({"where": field, "problem": str(exc)})
    if outside:
        raise Invalid("dataset paths must lie under an allowed data root", problems=outside)
    existing = _registered_as(session, train_ann=paths["train_ann"], val_ann=paths["val_ann"])
    if existing is not None:
        raise Conflict(
            f"these annotation files are registered already, as dataset {existing.name!r} "
            f"(id {existing.id}); use that dataset, or register a copy of the files"
        )
    if max_annotation_bytes is None:
        max_annotation_bytes = get_settings().max_annotation_bytes
    oversized = oversized_files([paths["train_ann"], paths["val_ann"]], max_annotation_bytes)
    if oversized:
        listed = "; ".join(f"{p['where']}: {p['problem']}" for p in oversized)
        raise Invalid(f"annotation file too large to register: {listed}", problems=oversized)
    reports = check_splits(
        [(split, paths[f"{split}_ann"], paths[f"{split}_images"]) for split in SPLITS]
    )
    problems = [problem for report in reports for problem in report.problems]
    if problems:
        raise Invalid(f"dataset {dataset_in.name!r} is not a valid COCO dataset", problems=problems)
    train, val = reports
    if [c["name"] for c in train.categories] != [c["name"] for c in val.categories]:
        raise Invalid(
            "train and val splits have different categories; both must list the same "
            "categories in the same order"
        )
    dataset = Dataset(
        owner_id=owner_id,
        name=dataset_in.name,
        train_ann=str(paths["train_ann"]),
        val_ann=str(paths["val_ann"]),
        train_images=str(paths["train_images"]),
        val_images=str(paths["val_images"]),
        stats={"categories": train.categories, "train": train.stats, "val": val.stats},
    )
    session.add(dataset)
    session.commit()
    return dataset


def masks_missing(stats: dict) -> str | None:
    """Why the dataset with these stats cannot train a mask model (a segmentation on every
    non-crowd box of both splits), or None when it can."""
    reasons = []
    for split in SPLITS:
        counts = stats.get(split) or {}
        if "masks" not in counts:
            return "it was registered before DetLab recorded masks; register it again"
        boxes, masks = counts.get("boxes", 0), counts["masks"]
        if boxes == 0:
            reasons.append(f"{split}: it has no boxes")
        elif masks == 0:
            reasons.append(f"{split}: none of its {boxes} boxes has a segmentation")
        elif masks < boxes:
            lacking = boxes - masks
            verb = "has" if lacking == 1 else "have"
            reasons.append(f"{split}: {lacking} of {boxes} boxes {verb} no segmentation")
    return "; ".join(reasons) or None


def _registered_as(session: Session, *, train_ann: Path, val_ann: Path) -> Dataset | None:
    """The dataset registered from these annotation files, if any.

    A dataset is its pair of annotation files: the same resolved train_ann and the same
    resolved val_ann (symlinks followed, as stored) as a registered dataset is the same
    dataset, whatever the name or image folders. Sharing one of the two is allowed, so that
    several training sets can be scored on one val split. Copies are different files.
    """
    return session.scalar(
        select(Dataset)
        .where(Dataset.train_ann == str(train_ann), Dataset.val_ann == str(val_ann))
        .order_by(Dataset.id)
        .limit(1)
    )


def list_datasets(*, session: Session, limit: int, offset: int) -> tuple[list[Dataset], int]:
    """One page of datasets, newest first, and the total count."""
    total = session.scalar(select(func.count(Dataset.id))) or 0
    items = session.scalars(
        select(Dataset).order_by(Dataset.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(items), total


def get(*, session: Session, dataset_id: int) -> Dataset:
    """The dataset with this id, or NotFound."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found")
    return dataset


@lru_cache(maxsize=64)
def _file_names(ann_file: str, mtime_ns: int) -> dict[int, str]:
    with open(ann_file, encoding="utf-8") as handle:
        images = json.load(handle)["images"]
    return {int(image["id"]): str(image["file_name"]) for image in images}


def image_file(*, dataset: Dataset, image_id: int, split: str = "val") -> Path:
    """Path of one image, confined to the split's image folder (symlinks resolved)."""
    if split not in SPLITS:
        raise Invalid(f"split {split!r} is not accepted; use one of {', '.join(SPLITS)}")
    ann_file = dataset.train_ann if split == "train" else dataset.val_ann
    image_dir = Path(dataset.train_images if split == "train" else dataset.val_images).resolve()
    try:
        names = _file_names(ann_file, Path(ann_file).stat().st_mtime_ns)
    except OSError as exc:
        raise NotFound(f"the annotation file of dataset {dataset.id} is gone ({exc})") from exc
    file_name = names.get(image_id)
    if file_name is None:
        raise NotFound(f"image {image_id} is not in the {split} split of dataset {dataset.id}")
    path = (image_dir / file_name).resolve()
    # file names are data from a user's JSON: never serve anything outside the folder
    if not path.is_relative_to(image_dir) or not path.is_file():
        raise NotFound(f"image {image_id} has no file inside the dataset's {split} image folder")
    return path
