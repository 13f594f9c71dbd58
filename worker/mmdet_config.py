"""Turns a validated fine-tune spec into an mmdet 3 config assembled from mmdet's base configs,
and the model of an evaluate job (one of ours, or a config mmdet ships) into a test config.

The result is dumped as one self-contained file that mmdet's own `tools/train.py` (or
`tools/test.py`) runs as it is; DetLab's progress hook is added to the runner, not to the config.
"""

from __future__ import annotations

import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.artifacts_io import write_text_atomic
from backend.datasets.service import masks_missing
from backend.jobs.paths import JobPaths
from backend.jobs.spec import (
    DEFAULT_FEATURE_CHANNELS,
    DEFAULT_WARMUP,
    CheckpointInit,
    FinetuneSpec,
    PretrainSpec,
    WeightsInit,
)
from backend.registry import BACKBONES, DETECTORS
from worker.atomic_checkpoints import apply_atomic_checkpoints, checkpoint_hook
from worker.mmpretrain_config import pretrain_optim_wrapper

__all__ = [
    "DetLabModel",
    "build_box_pretrain_config",
    "build_evaluate_config",
    "build_finetune_config",
    "mmdet_config_dir",
    "write_train_subset",
]


def mmdet_config_dir() -> Path:
    """The base configs shipped inside the installed mmdet package."""
    import mmdet

    return Path(mmdet.__file__).resolve().parent / ".mim" / "configs"


def _load_bases(detector: str, backbone: str) -> Any:
    from mmengine.config import Config

    # absolute paths, not 'mmdet::': mmengine resolves those through pkg_resources,
    # which the setuptools that torch 2.14 needs no longer ships
    base = mmdet_config_dir() / "_base_"
    entry = DETECTORS[detector]
    files = [
        base / "models" / entry.base_model_for(BACKBONES[backbone]),
        # a mask head trains on the annotations' masks: mmdet's instance pipelines load them
        base / "datasets" / ("coco_instance.py" if entry.masks else "coco_detection.py"),
        base / "schedules" / "schedule_1x.py",
        base / "default_runtime.py",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".py") as handle:
        handle.write(f"_base_ = {[str(f) for f in files]!r}\n")
        handle.flush()
        return Config.fromfile(handle.name)


def _init_cfg(spec: FinetuneSpec | PretrainSpec, weights_path: str | None) -> dict[str, Any] | None:
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


def _backbone(name: str, *, norm: str | None, init_cfg: dict[str, Any] | None) -> dict[str, Any]:
    """The backbone's config; ``norm``: the resolved norm (None for LayerNorm backbones)."""
    entry = BACKBONES[name]
    if not entry.has_batch_norm:  # Swin: official checkpoints need their keys converted
        return dict(
            type=entry.mmdet_type,
            **entry.arch,
            out_indices=(0, 1, 2, 3),
            convert_weights=init_cfg is not None,
            init_cfg=init_cfg,
        )
    return dict(
        type=entry.mmdet_type,
        **entry.arch,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1 if norm == "frozen_bn" else -1,
        **_batch_norm(norm),
        style="pytorch",
        init_cfg=init_cfg,
    )


def _batch_norm(norm: str | None) -> dict[str, Any]:
    frozen = norm == "frozen_bn"
    return dict(
        norm_cfg=dict(type="SyncBN" if norm == "syncbn" else "BN", requires_grad=not frozen),
        norm_eval=frozen,
    )


# the input normalisation of mmdet's FPN model files (ImageNet RGB statistics), which
# pytorch-style ResNet weights (torchvision, MoCo, DetLab's own) were trained with
_RGB_PREPROCESSOR = dict(
    type="DetDataPreprocessor",
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=32,
)


def _set_architecture(
    model: Any,
    *,
    detector: str,
    backbone: str,
    neck: str | None,
    norm: str | None,
    init_cfg: dict[str, Any] | None,
) -> None:
    """The backbone and neck of a model config loaded by `_load_bases`; in the C4 layout, the
    backbone's stages 1-3 and the RoI head's stage 4 (mmdet's shared head), no neck."""
    entry = BACKBONES[backbone]
    if not entry.c4:
        model.backbone = _backbone(backbone, norm=norm, init_cfg=init_cfg)
        model.neck = _neck(detector=detector, backbone=backbone, neck=neck or "fpn")
        return
    # mmdet's C4 file fixes the stages, strides and outputs; its caffe style, BGR input and MSRA
    # weights give way to DetLab's pytorch-style ResNets. The shared head loads the same file
    # as the backbone (its keys are the ResNet's layer4.*), as mmdet's own C4 configs do.
    frozen_stages = 1 if norm == "frozen_bn" else -1
    model.data_preprocessor = dict(_RGB_PREPROCESSOR)
    model.backbone.update(
        type=entry.mmdet_type,
        **entry.arch,
        frozen_stages=frozen_stages,
        **_batch_norm(norm),
        style="pytorch",
        init_cfg=init_cfg,
    )
    model.roi_head.shared_head.update(
        depth=entry.arch["depth"], style="pytorch", **_batch_norm(norm), init_cfg=init_cfg
    )


