"""The weights registry: imported checkpoints and pretrain outputs, and the jobs that used them."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.artifacts_io import write_bytes_atomic
from backend.datasets.validation import PathOutsideRoots, confine
from backend.errors import Conflict, Invalid, NotFound
from backend.weights.convert import SUFFIXES, ConvertedWeights, WeightsFileError, load_backbone
from backend.weights.models import Weights
from backend.weights.schemas import WeightsDetail, WeightsImport

__all__ = ["import_weights", "register_produced", "list_weights", "get", "detail"]


def import_weights(
    *,
    session: Session,
    weights_in: WeightsImport,
    roots: list[Path],
    artifact_root: Path,
    owner_id: int | None = None,
) -> Weights:
    """Convert a checkpoint under the data roots to mmdet's ResNet layout and register it."""
    _check_name_free(session, weights_in.name)
    try:
        source = confine(weights_in.path, roots)
    except PathOutsideRoots as exc:
        raise Invalid(f"path: {exc}") from None
    if not source.is_file():
        raise Invalid(
            f"path: {weights_in.path} is not a file; give the path of a checkpoint "
            f"({', '.join(SUFFIXES)}) under an allowed data root"
        )
    try:
        converted = load_backbone(source, architecture=weights_in.architecture)
    except WeightsFileError as exc:
        raise Invalid(f"path: {exc}", problems=exc.problems) from None
    path, sha256 = _store(converted, artifact_root / "weights")
    weights = Weights(
        name=weights_in.name,
        architecture=weights_in.architecture,
        method=weights_in.method,
        source=converted.source_format,
        path=str(path),
        sha256=sha256,
        owner_id=owner_id,
        report={
            "source_format": converted.source_format,
            "dropped": converted.dropped,
            "kept_keys": len(converted.state_dict),
            "source_path": str(source),
        },
    )
    return _commit(session, weights)


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
    owner_id: int | None = None,
    detector: str | None = None,
) -> Weights:
    """Register what a pretrain job exported: a backbone, or (``detector`` given) a whole
    detector on that backbone; a rerun of that job updates its entry."""
    weights = session.scalar(select(Weights).where(Weights.name == name))
    if weights is None:
        weights = Weights(name=name, producing_job_id=job_id, owner_id=owner_id)
    elif weights.producing_job_id != job_id:
        raise Conflict(f"weights named {name!r} exist and come from elsewhere; choose another name")
    weights.architecture = architecture
    weights.method = method
    weights.kind = "backbone" if detector is None else "detector"
    weights.detector = detector
    weights.source = "pretrain_job"
    weights.path = str(path)
    weights.sha256 = sha256
    weights.report = report
    return _commit(session, weights)


def list_weights(*, session: Session, limit: int, offset: int) -> tuple[list[Weights], int]:
    """One page of weights entries, newest first, and the total count."""
    total = session.scalar(select(func.count(Weights.id))) or 0
    items = session.scalars(
        select(Weights).order_by(Weights.id.desc()).limit(limit).offset(offset)
    ).all()
    return list(items), total


def get(*, session: Session, weights_id: int) -> Weights:
    """The weights entry with this id, or NotFound."""
    weights = session.get(Weights, weights_id)
    if weights is None:
        raise NotFound(f"weights {weights_id} not found; see GET /weights for the registered ones")
    return weights


def detail(*, session: Session, weights_id: int) -> WeightsDetail:
    """A weights entry with the fine-tune jobs that started from it."""
    return WeightsDetail.model_validate(get(session=session, weights_id=weights_id))


def _check_name_free(session: Session, name: str) -> None:
    if session.scalar(select(Weights.id).where(Weights.name == name)) is not None:
        raise Conflict(f"weights named {name!r} exist; choose another name")


def _commit(session: Session, weights: Weights) -> Weights:
    session.add(weights)
    try:
        session.commit()
    except IntegrityError:  # the same name registered at the same moment
        session.rollback()
        raise Conflict(f"weights named {weights.name!r} exist; choose another name") from None
    return weights


def _store(converted: ConvertedWeights, folder: Path) -> tuple[Path, str]:
    """Save the state dict as folder/<sha256 of the file>.pth; returns the path and the hash."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    meta = {"architecture": converted.architecture, "source_format": converted.source_format}
    with io.BytesIO() as buffer:  # the file is named by its hash, known once it is serialised
        torch.save({"state_dict": converted.state_dict, "meta": meta}, buffer)
        data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    target = folder / f"{digest}.pth"
    write_bytes_atomic(target, data)
    return target, digest
