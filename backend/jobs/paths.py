"""Where one job keeps its files under the artifact root (the worker writes them; the API
writes an imported run's predictions there too)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["JobPaths", "mask_predictions_of"]

BBOX_SUFFIX = ".bbox.json"
SEGM_SUFFIX = ".segm.json"


def mask_predictions_of(predictions: str | Path) -> Path | None:
    """The mask predictions written beside a bbox predictions file (mmdet's CocoMetric writes
    ``<prefix>.bbox.json`` and, for a model with masks, ``<prefix>.segm.json``), or None when
    the file's name does not follow that pattern."""
    name = str(predictions)
    if not name.endswith(BBOX_SUFFIX):
        return None
    return Path(name[: -len(BBOX_SUFFIX)] + SEGM_SUFFIX)


@dataclass(frozen=True)
class JobPaths:
    """The files of one job: its folder holds the config, work dir and predictions."""

    root: Path

    @classmethod
    def for_job(cls, artifact_root: Path, job_id: int) -> JobPaths:
        return cls(artifact_root / "jobs" / str(job_id))

    @property
    def work_dir(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "config.py"

    @property
    def predictions_prefix(self) -> Path:
        return self.root / "predictions"

    @property
    def predictions(self) -> Path:  # CocoMetric appends ".bbox.json" to the prefix
        return self.root / "predictions.bbox.json"

    @property
    def mask_predictions(self) -> Path:  # ".segm.json": a detector with a mask head only
        return self.root / "predictions.segm.json"

    @property
    def train_subset(self) -> Path:
        return self.root / "train_subset.json"
