"""Turns a validated fine-tune spec into an mmdet 3 config assembled from mmdet's base configs.

The result is dumped as one self-contained file that mmdet's own `tools/train.py`
runs as it is; DetLab's progress hook is added to the runner, not to the config.
"""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path
from typing import Any

from backend.jobs.spec import CheckpointInit, FinetuneSpec, WeightsInit
from backend.registry import BACKBONES, DETECTORS
from worker.paths import JobPaths

__all__ = ["build_finetune_config", "mmdet_config_dir", "write_train_subset"]


def mmdet_config_dir() -> Path:
    """The base configs shipped inside the installed mmdet package."""
    import mmdet

    return Path(mmdet.__file__).resolve().parent / ".mim" / "configs"


def _load_bases(detector: str) -> Any:
    from mmengine.config import Config

    # absolute paths, not 'mmdet::': mmengine resolves those through pkg_resources,
    # which the setuptools that torch 2.14 needs no longer ships
    base = mmdet_config_dir() / "_base_"
    files = [
        base / "models" / DETECTORS[detector].base_model,
        base / "datasets" / "coco_detection.py",
        base / "schedules" / "schedule_1x.py",
        base / "default_runtime.py",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".py") as handle:
        handle.write(f"_base_ = {[str(f) for f in files]!r}\n")
        handle.flush()
        return Config.fromfile(handle.name)


def _init_cfg(spec: FinetuneSpec, weights_path: str | None) -> dict[str, Any] | None:
    if spec.init == "scratch":
        return None
    if spec.init == "imagenet":
        return dict(type="Pretrained", checkpoint=BACKBONES[spec.backbone].imagenet)
    if isinstance(spec.init, CheckpointInit):
        init: dict[str, Any] = dict(type="Pretrained", checkpoint=spec.init.checkpoint)
        if spec.init.prefix:
            init["prefix"] = spec.init.prefix.rstrip(".")
        return init
    if isinstance(spec.init, WeightsInit):
        if weights_path is None:
            raise ValueError(f"weights {spec.init.weights_id} has no file path")
        return dict(type="Pretrained", checkpoint=weights_path)
    raise ValueError(f"unknown init {spec.init!r}")


def _backbone(spec: FinetuneSpec, weights_path: str | None) -> dict[str, Any]:
    entry = BACKBONES[spec.backbone]
    init_cfg = _init_cfg(spec, weights_path)
    if not entry.has_batch_norm:  # Swin: official checkpoints need their keys converted
        return dict(
            type=entry.mmdet_type,
            **entry.arch,
            out_indices=(0, 1, 2, 3),
            convert_weights=init_cfg is not None,
            init_cfg=init_cfg,
        )
    norm = spec.resolved_norm
    frozen = norm == "frozen_bn"
    return dict(
        type=entry.mmdet_type,
        **entry.arch,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1 if frozen else -1,
        norm_cfg=dict(type="SyncBN" if norm == "syncbn" else "BN", requires_grad=not frozen),
        norm_eval=frozen,
        style="pytorch",
        init_cfg=init_cfg,
    )


def _neck(spec: FinetuneSpec) -> dict[str, Any]:
    return dict(
        type="FPN" if spec.neck == "fpn" else "PAFPN",
        in_channels=list(BACKBONES[spec.backbone].channels),
        out_channels=256,
        num_outs=5,
        **DETECTORS[spec.detector].neck_overrides,
    )


def _set_num_classes(model: Any, detector: str, num_classes: int) -> None:
    for path in DETECTORS[detector].class_heads:
        head = model
        for attribute in path.split("."):
            head = head[attribute]
        for stage in head if isinstance(head, list) else [head]:
            stage.num_classes = num_classes


def _set_sampling(model: Any, spec: FinetuneSpec) -> None:
    if not DETECTORS[spec.detector].two_stage:
        return
    rcnn = model.train_cfg.rcnn
    for stage in rcnn if isinstance(rcnn, list) else [rcnn]:
        stage.sampler.num = spec.roi_samples_per_image
    model.test_cfg.rpn.nms_pre = spec.test_proposals_per_image
    model.test_cfg.rpn.max_per_img = spec.test_proposals_per_image


def write_train_subset(ann_file: Path, out: Path, *, fraction: float, seed: int) -> Path:
    """A seeded random share of the train images (low-data studies), as a COCO file."""
    data = json.loads(ann_file.read_text(encoding="utf-8"))
    images = sorted(data["images"], key=lambda image: image["id"])
    keep = max(1, round(len(images) * fraction))
    chosen = {image["id"] for image in random.Random(seed).sample(images, keep)}
    data["images"] = [image for image in images if image["id"] in chosen]
    data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data), encoding="utf-8")
    return out


