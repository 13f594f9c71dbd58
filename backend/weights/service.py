"""The weights registry: imported checkpoints and pretrain outputs, with their lineage."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.datasets.validation import PathOutsideRoots, confine
from backend.errors import Conflict, Invalid, NotFound
from backend.jobs.models import Job, JobKind
from backend.weights.models import Weights
from backend.weights.schemas import WeightsImport

__all__ = ["import_weights", "register_produced", "list_weights", "get", "finetune_jobs"]


def _check_name(session: Session, name: str) -> None:
    if session.scalar(select(Weights.id).where(Weights.name == name)) is not None:
        raise Conflict(f"weights named {name!r} exist; choose another name")


def import_weights(
    *, session: Session, weights_in: WeightsImport, roots: list[Path], artifact_root: Path
) -> Weights:
    """Convert an external checkpoint to mmdet's ResNet layout and register it."""
    from backend.weights.convert import ConversionFailed, load_backbone, save_backbone

    _check_name(session, weights_in.name)
    try:
        source = confine(weights_in.path, roots)
    except PathOutsideRoots as exc:
        raise Invalid(f"path: {exc}") from None
    if not source.is_file():
        raise Invalid(f"path: {weights_in.path} is not a file; give a checkpoint file")
    try:
        converted = load_backbone(source, architecture=weights_in.architecture)
    except ConversionFailed as exc:
        raise Invalid(str(exc)) from None
    out = artifact_root / "weights" / f"{hashlib.sha256(source.read_bytes()).hexdigest()}.pth"
    sha256 = save_backbone(converted, out)
    weights = Weights(
        name=weights_in.name,
        architecture=weights_in.architecture,
        method=weights_in.method,
        source=converted.source_format,
        path=str(out),
        sha256=sha256,
        report=converted.report(source),
    )
    session.add(weights)
    session.commit()
    return weights


def register_produced(
    *,
    session: Session,
    name: str,
    architecture: str,
    method: str,
    path: Path,
    sha256: str,
    job_id: int,
    report: dict[str, Any],
) -> Weights:
    """Register the backbone a pretrain job produced."""
    _check_name(session, name)
    weights = Weights(
        name=name,
        architecture=architecture,
        method=method,
        source="pretrain_job",
        path=str(path),
        sha256=sha256,
        producing_job_id=job_id,
        report=report,
    )
    session.add(weights)
    session.commit()
    return weights


def list_weights(*, session: Session, limit: int, offset: int) -> tuple[list[Weights], int]:
    """One page of weights, newest first."""
    total = session.scalar(select(func.count(Weights.id))) or 0
    items = session.scalars(
        select(Weights).order_by(Weights.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(items), total


def get(*, session: Session, weights_id: int) -> Weights:
    """The weights entry with this id, or NotFound."""
    weights = session.get(Weights, weights_id)
    if weights is None:
        raise NotFound(f"weights {weights_id} not found")
    return weights


def finetune_jobs(*, session: Session, weights_id: int) -> list[Job]:
    """The fine-tune jobs that started from these weights."""
    return list(
        session.scalars(
            select(Job)
            .where(Job.weights_id == weights_id, Job.kind == JobKind.finetune)
            .order_by(Job.id)
        )
    )
