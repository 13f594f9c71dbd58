"""Rows tests need, built in the test's session: datasets, jobs, evaluations, weights.

Each factory writes what the code that owns the row would write (the datasets service validates
and counts a dataset, the evaluations service stores an evaluation), takes keyword arguments for
what a test cares about and fills the rest with small, valid defaults. Names are unique per call,
so a test can build several of a kind.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from backend.datasets.models import Dataset
from backend.evaluations.models import Evaluation, ImageResult
from backend.jobs.models import Job, JobKind, JobStatus
from backend.users import service as user_service
from backend.users.models import Role, User
from backend.weights.models import Weights

__all__ = [
    "FINETUNE_SPEC",
    "PRETRAIN_SPEC",
    "dataset",
    "dataset_files",
    "evaluation",
    "finished_job",
    "job",
    "weights",
]

# As the API stores a small fine-tune on the shapes dataset (dataset_id is filled in).
FINETUNE_SPEC: dict[str, Any] = {
    "kind": "finetune",
    "detector": "faster_rcnn",
    "backbone": "resnet18",
    "neck": "fpn",
    "init": "scratch",
    "image_scale": [128, 128],
    "iterations": 30,
    "batch_size": 2,
    "lr": 0.005,
    "seed": 0,
    "data_fraction": 1.0,
    "amp": False,
}
PRETRAIN_SPEC: dict[str, Any] = {
    "kind": "pretrain",
    "method": "mocov2",
    "backbone": "resnet18",
    "iterations": 20,
    "batch_size": 8,
    "queue_length": 16,
    "image_size": 64,
    "seed": 0,
}
# the outcome counts of one image_results row, in the table's column order
IMAGE_COUNTS = (
    "n_gt",
    "n_pred",
    "tp",
    "classification",
    "localization",
    "both",
    "duplicate",
    "background",
    "missed",
)

_serial = itertools.count(1)


# The smallest fine-tune that trains through mmdet for real (a few seconds an iteration on a
# CPU): the end-to-end tests add a dataset and a length.
TINY_TRAINING: dict[str, Any] = {
    "backbone": "resnet18",
    "init": "scratch",
    "image_scale": [128, 128],
    "batch_size": 2,
    "lr": 0.005,
    "warmup_iters": 10,
    "num_workers": 0,
    "roi_samples_per_image": 64,
    "test_proposals_per_image": 100,
}


def _unique(prefix: str) -> str:
    return f"{prefix}-{next(_serial)}"


def tiny_dataset(root: Path, *, seed: int = 1) -> SimpleNamespace:
    """Four train and two val shapes images of 96 px (boxes and polygons), as a registered
    dataset's fields (for config builders and one-step trainings; no database)."""
    from backend.datasets.shapes import generate_shapes
    from backend.datasets.validation import check_split

    paths = generate_shapes(root, seed=seed, num_train=4, num_val=2, image_size=(96, 96))
    train = check_split("train", paths.train_ann, paths.train_images)
    val = check_split("val", paths.val_ann, paths.val_images)
    return SimpleNamespace(
        paths=paths,
        train_ann=str(paths.train_ann),
        val_ann=str(paths.val_ann),
        train_images=str(paths.train_images),
        val_images=str(paths.val_images),
        stats={"categories": train.categories, "train": train.stats, "val": val.stats},
    )


def dataset_files(shapes: Any) -> dict[str, str]:
    """The paths of a POST /datasets body for generate_shapes' dataset, with annotation files of
    its own: copies in a new folder beside the images. The same annotation files register only
    once (409), so a body from here registers whatever else is registered."""
    folder = Path(tempfile.mkdtemp(prefix="annotations-", dir=Path(shapes.root)))
    for split, source in (("train", shapes.train_ann), ("val", shapes.val_ann)):
        shutil.copyfile(source, folder / f"{split}.json")
    return {
        "train_ann": str(folder / "train.json"),
        "val_ann": str(folder / "val.json"),
        "train_images": str(shapes.train_images),
        "val_images": str(shapes.val_images),
    }


def dataset(session: Session, *, shapes: Any, name: str | None = None) -> Dataset:
    """A dataset registered through the datasets service from generate_shapes' images and
    copies of its annotation files (dataset_files), so a test can register several."""
    from backend.datasets import service as dataset_service
    from backend.datasets.schemas import DatasetCreate

    dataset_in = DatasetCreate(name=name or _unique("shapes"), **dataset_files(shapes))
    return dataset_service.register(
        session=session, dataset_in=dataset_in, roots=[Path(shapes.root).resolve()]
    )


