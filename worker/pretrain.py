"""Pretrain jobs: self-supervised training with mmpretrain, output as a weights entry."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from backend.artifacts_io import atomic_path, write_text_atomic
from backend.config import Settings
from backend.datasets.models import Dataset
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from backend.jobs.spec import PretrainSpec, WeightsInit
from backend.weights import service as weights_service
from backend.weights.models import Weights
from worker.distributed import World
from worker.mmdet_config import build_box_pretrain_config
from worker.mmpretrain_config import build_pretrain_config, register_algorithm
from worker.outcomes import JobFailed
from worker.training import apply_world, require_cuda_for_amp, save_config_and_record, train

__all__ = [
    "export_at_end",
    "export_backbone",
    "prepare_registries",
    "proposals_coco",
    "run_pretrain",
]

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


def proposals_coco(
    folder: str, names: list[str], proposals: dict[str, Any], *, with_masks: bool
) -> dict[str, Any]:
    """The images with their proposals as COCO boxes of one class, "object" (the rectangle
    as a polygon too, for a detector with a mask head); images without one are left out."""
    from PIL import Image

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for image_id, name in enumerate(sorted(names), start=1):
        boxes = proposals.get(name)
        if boxes is None or not len(boxes):
            continue
        with Image.open(Path(folder) / name) as image:
            width, height = image.size
        images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        for x1, y1, x2, y2 in boxes.tolist():
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": 1,
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "area": (x2 - x1) * (y2 - y1),
                "iscrowd": 0,
            }
            if with_masks:
                annotation["segmentation"] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            annotations.append(annotation)
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object"}],
    }


def _init_weights_path(spec: PretrainSpec, sessions: sessionmaker[Session]) -> str | None:
    if not isinstance(spec.init, WeightsInit):
        return None
    with sessions() as session:
        weights = session.get(Weights, spec.init.weights_id)
    if weights is None or not Path(weights.path).is_file():
        raise JobFailed(f"init weights {spec.init.weights_id} or their file no longer exist")
    return weights.path


def _box_domain_config(
    spec: PretrainSpec,
    *,
    folder: str,
    names: list[str],
    paths: JobPaths,
    settings: Settings,
    sessions: sessionmaker[Session],
) -> tuple[Any, dict[str, Any]]:
    """A box-domain pretraining's config: the images' proposals (computed once per image set
    and cached under the artifact root) written as its COCO boxes; what the record adds."""
    from backend import registry
    from worker.proposals import PROPOSALS_METHOD, folder_proposals

    assert settings.artifact_root is not None and spec.detector is not None
    found = folder_proposals(
        Path(folder),
        names,
        cache_dir=settings.artifact_root / "proposals",
        per_image=spec.proposals_per_image,
    )
    coco = proposals_coco(folder, names, found, with_masks=registry.DETECTORS[spec.detector].masks)
    if not coco["images"]:
        raise JobFailed(f"no proposal was found in any image of {folder}; nothing to pretrain on")
    ann = paths.root / "proposals.json"
    write_text_atomic(ann, json.dumps(coco))
    cfg = build_box_pretrain_config(
        spec,
        proposals_ann=str(ann),
        image_folder=folder,
        paths=paths,
        weights_path=_init_weights_path(spec, sessions),
    )
    boxes = len(coco["annotations"])
    record = {
        "proposals": {
            "method": PROPOSALS_METHOD,
            "per_image": spec.proposals_per_image,
            "images": len(coco["images"]),
            "boxes": boxes,
        }
    }
    return cfg, record


def run_pretrain(claim: Claim, *, settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Pretrain a backbone (image-domain methods) or a whole detector (box-domain ones) and
    register it in the weights registry."""
    job = claim.job
    assert settings.artifact_root is not None
    spec = PretrainSpec.model_validate(job.spec)
    require_cuda_for_amp(spec.amp)
    folder, names = _image_folder(spec, sessions)
    paths = JobPaths.for_job(settings.artifact_root, job.id)
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    if spec.box_domain:
        cfg, extra = _box_domain_config(
            spec, folder=folder, names=names, paths=paths, settings=settings, sessions=sessions
        )
    else:
        cfg, extra = build_pretrain_config(spec, image_folder=folder, paths=paths), {}
    apply_world(cfg, World.of(job), lr=spec.lr, batch_size=spec.batch_size, norm=None)
    save_config_and_record(
        cfg,
        paths=paths,
        claim=claim,
        sessions=sessions,
        settings=settings,
        train_image_names=names,
        extra=extra,
    )

    what = f"{spec.detector}-{spec.backbone}" if spec.box_domain else spec.backbone
    name = f"{spec.method}-{what}-job{job.id}"
    out = settings.artifact_root / "weights" / f"{name}.pth"
    meta = {
        "architecture": spec.backbone,
        "method": spec.method,
        "producing_job": job.id,
        "layout": "mmdet detector (backbone, neck, heads)" if spec.box_domain else "mmdet ResNet",
        "kind": "detector" if spec.box_domain else "backbone",
        "detector": spec.detector,
    }
    steps = "worker.aligndet" if spec.box_domain else "worker.pretrain"
    exported = train(
        cfg,
        claim=claim,
        sessions=sessions,
        settings=settings,
        config_path=paths.config,
        prepare=f"{steps}:prepare_registries",
        finish=f"{steps}:export_at_end",
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
                **({"neck": "fpn", **extra} if spec.box_domain else {}),
            },
            owner_id=job.owner_id,
            detector=spec.detector if spec.box_domain else None,
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
