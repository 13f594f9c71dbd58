"""A job's reproducibility record: what each field says, and which fields a comparison of runs
expects to be equal.

The worker captures the record when a job starts (worker/record.py) and keeps it in the job's
`record` column; imported runs have none (their predictions were made elsewhere). A comparison
(the leaderboard, an experiment's matrix) holds the environment and the data fixed and varies
the spec: a row whose environment or data differs from the rest's is flagged, since its numbers
may differ for that reason and not for the axis being compared.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

__all__ = ["COMPARED", "FIELDS", "VARIED", "differences"]

# Every field of a record, in the order the run page lists them.
FIELDS: dict[str, str] = {
    "detlab_version": "the installed DetLab package's version",
    "git_commit": "the commit of DetLab's checkout (or DETLAB_GIT_COMMIT); null when unknown",
    "python": "Python's version",
    "torch": "torch's version",
    "torchvision": "torchvision's version",
    "mmcv": "mmcv's version",
    "mmengine": "mmengine's version",
    "mmdet": "mmdet's version",
    "mmpretrain": "mmpretrain's version",
    "cuda": "the CUDA version torch was built with",
    "cudnn": "cuDNN's version (as torch reports it)",
    "device": "cuda or cpu",
    "gpu_model": "the GPU's name; null on a CPU",
    "gpu_count": "GPUs the worker sees (a job trains on the first); 0 on a CPU",
    "train_ann_sha256": "sha256 of the dataset's train annotation file (pretrain, evaluate: null)",
    "val_ann_sha256": "sha256 of the dataset's val annotation file (pretrain: null)",
    "train_images_sha256": "sha256 of the sorted image file names the train annotation lists "
    "(pretrain: of the image folder's files, relative to it)",
    "val_images_sha256": "sha256 of the sorted image file names the val annotation lists",
    "init_weights": "the weights the model starts from: a path or the URL mmengine downloads; "
    "null from scratch",
    "init_weights_sha256": "sha256 of that file when it is on the worker's disk, else null",
    "seed": "the run's random seed (evaluate: null)",
    "deterministic": "whether deterministic algorithms were asked for (evaluate: null)",
    "config_sha256": "sha256 of the saved config, the job's own folder in it read as {job_dir}",
}
# The environment and the data: the same in every run of a fair comparison.
COMPARED: tuple[str, ...] = (
    "detlab_version",
    "git_commit",
    "python",
    "torch",
    "torchvision",
    "mmcv",
    "mmengine",
    "mmdet",
    "mmpretrain",
    "cuda",
    "cudnn",
    "device",
    "gpu_model",
    "train_ann_sha256",
    "val_ann_sha256",
    "train_images_sha256",
    "val_images_sha256",
    "deterministic",
)
# What differs between runs by design: the spec (the config, its init, its seed), and how many
# GPUs the worker happens to see (a job trains on one).
VARIED: tuple[str, ...] = tuple(field for field in FIELDS if field not in COMPARED)


def differences(records: list[dict[str, Any] | None]) -> list[list[str]]:
    """For each record, the compared fields (in COMPARED's order) whose value differs from the
    most common value of that field among the records that have one.

    A missing record, or a field it lacks or holds as null, is unknown and never flagged. When no
    value is the most common (a tie, such as two runs that disagree), every record holding a value
    of that field is flagged: none of them can be called the odd one."""
    flagged: list[list[str]] = [[] for _ in records]
    for field in COMPARED:
        values = [_value(record, field) for record in records]
        counts = Counter(value for value in values if value is not None)
        if len(counts) < 2:
            continue
        (top, first), (_, second) = counts.most_common(2)
        for found, value in zip(flagged, values, strict=True):
            if value is not None and (value != top or first == second):
                found.append(field)
    return flagged


def _value(record: dict[str, Any] | None, field: str) -> Any:
    """The field's value, hashable (a JSON list or object as its canonical text); None when
    unknown."""
    value = (record or {}).get(field)
    return json.dumps(value, sort_keys=True) if isinstance(value, list | dict) else value
