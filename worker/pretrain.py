"""Pretrain jobs: self-supervised training with mmpretrain, output as a weights entry."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from backend.artifacts_io import atomic_path
from backend.config import Settings
from backend.datasets.models import Dataset
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from backend.jobs.spec import PretrainSpec
from backend.weights import service as weights_service
from worker.distributed import World
from worker.mmpretrain_config import build_pretrain_config, register_algorithm
from worker.outcomes import JobFailed
from worker.training import apply_world, require_cuda_for_amp, save_config_and_record, train

__all__ = ["run_pretrain", "export_at_end", "export_backbone", "prepare_registries"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif"}


def _image_folder(spec: PretrainSpec, sessions: sessionmaker[Session]) -> tuple[str, list[str]]:
    """The folder of images a pretrain job trains on, and their paths relative to it."""
    if spec.dataset_id is not None:
        with sessions() as session:
            dataset = session.get(Dataset, spec.dataset_id)
        if dataset is None:
            raise JobFailed(f"dataset {spec.dataset_id} no longer exists")
        folder = Path(dataset.train_images)
    else:
        folder = Path(spec.image_folder or "")
    if not folder.is_dir():
        raise JobFailed(f"the image folder {folder} is gone")
    names = [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
    ]
    if len(names) < spec.batch_size * spec.gpus:
        raise JobFailed(
            f"the image folder {folder} holds {len(names)} images, fewer than one batch "
            f"({spec.batch_size}) per process ({spec.gpus}); add images or lower batch_size"
        )
    return str(folder), names


def export_backbone(model: Any, out: Path, *, meta: dict[str, Any]) -> str:
    """Save the query backbone in mmdet's ResNet key layout; returns the file's sha256."""
    import torch

    module = getattr(model, "module", model)
    state = {
        key.removeprefix("backbone."): value.detach().cpu().clone()
        for key, value in module.state_dict().items()
        if key.startswith("backbone.")
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        torch.save({"state_dict": state, "meta": meta}, partial)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def run_pretrain(claim: Claim, *, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Pretrain a backbone and register it in the weights registry."""
    job = claim.job
    assert settings.artifact_root is not None
    spec = PretrainSpec.model_validate(job.spec)
    require_cuda_for_amp(spec.amp)
    folder, names = _image_folder(spec, sessions)
    paths = JobPaths.for_job(settings.artifact_root, job.id)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_pretrain_config(spec, image_folder=folder, paths=paths)
    apply_world(cfg, World.of(job), lr=spec.lr, batch_size=spec.batch_size, norm=None)
    save_config_and_record(
        cfg,
        paths=paths,
        claim=claim,
        sessions=sessions,
        settings=settings,
        train_image_names=names,
    )

    name = f"{spec.method}-{spec.backbone}-job{job.id}"
    out = settings.artifact_root / "weights" / f"{name}.pth"
    meta = {
        "architecture": spec.backbone,
        "method": spec.method,
        "producing_job": job.id,
        "layout": "mmdet ResNet",
    }
    exported = train(
        cfg,
        claim=claim,
        sessions=sessions,
        settings=settings,
        config_path=paths.config,
        prepare="worker.pretrain:prepare_registries",
        finish="worker.pretrain:export_at_end",
        context={"method": spec.method, "out": str(out), "meta": meta},
    )
    sha256 = exported["sha256"]
    with sessions() as session:
        weights_service.register_produced(
            session=session,
            name=name,
            architecture=spec.backbone,
            method=spec.method,
            path=out,
            sha256=sha256,
            job_id=job.id,
            report={
                "iterations": exported["iterations"],
                "source_format": "detlab pretrain job",
            },
            owner_id=job.owner_id,
        )


def prepare_registries(context: dict[str, Any]) -> None:
    """mmpretrain's modules and the job's method, as every rank needs them."""
    from mmpretrain.utils import register_all_modules

    register_algorithm(context["method"])
    register_all_modules(init_default_scope=True)


def export_at_end(runner: Any, _hook: Any, context: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0 exports the trained backbone (export_backbone); its sha256 and the iterations."""
    from mmengine.dist import get_rank

    if get_rank() != 0:
        return None
    sha256 = export_backbone(runner.model, Path(context["out"]), meta=context["meta"])
    return {"sha256": sha256, "iterations": runner.iter}
