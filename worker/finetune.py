"""Fine-tune jobs: mmdet config, training, COCO evaluation and error analysis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.datasets.models import Dataset
from backend.errors import DomainError
from backend.evaluations import analysis_service
from backend.jobs import service as job_service
from backend.jobs.models import Job
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from backend.jobs.spec import CheckpointInit, FinetuneSpec
from backend.weights.models import Weights
from worker.checkpoints import check_user_checkpoint
from worker.distributed import World
from worker.mmdet_config import build_finetune_config
from worker.outcomes import JobFailed
from worker.training import apply_world, require_cuda_for_amp, save_config_and_record, train

__all__ = ["prepare_registries", "run_finetune", "store_evaluation", "validate_at_end"]


def _load_inputs(
    job: Job, settings: Settings, sessions: sessionmaker[Session]
) -> tuple[FinetuneSpec, Dataset, str | None, str]:
    """The spec, its dataset, and its init weights' file and kind (backbone or detector)."""
    spec = FinetuneSpec.model_validate(job.spec)
    with sessions() as session:
        dataset = session.get(Dataset, spec.dataset_id)
        weights = session.get(Weights, job.weights_id) if job.weights_id else None
    if dataset is None:
        raise JobFailed(f"dataset {spec.dataset_id} no longer exists")
    for label in ("train_ann", "val_ann", "train_images", "val_images"):
        if not Path(getattr(dataset, label)).exists():
            raise JobFailed(
                f"dataset {dataset.name!r} is gone: its {label} "
                f"{getattr(dataset, label)} does not exist"
            )
    weights_path = weights.path if weights else None
    weights_kind = weights.kind if weights else "backbone"
    user_checkpoint = spec.init.checkpoint if isinstance(spec.init, CheckpointInit) else None
    for path in filter(None, (user_checkpoint, weights_path)):
        try:
            check_user_checkpoint(path)
        except ValueError as exc:
            raise JobFailed(f"backbone init failed: {exc}") from None
    require_cuda_for_amp(spec.amp)
    return spec, dataset, weights_path, weights_kind


def run_finetune(claim: Claim, *, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Train a fine-tune job, then store its COCO evaluation and error analysis."""
    job = claim.job
    assert settings.artifact_root is not None
    spec, dataset, weights_path, weights_kind = _load_inputs(job, settings, sessions)
    paths = JobPaths.for_job(settings.artifact_root, job.id)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_finetune_config(
        spec,
        dataset=dataset,
        paths=paths,
        weights_path=weights_path,
        weights_kind=weights_kind,
    )
    apply_world(cfg, World.of(job), lr=spec.lr, batch_size=spec.batch_size, norm=spec.resolved_norm)
    save_config_and_record(
        cfg,
        paths=paths,
        claim=claim,
        sessions=sessions,
        settings=settings,
        train_ann=Path(dataset.train_ann),
        val_ann=Path(dataset.val_ann),
    )

    ended = train(
        cfg,
        claim=claim,
        sessions=sessions,
        settings=settings,
        config_path=paths.config,
        prepare="worker.finetune:prepare_registries",
        finish="worker.finetune:validate_at_end",
        context={"predictions": str(paths.predictions)},
    )
    if ended and ended.get("init_loaded"):
        # what a whole detector's weights gave the model, part by part, in the job's record
        with sessions() as session:
            record = {**(session.get(Job, job.id).record or {}), **ended}  # type: ignore[union-attr]
            job_service.save_record(
                session=session, job_id=job.id, record=record, token=claim.token
            )
    store_evaluation(job_id=job.id, predictions=paths.predictions, sessions=sessions)


def prepare_registries(_context: dict[str, Any]) -> None:
    """mmdet's modules, DetLab's val metric and detector-init hook, as every rank needs them."""
    from mmdet.utils import register_all_modules

    import worker.coco_metric  # noqa: F401 - registers the val metric the config names
    import worker.detector_init  # noqa: F401 - registers the hook a whole detector's init uses

    register_all_modules(init_default_scope=True)


def validate_at_end(runner: Any, hook: Any, context: dict[str, Any]) -> dict[str, Any] | None:
    """Validate the final model unless the last validation already scored it (rank 0 decides
    for every rank: validation is collective); what a whole detector's weights loaded, if the
    run started from them."""
    from mmengine.dist import broadcast_object_list

    decision = [hook.last_val_iter != runner.iter or not Path(context["predictions"]).is_file()]
    broadcast_object_list(decision, src=0)
    if decision[0]:
        runner.val()
    reports = [
        getattr(h, "report", None) for h in runner.hooks if type(h).__name__ == "DetectorInitHook"
    ]
    return {"init_loaded": reports[0]} if reports and reports[0] else None


def store_evaluation(
    *,
    job_id: int,
    predictions: Path,
    sessions: sessionmaker[Session],
    record_extra: dict[str, Any] | None = None,
) -> None:
    """Score the saved val predictions once (COCO metrics, error analysis, per-image rows) and
    store them as the job's evaluation, ``record_extra`` joining its record; predictions that
    cannot be scored fail the job."""
    with sessions() as session:
        try:
            analysis_service.evaluate_job(
                session=session,
                job_id=job_id,
                predictions_path=predictions,
                record_extra=record_extra,
            )
        except DomainError as exc:
            raise JobFailed(f"the val predictions could not be scored: {exc.message}") from None