# the keys of a head's config that hold its width (DEFAULT_FEATURE_CHANNELS in mmdet's configs)
_CHANNEL_KEYS = ("in_channels", "feat_channels", "out_channels", "conv_out_channels")


def _neck(*, detector: str, backbone: str, neck: str) -> dict[str, Any]:
    return dict(
        type="FPN" if neck == "fpn" else "PAFPN",
        in_channels=list(BACKBONES[backbone].channels),
        out_channels=DEFAULT_FEATURE_CHANNELS,
        num_outs=5,
        **DETECTORS[detector].neck_overrides,
    )


def _set_feature_channels(model: Any, channels: int) -> None:
    """The neck's output width, and every head layer of the base config's 256 channels (the
    RPN's and RetinaNet's convolutions, the RoI extractors, the box and mask heads' inputs and
    convolutions) set to `channels`; fully connected widths (1024) stay."""
    model.neck.out_channels = channels

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in _CHANNEL_KEYS and value == DEFAULT_FEATURE_CHANNELS:
                    node[key] = channels
                else:
                    visit(value)

    for name, part in model.items():
        if name.endswith("head"):
            visit(part)


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
    _set_test_proposals(model, spec.test_proposals_per_image)


def _set_test_proposals(model: Any, proposals: int) -> None:
    """RPN proposals kept per image at test time (two-stage detectors)."""
    model.test_cfg.rpn.nms_pre = proposals
    model.test_cfg.rpn.max_per_img = proposals