def job(
    session: Session,
    *,
    kind: JobKind = JobKind.finetune,
    status: JobStatus = JobStatus.queued,
    dataset_id: int | None = None,
    name: str | None = None,
    spec: dict[str, Any] | None = None,
    **columns: Any,
) -> Job:
    """A job row in any status; `spec` changes the kind's small default spec.

    A length in `spec` (epochs or iterations) replaces the default one; an init of
    {"weights_id": n} sets the job's weights_id, as the jobs service does.
    """
    changes = spec or {}
    defaults = {JobKind.finetune: FINETUNE_SPEC, JobKind.pretrain: PRETRAIN_SPEC}.get(kind, {})
    full_spec = {**defaults, **changes}  # evaluate and import jobs: their spec as given
    for unit, other in (("epochs", "iterations"), ("iterations", "epochs")):
        if unit in changes and other not in changes:  # a spec gives exactly one length
            full_spec.pop(other, None)
    if dataset_id is not None:
        full_spec["dataset_id"] = dataset_id
    init = full_spec.get("init")
    if isinstance(init, dict) and "weights_id" in init:
        columns.setdefault("weights_id", init["weights_id"])
    row = Job(
        kind=kind,
        status=status,
        dataset_id=dataset_id,
        name=name or _unique(kind.value),
        spec=full_spec,
        **columns,
    )
    session.add(row)
    session.commit()
    return row


def evaluation(
    session: Session,
    *,
    job_id: int,
    metrics: dict[str, float | None] | None = None,
    per_class_ap: dict[str, float | None] | None = None,
    predictions_path: str | Path = "/nowhere/predictions.bbox.json",
    analysis: dict[str, Any] | None = None,
    images: Iterable[dict[str, Any]] = (),
) -> Evaluation:
    """A job's evaluation stored by the evaluations service, with optional per-image rows.

    Each of `images` needs image_id; file_name, the outcome counts and badness default to
    "<image_id>.png", 0 and 0.0.
    """
    from backend.evaluations import service as evaluation_service

    stored = evaluation_service.store(
        session=session,
        job_id=job_id,
        metrics={"bbox_mAP": 0.5, "bbox_mAP_50": 0.7} if metrics is None else metrics,
        per_class_ap={} if per_class_ap is None else per_class_ap,
        predictions_path=str(predictions_path),
        analysis=analysis,
    )
    rows = [
        {
            "job_id": job_id,
            "file_name": f"{image['image_id']}.png",
            "badness": 0.0,
            **dict.fromkeys(IMAGE_COUNTS, 0),
            **image,
        }
        for image in images
    ]
    if rows:
        session.execute(insert(ImageResult), rows)
        session.commit()
    return stored


def finished_job(
    session: Session,
    *,
    dataset_id: int,
    status: JobStatus = JobStatus.succeeded,
    metrics: dict[str, float | None] | None = None,
    predictions_path: str | Path = "/nowhere/predictions.bbox.json",
    **job_fields: Any,
) -> Job:
    """A job that ran to `status` (succeeded) with its evaluation, as the worker leaves it."""
    row = job(session, dataset_id=dataset_id, status=status, **job_fields)
    evaluation(session, job_id=row.id, metrics=metrics, predictions_path=predictions_path)
    return row


def weights(
    session: Session,
    *,
    name: str | None = None,
    architecture: str = "resnet18",
    method: str = "mocov2",
    producing_job_id: int | None = None,
    path: str | Path = "/nowhere/weights.pth",
    sha256: str = "0" * 64,
    report: dict[str, Any] | None = None,
) -> Weights:
    """A weights entry: produced by a pretrain job when producing_job_id is given, else an
    imported torchvision checkpoint."""
    row = Weights(
        name=name or _unique(f"{method}-{architecture}"),
        architecture=architecture,
        method=method,
        source="pretrain_job" if producing_job_id is not None else "torchvision",
        path=str(path),
        sha256=sha256,
        producing_job_id=producing_job_id,
        report=report or {},
    )
    session.add(row)
    session.commit()
    return row


def user(session: Session, *, role: str = "member", name: str | None = None) -> tuple[User, str]:
    """A user of role and a token of theirs: (user, secret)."""
    made = user_service.create_user(session=session, name=name or _unique(role), role=Role(role))
    _, secret = user_service.create_token(session=session, user=made, name="tests")
    return made, secret


def config_dataset(folder: Path, classes: Iterable[str]) -> SimpleNamespace:
    """The fields of a registered dataset that the config builders read, over an empty
    annotation file with these classes in `folder` (no images: configs are built, not run)."""
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    ann = folder / "ann.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": categories}))
    return SimpleNamespace(
        train_ann=str(ann),
        val_ann=str(ann),
        train_images=str(folder),
        val_images=str(folder),
        stats={"categories": categories},
    )
