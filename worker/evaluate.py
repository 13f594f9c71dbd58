"""Evaluate jobs: score a checkpoint on a registered dataset's val split, its classes matched
to the dataset's by name, with the COCO engine and error analysis of fine-tune jobs.

The model is a DetLab fine-tune job's own (its architecture and last checkpoint), one of
DetLab's detector x backbone choices, or a config the installed mmdet ships; the checkpoint is
loaded with ``weights_only=True`` (mmengine's own pickled types are allowed only in a DetLab
job's own checkpoint). Inference runs in batches through ``model.test_step``, as mmengine's
test loop does, so batch 1 reproduces a fine-tune job's own evaluation bit for bit.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session, sessionmaker

from backend import registry
from backend.artifacts_io import write_text_atomic
from backend.config import Settings
from backend.datasets.models import Dataset
from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from backend.jobs.spec import EvaluateSpec, FinetuneSpec
from worker.checkpoints import allow_own_checkpoints, check_user_checkpoint
from worker.db_writes import retrying
from worker.finetune import store_evaluation
from worker.mmdet_config import DetLabModel, build_evaluate_config
from worker.outcomes import JobCancelled, JobFailed
from worker.training import require_cuda_for_amp, save_config_and_record

__all__ = ["ClassMapping", "checkpoint_classes", "match_classes", "run_evaluate"]

log = logging.getLogger(__name__)

# DetLab's own models without a scale in the spec: a fine-tune job's default
DEFAULT_SCALE: tuple[int, int] = FinetuneSpec.model_fields["image_scale"].default
# image loading workers on a GPU worker (on a CPU the model needs every core)
GPU_LOADER_WORKERS = 2
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class ModelToScore:
    """What an evaluate spec names: the model, its checkpoint file and how to read it."""

    model: DetLabModel | Path  # one of ours, or the file of a config mmdet ships
    checkpoint: Path
    own: bool  # a DetLab job's checkpoint: mmengine's training state may be loaded
    image_scale: tuple[int, int] | None  # None: the mmdet config's own test Resize
    # the class names of the source job's dataset, for a checkpoint that names none
    source_classes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ClassMapping:
    """The checkpoint's labels matched by name to the dataset's category ids."""

    category_of_label: dict[int, int]
    matched: list[str]
    model_only: list[str]
    dataset_only: list[str]

    def record(self) -> dict[str, list[str]]:
        return {
            "matched": self.matched,
            "model_only": self.model_only,
            "dataset_only": self.dataset_only,
        }


def match_classes(model_classes: tuple[str, ...], categories: list[dict[str, Any]]) -> ClassMapping:
    """Each model label whose class name the dataset has, mapped to that category's id; the
    names on either side only (labels of model-only classes are dropped from predictions)."""
    ids = {category["name"]: category["id"] for category in categories}
    known = set(model_classes)
    return ClassMapping(
        category_of_label={
            label: ids[name] for label, name in enumerate(model_classes) if name in ids
        },
        matched=[category["name"] for category in categories if category["name"] in known],
        model_only=[name for name in model_classes if name not in ids],
        dataset_only=[category["name"] for category in categories if category["name"] not in known],
    )


def checkpoint_classes(checkpoint: dict[str, Any]) -> tuple[str, ...] | None:
    """The class names a checkpoint saved, in label order: mmdet 3's meta.dataset_meta.classes
    (mmdet 2's meta.CLASSES), or None."""
    meta = checkpoint.get("meta")
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    names = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    if names is None:
        names = meta.get("CLASSES")
    if isinstance(names, str) or not isinstance(names, list | tuple) or not names:
        return None
    if not all(isinstance(name, str) for name in names):
        return None
    return tuple(names)


def _dataset(session: Session, dataset_id: int) -> Dataset:
    dataset = session.get(Dataset, dataset_id)
    if dataset is None:
        raise JobFailed(f"dataset {dataset_id} no longer exists")
    return dataset


def _class_names(dataset: Dataset) -> tuple[str, ...]:
    return tuple(category["name"] for category in (dataset.stats or {}).get("categories", []))


def _last_checkpoint(artifact_root: Path, job_id: int) -> Path:
    """The final checkpoint of a DetLab job: its work dir's last_checkpoint names it."""
    work_dir = JobPaths.for_job(artifact_root, job_id).work_dir
    pointer = work_dir / "last_checkpoint"
    # only the file name is taken: the checkpoint stays in the job's work dir even when the
    # artifact root was moved since the job ran
    name = Path(pointer.read_text(encoding="utf-8").strip()).name if pointer.is_file() else ""
    path = work_dir / name
    if not name or not path.is_file():
        raise JobFailed(
            f"job {job_id} has no final checkpoint in {work_dir} (last_checkpoint missing or "
            "naming a missing file); its artifacts may have been removed"
        )
    return path


def _model_to_score(
    spec: EvaluateSpec, *, artifact_root: Path, sessions: sessionmaker[Session]
) -> ModelToScore:
    if spec.source_job_id is not None:
        with sessions() as session:
            source = session.get(Job, spec.source_job_id)
            if source is None or source.kind != JobKind.finetune:
                raise JobFailed(f"source job {spec.source_job_id} no longer exists")
            trained = FinetuneSpec.model_validate(source.spec)
            source_dataset = session.get(Dataset, source.dataset_id)
        return ModelToScore(
            model=DetLabModel(
                detector=trained.detector,
                backbone=trained.backbone,
                neck=trained.neck,
                norm=trained.resolved_norm,
                test_proposals_per_image=trained.test_proposals_per_image,
                feature_channels=trained.feature_channels,
            ),
            checkpoint=_last_checkpoint(artifact_root, source.id),
            own=True,
            image_scale=spec.image_scale or trained.image_scale,
            source_classes=_class_names(source_dataset) if source_dataset else None,
        )
    assert spec.checkpoint is not None  # the spec insists on one without a source job
    if spec.mmdet_config is not None:
        config_file = registry.mmdet_config_file(spec.mmdet_config)
        if config_file is None:
            raise JobFailed(
                f"mmdet_config {spec.mmdet_config!r} is no longer shipped by the installed mmdet"
            )
        return ModelToScore(
            model=config_file.resolve(),
            checkpoint=Path(spec.checkpoint),
            own=False,
            image_scale=spec.image_scale,
        )
    assert spec.detector is not None and spec.backbone is not None
    return ModelToScore(
        model=DetLabModel(
            detector=spec.detector,
            backbone=spec.backbone,
            neck=spec.neck,
            feature_channels=spec.feature_channels,
        ),
        checkpoint=Path(spec.checkpoint),
        own=False,
        image_scale=spec.image_scale or DEFAULT_SCALE,
    )


def _load_checkpoint(found: ModelToScore) -> dict[str, Any]:
    """The checkpoint as plain data, loaded with weights_only=True."""
    if not found.own:
        try:
            return check_user_checkpoint(found.checkpoint)
        except ValueError as exc:
            hint = "; to score a DetLab job's checkpoint, give its source_job_id"
            raise JobFailed(f"{exc}{hint if 'mmengine' in str(exc) else ''}") from None
    with allow_own_checkpoints():
        loaded = torch.load(str(found.checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(loaded, dict):
        raise JobFailed(f"checkpoint {found.checkpoint} holds a {type(loaded).__name__}")
    return loaded


def _weights(checkpoint: dict[str, Any], path: Path) -> dict[str, Any]:
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise JobFailed(
            f"checkpoint {path} holds no weights: expected a dict of tensors or a dict with "
            "a 'state_dict' of tensors"
        )
    # a model saved while wrapped for data parallel training
    return {key.removeprefix("module."): value for key, value in state.items()}


def _resolve_classes(
    checkpoint: dict[str, Any], found: ModelToScore, dataset: Dataset
) -> tuple[tuple[str, ...], str, bool]:
    """The model's class names in label order, where they came from, and whether they are
    the dataset's, assumed (the head's size confirms it when the weights load)."""
    named = checkpoint_classes(checkpoint)
    if named is not None:
        return named, "the checkpoint's meta", False
    if found.source_classes:
        return found.source_classes, "the source job's dataset", False
    dataset_classes = _class_names(dataset)
    return (
        dataset_classes,
        f"assumed: the dataset's order (the checkpoint names no classes and its head has the "
        f"dataset's {len(dataset_classes)} classes)",
        True,
    )


def _build_model(
    cfg: Any, weights: dict[str, Any], *, assumed_classes: int | None, path: Path
) -> Any:
    """The detector of cfg with the checkpoint's weights, in eval mode on the GPU if any.
    ``assumed_classes``: the dataset's class count when the checkpoint names no classes."""
    from mmdet.registry import MODELS
    from mmengine.model import revert_sync_batchnorm

    # one process, as mmengine's runner outside distributed runs: SyncBN becomes plain BN
    model = revert_sync_batchnorm(MODELS.build(cfg.model))
    try:
        outcome = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another architecture or classes
        mismatch = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line] or [
            str(exc).strip().splitlines()[0]
        ]
        if assumed_classes is not None:
            raise JobFailed(
                f"checkpoint {path} names no classes (meta.dataset_meta.classes) and its head "
                f"does not have the dataset's {assumed_classes} classes ({mismatch[0]}); save "
                "its class names in meta.dataset_meta.classes"
            ) from None
        raise JobFailed(
            f"checkpoint {path} does not fit the model: {mismatch[0]}"
            + (f" (and {len(mismatch) - 1} more)" if len(mismatch) > 1 else "")
        ) from None
    missing = [key for key in outcome.missing_keys if not key.endswith("num_batches_tracked")]
    if missing:
        raise JobFailed(
            f"checkpoint {path} does not fit the model: {len(missing)} of its weights are "
            f"missing ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); is it "
            "another detector, backbone or neck?"
        )
    if outcome.unexpected_keys:
        log.warning(
            "checkpoint %s: %d weights the model does not use (%s, ...)",
            path,
            len(outcome.unexpected_keys),
            outcome.unexpected_keys[0],
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval()


class _ValImages(torch.utils.data.Dataset):
    """The val split's images through the config's test pipeline (annotations not loaded)."""

    def __init__(self, items: list[dict[str, Any]], pipeline: Callable[[dict], Any]) -> None:
        self.items = items
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.pipeline(dict(self.items[index]))


def _val_loader(cfg: Any, dataset: Dataset, batch_size: int) -> Any:
    from mmengine.dataset import Compose, pseudo_collate

    val = json.loads(Path(dataset.val_ann).read_text(encoding="utf-8"))
    folder = Path(dataset.val_images)
    items = [
        {"img_path": str(folder / image["file_name"]), "img_id": image["id"]}
        for image in val["images"]
    ]
    # ground truth is the scorer's business: the model only sees the images
    steps = [
        step
        for step in cfg.test_dataloader.dataset.pipeline
        if _type_name(step["type"]) != "LoadAnnotations"
    ]
    return torch.utils.data.DataLoader(
        _ValImages(items, Compose(steps)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=GPU_LOADER_WORKERS if torch.cuda.is_available() else 0,
        collate_fn=pseudo_collate,
    )


def _type_name(kind: Any) -> str:
    """A transform's name, whether the config gives it as 'mmdet.Name' or as the class."""
    return str(getattr(kind, "__name__", kind)).split(".")[-1]


def _coco_results(outputs: list[Any], mapping: ClassMapping) -> Iterator[dict[str, Any]]:
    """Predictions as COCO results, converted as mmdet's CocoMetric converts them (float32
    corners to Python floats, then width and height), labels to the dataset's category ids."""
    for sample in outputs:
        found = sample.pred_instances
        boxes = found.bboxes.float().cpu().numpy()
        scores = found.scores.float().cpu().numpy()
        labels = found.labels.cpu().numpy()
        image_id = sample.metainfo["img_id"]
        for box, score, label in zip(boxes, scores, labels, strict=True):
            category = mapping.category_of_label.get(int(label))
            if category is None:  # a class the dataset does not have
                continue
            x1, y1, x2, y2 = box.tolist()
            yield {
                "image_id": image_id,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": float(score),
                "category_id": category,
            }


def _predict(
    model: Any,
    loader: Any,
    mapping: ClassMapping,
    *,
    amp: bool,
    report: Callable[[int, int], None],
) -> list[dict[str, Any]]:
    total = len(loader.dataset)
    results: list[dict[str, Any]] = []
    done = 0
    report(0, total)
    precision = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
    with torch.no_grad(), precision:
        for batch in loader:
            outputs = model.test_step(batch)
            results.extend(_coco_results(outputs, mapping))
            done += len(outputs)
            report(done, total)
    return results


def _progress(
    job_id: int, token: str, sessions: sessionmaker[Session], db_grace_s: float
) -> Callable[[int, int], None]:
    """report(done, total): images done, written about every second and at the end; raises
    JobCancelled once a cancel was asked."""
    started = time.monotonic()
    last = 0.0

    def report(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if 0 < done < total and now - last < PROGRESS_EVERY_S:
            return
        last = now
        eta = (now - started) / done * (total - done) if done else None

        def write() -> bool:
            with sessions() as session:
                return job_service.record_progress(
                    session=session,
                    job_id=job_id,
                    progress_iter=done,
                    progress_total=total,
                    eta_seconds=eta,
                    token=token,
                )

        if retrying(write, grace_s=db_grace_s, what="recording progress"):
            raise JobCancelled(f"cancelled by request after {done} of {total} images")

    return report


def run_evaluate(claim: Claim, *, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Score a checkpoint on a dataset's val split and store the evaluation, its record
    carrying the class mapping."""
    job = claim.job
    assert settings.artifact_root is not None
    spec = EvaluateSpec.model_validate(job.spec)
    require_cuda_for_amp(spec.amp)
    with sessions() as session:
        dataset = _dataset(session, spec.dataset_id)
    for label in ("val_ann", "val_images"):
        if not Path(getattr(dataset, label)).exists():
            raise JobFailed(
                f"dataset {dataset.name!r} is gone: its {label} "
                f"{getattr(dataset, label)} does not exist"
            )
    found = _model_to_score(spec, artifact_root=settings.artifact_root, sessions=sessions)
    checkpoint = _load_checkpoint(found)
    weights = _weights(checkpoint, found.checkpoint)
    classes, classes_from, assumed = _resolve_classes(checkpoint, found, dataset)
    categories = (dataset.stats or {}).get("categories", [])
    mapping = match_classes(classes, categories)
    if not mapping.matched:
        raise JobFailed(
            f"the checkpoint's classes ({', '.join(classes)}) share no name with the classes "
            f"of dataset {dataset.name!r} ({', '.join(c['name'] for c in categories)}); "
            "classes are matched by name"
        )

    paths = JobPaths.for_job(settings.artifact_root, job.id)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    try:
        cfg = build_evaluate_config(
            found.model,
            dataset=dataset,
            paths=paths,
            classes=classes,
            batch_size=spec.batch_size,
            image_scale=found.image_scale,
            checkpoint=str(found.checkpoint),
        )
    except ValueError as exc:
        raise JobFailed(f"the model's config cannot score this dataset: {exc}") from None
    save_config_and_record(
        cfg,
        paths=paths,
        claim=claim,
        sessions=sessions,
        settings=settings,
        val_ann=Path(dataset.val_ann),
    )

    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    model = _build_model(
        cfg, weights, assumed_classes=len(classes) if assumed else None, path=found.checkpoint
    )
    del checkpoint, weights
    report = _progress(job.id, claim.token, sessions, settings.db_grace_s)
    results = _predict(
        model, _val_loader(cfg, dataset, spec.batch_size), mapping, amp=spec.amp, report=report
    )
    write_text_atomic(paths.predictions, json.dumps(results))
    store_evaluation(
        job_id=job.id,
        predictions=paths.predictions,
        sessions=sessions,
        record_extra={
            "class_mapping": mapping.record(),
            "class_names_from": classes_from,
            "checkpoint": str(found.checkpoint),
        },
    )