def _dataloader(
    cfg_loader: Any,
    *,
    ann_file: str,
    images: str,
    classes: tuple[str, ...],
    batch_size: int,
    num_workers: int,
    scale: tuple[int, int],
) -> None:
    cfg_loader.batch_size = batch_size
    cfg_loader.num_workers = num_workers
    cfg_loader.persistent_workers = num_workers > 0
    dataset = cfg_loader.dataset
    dataset.data_root = ""
    dataset.ann_file = ann_file
    dataset.data_prefix = dict(img=images.rstrip("/") + "/")
    dataset.metainfo = dict(classes=classes)
    for step in dataset.pipeline:
        if step["type"] == "Resize":
            step["scale"] = scale


def build_finetune_config(
    spec: FinetuneSpec,
    *,
    dataset: Any,
    paths: JobPaths,
    weights_path: str | None = None,
) -> Any:
    """The mmengine Config for a fine-tune job on a registered dataset."""
    cfg = _load_bases(spec.detector)
    classes = tuple(c["name"] for c in dataset.stats["categories"])

    cfg.model.backbone = _backbone(spec, weights_path)
    cfg.model.neck = _neck(spec)
    _set_num_classes(cfg.model, spec.detector, len(classes))
    _set_sampling(cfg.model, spec)

    train_ann = dataset.train_ann
    if spec.data_fraction < 1.0:
        train_ann = str(
            write_train_subset(
                Path(dataset.train_ann),
                paths.train_subset,
                fraction=spec.data_fraction,
                seed=spec.seed,
            )
        )
    _dataloader(
        cfg.train_dataloader,
        ann_file=train_ann,
        images=dataset.train_images,
        classes=classes,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        scale=spec.image_scale,
    )
    _dataloader(
        cfg.val_dataloader,
        ann_file=dataset.val_ann,
        images=dataset.val_images,
        classes=classes,
        batch_size=1,
        num_workers=min(spec.num_workers, 2),
        scale=spec.image_scale,
    )
    cfg.test_dataloader = cfg.val_dataloader
    # mmdet's CocoMetric, scored by our engine (worker/coco_metric.py): same files and keys
    cfg.custom_imports = dict(imports=["worker.coco_metric"], allow_failed_imports=False)
    cfg.val_evaluator = dict(
        type="EngineCocoMetric",
        ann_file=dataset.val_ann,
        metric="bbox",
        format_only=False,
        outfile_prefix=str(paths.predictions_prefix),
    )
    cfg.test_evaluator = cfg.val_evaluator

    _schedule(cfg, spec)
    optimizer: dict[str, Any] = (
        dict(type="SGD", lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
        if spec.optimizer == "sgd"
        else dict(type="AdamW", lr=spec.lr, betas=(0.9, 0.999), weight_decay=spec.weight_decay)
    )
    cfg.optim_wrapper = dict(
        type="AmpOptimWrapper" if spec.amp else "OptimWrapper", optimizer=optimizer
    )
    if spec.amp:
        cfg.optim_wrapper.update(dtype="float16", loss_scale="dynamic")
    no_decay = BACKBONES[spec.backbone].no_weight_decay
    if no_decay:
        cfg.optim_wrapper["paramwise_cfg"] = dict(
            custom_keys={key: dict(decay_mult=0.0) for key in no_decay}
        )
    cfg.randomness = dict(seed=spec.seed, deterministic=False)
    cfg.work_dir = str(paths.work_dir)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    return cfg


def _schedule(cfg: Any, spec: FinetuneSpec) -> None:
    interval = spec.checkpoint_interval or spec.eval_interval
    if spec.by_epoch:
        total = spec.length
        cfg.train_cfg = dict(
            type="EpochBasedTrainLoop", max_epochs=total, val_interval=spec.eval_interval
        )
        # mmdet's 1x schedule steps at epochs 8 and 11 of 12; scale that to the run
        milestones = sorted(
            {m for m in (round(total * 8 / 12), round(total * 11 / 12)) if 0 < m < total}
        )
    else:
        total = spec.length
        cfg.train_cfg = dict(
            type="IterBasedTrainLoop", max_iters=total, val_interval=spec.eval_interval
        )
        cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=True)
        cfg.log_processor = dict(type="LogProcessor", window_size=50, by_epoch=False)
        milestones = sorted(
            {m for m in (round(total * 8 / 12), round(total * 11 / 12)) if 0 < m < total}
        )
    schedulers: list[dict[str, Any]] = []
    if spec.warmup_iters:
        schedulers.append(
            dict(
                type="LinearLR",
                start_factor=spec.warmup_ratio,
                by_epoch=False,
                begin=0,
                end=spec.warmup_iters,
            )
        )
    if milestones:
        schedulers.append(
            dict(
                type="MultiStepLR",
                begin=0,
                end=total,
                by_epoch=spec.by_epoch,
                milestones=milestones,
                gamma=0.1,
            )
        )
    cfg.param_scheduler = schedulers
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook",
        interval=interval,
        by_epoch=spec.by_epoch,
        max_keep_ckpts=2,
        save_last=True,
    )
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