def write_train_subset(ann_file: Path, out: Path, *, fraction: float, seed: int) -> Path:
    """A seeded random share of the train images (low-data studies), as a COCO file."""
    data = json.loads(ann_file.read_text(encoding="utf-8"))
    images = sorted(data["images"], key=lambda image: image["id"])
    keep = max(1, round(len(images) * fraction))
    chosen = {image["id"] for image in random.Random(seed).sample(images, keep)}
    data["images"] = [image for image in images if image["id"] in chosen]
    data["annotations"] = [ann for ann in data["annotations"] if ann["image_id"] in chosen]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(data))
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
    weights_kind: str = "backbone",
) -> Any:
    """The mmengine Config for a fine-tune job on a registered dataset; ``weights_kind``
    "detector": the weights are a whole detector's, loaded before the first step
    (worker/detector_init.py) instead of into the backbone alone."""
    cfg = _load_bases(spec.detector, spec.backbone)
    classes = tuple(c["name"] for c in dataset.stats["categories"])
    whole = weights_kind == "detector"
    if whole and weights_path is None:
        raise ValueError("detector weights need their file")

    _set_architecture(
        cfg.model,
        detector=spec.detector,
        backbone=spec.backbone,
        neck=spec.neck,
        norm=spec.resolved_norm,
        init_cfg=None if whole else _init_cfg(spec, weights_path),
    )
    _set_num_classes(cfg.model, spec.detector, len(classes))
    _set_sampling(cfg.model, spec)
    if spec.feature_channels is not None:
        _set_feature_channels(cfg.model, spec.feature_channels)

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
    imports = ["worker.coco_metric", *(["worker.detector_init"] if whole else [])]
    cfg.custom_imports = dict(imports=imports, allow_failed_imports=False)
    if whole:
        cfg.custom_hooks = [dict(type="DetectorInitHook", checkpoint=weights_path)]
    cfg.val_evaluator = dict(
        type="EngineCocoMetric",
        ann_file=dataset.val_ann,
        metric=list(DETECTORS[spec.detector].iou_types),
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
    if spec.grad_clip is not None:
        cfg.optim_wrapper["clip_grad"] = dict(max_norm=spec.grad_clip, norm_type=2)
    no_decay = BACKBONES[spec.backbone].no_weight_decay
    if no_decay:
        cfg.optim_wrapper["paramwise_cfg"] = dict(
            custom_keys={key: dict(decay_mult=0.0) for key in no_decay}
        )
    cfg.randomness = dict(seed=spec.seed, deterministic=False)
    cfg.work_dir = str(paths.work_dir)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    apply_atomic_checkpoints(cfg)
    return cfg


def build_box_pretrain_config(
    spec: PretrainSpec,
    *,
    proposals_ann: str,
    image_folder: str,
    paths: JobPaths,
    weights_path: str | None = None,
) -> Any:
    """The mmengine Config of a box-domain pretraining (worker/aligndet.py): the spec's
    detector with an FPN on its backbone, one class ("object"), trained on the images of
    ``image_folder`` with their unsupervised proposals (the COCO file ``proposals_ann``) as
    boxes; the backbone starts from the spec's init (``weights_path`` for a weights_id)."""
    assert spec.detector is not None  # a box-domain spec always names one
    cfg = _load_bases(spec.detector, spec.backbone)
    _set_architecture(
        cfg.model,
        detector=spec.detector,
        backbone=spec.backbone,
        neck="fpn",
        norm="bn",
        init_cfg=_init_cfg(spec, weights_path),
    )
    _set_num_classes(cfg.model, spec.detector, 1)
    detector = cfg.model.to_dict()
    preprocessor = detector.pop("data_preprocessor")
    cfg.model = dict(
        type="AlignDet",
        detector=detector,
        detector_name=spec.detector,
        feature_dim=spec.feature_dim,
        queue_length=spec.queue_length,
        temperature=spec.temperature,
        momentum=spec.momentum_coefficient,
        data_preprocessor=preprocessor,
    )
    _dataloader(
        cfg.train_dataloader,
        ann_file=proposals_ann,
        images=image_folder,
        classes=("object",),
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        scale=(spec.image_size, spec.image_size),
    )
    cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=True)
    if spec.by_epoch:
        cfg.train_dataloader.sampler = dict(type="DefaultSampler", shuffle=True)
    for unused in ("val_dataloader", "val_evaluator", "val_cfg"):
        cfg[unused] = None
    for unused in ("test_dataloader", "test_evaluator", "test_cfg"):
        cfg[unused] = None
    total = spec.length
    cfg.train_cfg = (
        dict(type="EpochBasedTrainLoop", max_epochs=total)
        if spec.by_epoch
        else dict(type="IterBasedTrainLoop", max_iters=total)
    )
    if not spec.by_epoch:
        cfg.log_processor = dict(type="LogProcessor", window_size=10, by_epoch=False)
    warmup = min(DEFAULT_WARMUP, max(1, total // 10)) if not spec.by_epoch else DEFAULT_WARMUP
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup),
        dict(type="CosineAnnealingLR", T_max=total, by_epoch=spec.by_epoch, begin=0, end=total),
    ]
    cfg.optim_wrapper = pretrain_optim_wrapper(spec)
    interval = spec.checkpoint_interval or (1 if spec.by_epoch else max(1, total // 10))
    cfg.default_hooks.checkpoint = checkpoint_hook(interval=interval, by_epoch=spec.by_epoch)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
    cfg.default_hooks.visualization = dict(type="DetVisualizationHook", draw=False)
    cfg.custom_imports = dict(imports=["worker.aligndet"], allow_failed_imports=False)
    cfg.randomness = dict(seed=spec.seed, deterministic=False)
    cfg.work_dir = str(paths.work_dir)
    apply_atomic_checkpoints(cfg)
    return cfg


@dataclass(frozen=True)
class DetLabModel:
    """One of DetLab's detector x backbone x neck models, as a checkpoint to score was built.

    ``neck``: None for a backbone in the C4 layout. ``norm``: the backbone's norm when trained
    (None: plain BN where it has batch norm; at test time every BN variant computes the same).
    ``test_proposals_per_image``: None keeps mmdet's base config (1000)."""

    detector: str
    backbone: str
    neck: str | None = "fpn"
    norm: str | None = None
    test_proposals_per_image: int | None = None
    feature_channels: int | None = None


def build_evaluate_config(
    model: DetLabModel | Path,
    *,
    dataset: Any,
    paths: JobPaths,
    classes: tuple[str, ...],
    batch_size: int,
    image_scale: tuple[int, int] | None,
    checkpoint: str,
) -> Any:
    """The mmengine Config that scores a checkpoint on a registered dataset's val split.

    ``model``: one of ours, or the file of a config the installed mmdet ships (never a user's
    file). ``classes``: the checkpoint's class names, in its label order; every head predicts
    that many. ``image_scale`` None keeps the config's own test Resize. ValueError when the
    config cannot take the dataset or the scale."""
    from mmengine.config import Config

    if isinstance(model, DetLabModel):
        cfg = _load_bases(model.detector, model.backbone)
        entry = BACKBONES[model.backbone]
        _set_architecture(
            cfg.model,
            detector=model.detector,
            backbone=model.backbone,
            neck=model.neck,
            norm=model.norm or ("bn" if entry.has_batch_norm else None),
            init_cfg=None,
        )
        _set_num_classes(cfg.model, model.detector, len(classes))
        if model.test_proposals_per_image is not None and DETECTORS[model.detector].two_stage:
            _set_test_proposals(cfg.model, model.test_proposals_per_image)
        if model.feature_channels is not None:
            _set_feature_channels(cfg.model, model.feature_channels)
    else:
        cfg = Config.fromfile(str(model))
        if not _set_every_num_classes(cfg.model, len(classes)):
            raise ValueError(f"the config {model.stem} has no head with num_classes to set")
    _test_split(
        cfg, dataset=dataset, classes=classes, batch_size=batch_size, image_scale=image_scale
    )
    # an mmdet config may import modules of its own (its projects): they stay
    imports = list((cfg.get("custom_imports") or {}).get("imports", []))
    cfg.custom_imports = dict(imports=[*imports, "worker.coco_metric"], allow_failed_imports=False)
    # a mask model is scored on masks too where the dataset has them (on a box-only one, boxes)
    has_masks = (
        DETECTORS[model.detector].masks
        if isinstance(model, DetLabModel)
        else bool((cfg.model.get("roi_head") or {}).get("mask_head"))
    ) and masks_missing(dataset.stats or {}) is None
    cfg.test_evaluator = dict(
        type="EngineCocoMetric",
        ann_file=dataset.val_ann,
        metric=["bbox", "segm"] if has_masks else ["bbox"],
        format_only=False,
        outfile_prefix=str(paths.predictions_prefix),
    )
    cfg.val_evaluator = cfg.test_evaluator
    cfg.load_from = checkpoint
    cfg.work_dir = str(paths.work_dir)
    return cfg


def _set_every_num_classes(node: Any, num_classes: int) -> bool:
    """Set num_classes in every head of a model config (the RPN's single 'object' class kept);
    whether any was found."""
    found = False
    if isinstance(node, dict):
        if "num_classes" in node and "RPN" not in str(node.get("type", "")):
            node["num_classes"] = num_classes
            found = True
        children = list(node.values())
    elif isinstance(node, list | tuple):
        children = list(node)
    else:
        return False
    for child in children:
        found = _set_every_num_classes(child, num_classes) or found
    return found


def _test_split(
    cfg: Any,
    *,
    dataset: Any,
    classes: tuple[str, ...],
    batch_size: int,
    image_scale: tuple[int, int] | None,
) -> None:
    """Point the test (and val) loader at the dataset's val split, resized to image_scale."""
    loader = cfg.get("test_dataloader")
    split = loader.get("dataset") if loader else None
    if not split or not split.get("pipeline"):
        raise ValueError("the config has no test_dataloader.dataset.pipeline")
    loader.batch_size = batch_size
    loader.num_workers = 0
    loader.persistent_workers = False
    split.data_root = ""
    split.ann_file = dataset.val_ann
    split.data_prefix = dict(img=dataset.val_images.rstrip("/") + "/")
    split.metainfo = dict(classes=classes)
    if image_scale is not None:
        resized = [
            step
            for step in split.pipeline
            if str(step.get("type", "")).endswith("Resize") and "scale" in step
        ]
        if not resized:
            raise ValueError(
                "image_scale: the config's test pipeline has no Resize step with a scale; "
                "leave image_scale unset to use its own"
            )
        for step in resized:
            step["scale"] = tuple(image_scale)
    cfg.val_dataloader = loader


def _schedule(cfg: Any, spec: FinetuneSpec) -> None:
    interval = spec.checkpoint_interval or spec.eval_interval
    assert interval is not None  # the spec fills eval_interval from the run's length
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
    # an epoch run's warm-up is fitted when the job is created (the dataset's size decides)
    warmup = DEFAULT_WARMUP if spec.warmup_iters is None else spec.warmup_iters
    if warmup:
        schedulers.append(
            dict(
                type="LinearLR",
                start_factor=spec.warmup_ratio,
                by_epoch=False,
                begin=0,
                end=warmup,
            )
        )
    if spec.lr_schedule == "step" and milestones:
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
    elif spec.lr_schedule == "cosine":
        schedulers.append(
            dict(
                type="CosineAnnealingLR",
                T_max=total,
                eta_min=0.0,
                begin=0,
                end=total,
                by_epoch=spec.by_epoch,
            )
        )
    cfg.param_scheduler = schedulers
    cfg.default_hooks.checkpoint = checkpoint_hook(interval=interval, by_epoch=spec.by_epoch)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
