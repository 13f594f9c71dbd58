"""Turns a validated pretrain spec into an mmpretrain config assembled from its base configs."""

from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any

from backend.jobs.paths import JobPaths
from backend.jobs.spec import PretrainSpec
from backend.registry import BACKBONES, PRETRAIN_METHODS
from worker.atomic_checkpoints import apply_atomic_checkpoints, checkpoint_hook

__all__ = [
    "build_pretrain_config",
    "mmpretrain_config_dir",
    "pretrain_optim_wrapper",
    "register_algorithm",
]


def mmpretrain_config_dir() -> Path:
    """The configs shipped inside the installed mmpretrain package."""
    import mmpretrain

    return Path(mmpretrain.__file__).resolve().parent / ".mim" / "configs"


def register_algorithm(method: str) -> None:
    """Import the module that registers a method's own algorithm in mmpretrain, if it has one."""
    module = PRETRAIN_METHODS[method].algorithm_module
    if module:
        importlib.import_module(module)


def _load_base(method: str) -> Any:
    from mmengine.config import Config

    base_config = PRETRAIN_METHODS[method].base_config
    if base_config is None:
        raise ValueError(f"{method} is a box-domain method: mmpretrain does not run it")
    base = mmpretrain_config_dir() / base_config
    with tempfile.NamedTemporaryFile("w", suffix=".py") as handle:
        handle.write(f"_base_ = [{str(base)!r}]\n")
        handle.flush()
        return Config.fromfile(handle.name)


def _model(spec: PretrainSpec, base_model: Any) -> dict[str, Any]:
    method, backbone_entry = PRETRAIN_METHODS[spec.method], BACKBONES[spec.backbone]
    channels = backbone_entry.channels
    head = dict(
        type="ContrastiveHead", loss=dict(type="CrossEntropyLoss"), temperature=spec.temperature
    )
    common = dict(
        queue_len=spec.queue_length,
        feat_dim=spec.feature_dim,
        momentum=spec.momentum_coefficient,
        head=head,
    )
    backbone: dict[str, Any] = dict(
        type=backbone_entry.mmdet_type,  # mmpretrain names its ResNets as mmdet does
        **backbone_entry.arch,
        norm_cfg=dict(type="BN"),
        zero_init_residual=False,
    )
    if method.algorithm is not None:
        model: dict[str, Any] = dict(type=method.algorithm, backbone=backbone, **common)
        if method.all_stages:
            backbone["out_indices"] = (0, 1, 2, 3)
            model["stage_channels"] = channels
        return model
    model = base_model.to_dict()
    model.update(common, backbone=backbone)
    model["neck"].update(
        in_channels=channels[-1], hid_channels=max(channels[-1], 512), out_channels=spec.feature_dim
    )
    return model


def pretrain_optim_wrapper(spec: PretrainSpec) -> dict[str, Any]:
    """SGD (momentum 0.9) at the spec's lr and weight decay, in fp16 AMP when it asks."""
    optimizer = dict(type="SGD", lr=spec.lr, weight_decay=spec.weight_decay, momentum=0.9)
    wrapper: dict[str, Any] = dict(
        type="AmpOptimWrapper" if spec.amp else "OptimWrapper", optimizer=optimizer
    )
    if spec.amp:
        wrapper.update(dtype="float16", loss_scale="dynamic")
    return wrapper


def build_pretrain_config(spec: PretrainSpec, *, image_folder: str, paths: JobPaths) -> Any:
    """The mmengine Config of a self-supervised pretraining run on a folder of images."""
    cfg = _load_base(spec.method)
    cfg.model = _model(spec, cfg.model)
    module = PRETRAIN_METHODS[spec.method].algorithm_module
    if module:
        # the algorithm lives in this project; mmpretrain's tools/train.py imports it from here
        cfg.custom_imports = dict(imports=[module], allow_failed_imports=False)
    loader = cfg.train_dataloader
    loader.batch_size = spec.batch_size
    loader.num_workers = spec.num_workers
    loader.persistent_workers = spec.num_workers > 0
    loader.drop_last = True
    for step in cfg.view_pipeline:
        if step["type"] == "RandomResizedCrop":
            step["scale"] = spec.image_size
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="MultiView", num_views=2, transforms=[cfg.view_pipeline]),
        dict(type="PackInputs"),
    ]
    loader.dataset = dict(
        type="CustomDataset",
        data_root="",
        data_prefix=image_folder.rstrip("/") + "/",
        with_label=False,
        pipeline=pipeline,
    )
    if spec.by_epoch:
        total = spec.length
        cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=total)
    else:
        total = spec.length
        cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=total)
        loader.sampler = dict(type="InfiniteSampler", shuffle=True)
        cfg.log_processor = dict(window_size=10, by_epoch=False)
    cfg.param_scheduler = [
        dict(type="CosineAnnealingLR", T_max=total, by_epoch=spec.by_epoch, begin=0, end=total)
    ]
    cfg.optim_wrapper = pretrain_optim_wrapper(spec)
    interval = spec.checkpoint_interval or (1 if spec.by_epoch else max(1, total // 10))
    cfg.default_hooks.checkpoint = checkpoint_hook(interval=interval, by_epoch=spec.by_epoch)
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=10)
    cfg.randomness = dict(seed=spec.seed, deterministic=False)
    cfg.work_dir = str(paths.work_dir)
    cfg.pop("find_unused_parameters", None)
    apply_atomic_checkpoints(cfg)
    return cfg
