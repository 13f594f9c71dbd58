"""Every registry combination turns into a config that mmdet (or mmpretrain) accepts and builds.

Models are built on torch's meta device: every module and shape is constructed, no memory is
allocated and no weights are loaded, so even Swin-L and ResNeXt-101 cost little on a CPU.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import factories
import pytest
import torch

from backend.jobs.paths import JobPaths
from backend.jobs.spec import DEFAULT_FEATURE_CHANNELS, FinetuneSpec, PretrainSpec, accepted_values
from backend.registry import (
    BACKBONES,
    DETECTORS,
    PRETRAIN_METHODS,
    c4_detectors,
    pretrainable_backbones,
)
from worker.mmdet_config import build_finetune_config
from worker.mmpretrain_config import build_pretrain_config, register_algorithm

CLASSES = ("circle", "square", "triangle")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The fields of a registered dataset that the config builder reads."""
    return factories.config_dataset(tmp_path_factory.mktemp("coco"), CLASSES)


# Swin computes its drop-path schedule with Tensor.item(), which the meta device refuses, so
# Swin-T is built on the CPU (28M parameters); Swin-L (197M) would take seconds per build, so
# its arguments are checked against SwinTransformer's signature instead. The other large
# backbones are built whole with FPN; with PAFPN, which takes the same arguments, the
# backbone and neck are checked against their signatures (the fast tier stays under a minute).
ON_CPU = {"swin_t"}
SIGNATURE_ONLY = {"swin_l"}
SMALL = {"resnet18", "swin_t"}


def _check_signatures(cfg) -> None:
    from mmdet.registry import MODELS

    for part in (cfg.model.backbone, cfg.model.neck):
        arguments = {k: v for k, v in part.items() if k != "type"}
        inspect.signature(MODELS.get(part.type)).bind(**arguments)


@functools.cache
def _register_mmdet() -> None:
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)  # once: it costs most of a second


def _build_detector(cfg, backbone: str, neck: str = "fpn") -> torch.nn.Module | None:
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    _register_mmdet()
    with DefaultScope.overwrite_default_scope("mmdet"):
        if backbone in SIGNATURE_ONLY or (neck == "pafpn" and backbone not in SMALL):
            _check_signatures(cfg)
            return None
        with torch.device("cpu" if backbone in ON_CPU else "meta"):
            return MODELS.build(cfg.model)


def _class_heads(model: torch.nn.Module, detector: str) -> list[torch.nn.Module]:
    """The heads that classify objects (cascade: one per stage), RPN left out."""
    if not DETECTORS[detector].two_stage:
        return [model.bbox_head]
    heads = model.roi_head.bbox_head
    return list(heads) if isinstance(heads, torch.nn.ModuleList) else [heads]


OPTIONS = accepted_values()


def _architectures() -> list[tuple[str, str, str | None]]:
    """Every detector x backbone x neck the spec accepts: a backbone in the C4 layout has no
    neck and goes with the detectors that have a C4 model (the others are refused, test_c4)."""
    return [
        (detector, backbone, neck)
        for detector, backbone in itertools.product(DETECTORS, BACKBONES)
        for neck in ([None] if BACKBONES[backbone].c4 else OPTIONS["neck"])
        if not BACKBONES[backbone].c4 or detector in c4_detectors()
    ]


@pytest.mark.parametrize(("detector", "backbone", "neck"), _architectures())
def test_every_detector_backbone_and_neck_builds_in_mmdet(
    detector, backbone, neck, dataset, tmp_path
):
    spec = FinetuneSpec(
        dataset_id=1,
        detector=detector,
        backbone=backbone,
        neck=neck,
        init="imagenet",
        iterations=10,
    )
    cfg = build_finetune_config(spec, dataset=dataset, paths=JobPaths(tmp_path))
    reread = cfg
    if neck != "pafpn":
        # the saved file is what users re-run with mmdet's tools: it must read back the same
        # (once per detector and backbone: the dump's formatting costs a third of a second)
        cfg.dump(str(tmp_path / "config.py"))
        from mmengine.config import Config

        reread = Config.fromfile(str(tmp_path / "config.py"))
    assert reread.model.backbone.type == BACKBONES[backbone].mmdet_type

    model = _build_detector(reread, backbone, neck)
    if model is None:
        return
    assert type(model.backbone).__name__ == BACKBONES[backbone].mmdet_type
    if neck is None:  # C4: stage 4 is the RoI head's shared layer, fed by stage 3
        assert not model.with_neck and model.backbone.out_indices == (2,)
        assert type(model.roi_head.shared_head).__name__ == "ResLayer"
    else:
        assert type(model.neck).__name__ == {"fpn": "FPN", "pafpn": "PAFPN"}[neck]
        assert list(model.neck.in_channels) == list(BACKBONES[backbone].channels)
    # every classification head predicts the dataset's classes
    heads = _class_heads(model, detector)
    assert [h.num_classes for h in heads] == [len(CLASSES)] * len(heads)
    assert len(heads) == (3 if detector == "cascade_rcnn" else 1)


@pytest.mark.parametrize(
    ("optimizer", "backbone"), list(itertools.product(OPTIONS["optimizer"], ("resnet18", "swin_t")))
)
def test_every_optimizer_builds_in_mmengine(optimizer, backbone, dataset, tmp_path):
    from mmengine.optim import build_optim_wrapper

    spec = FinetuneSpec(dataset_id=1, backbone=backbone, optimizer=optimizer, iterations=10)
    cfg = build_finetune_config(spec, dataset=dataset, paths=JobPaths(tmp_path))
    model = _build_detector(cfg, backbone)
    if backbone == "resnet18":  # the optimizer needs real parameters
        model = model.to_empty(device="cpu")
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(wrapper.optimizer).__name__ == {"sgd": "SGD", "adamw": "AdamW"}[optimizer]
    no_decay = BACKBONES[backbone].no_weight_decay
    decays = {group["weight_decay"] for group in wrapper.optimizer.param_groups}
    # Swin's recipe: norms and position tables train without weight decay
    assert decays == ({0.0, spec.weight_decay} if no_decay else {spec.weight_decay})


@pytest.mark.parametrize(
    ("method", "backbone"),
    list(
        itertools.product(
            [n for n, m in PRETRAIN_METHODS.items() if not m.box_domain], pretrainable_backbones()
        )
    ),
)
def test_every_pretraining_method_and_backbone_builds_in_mmpretrain(method, backbone, tmp_path):
    """Built on the CPU (mmpretrain's ResNet also calls Tensor.item()); ResNet-18 models whole,
    larger backbones by their arguments against the class signature."""
    from mmpretrain.registry import MODELS
    from mmpretrain.utils import register_all_modules

    spec = PretrainSpec(
        kind="pretrain",
        method=method,
        backbone=backbone,
        image_folder=str(tmp_path),
        iterations=10,
        batch_size=4,
        queue_length=16,
    )
    cfg = build_pretrain_config(spec, image_folder=str(tmp_path), paths=JobPaths(tmp_path))
    entry = PRETRAIN_METHODS[method]
    if entry.algorithm_module:
        # the algorithm's module, and the atomic checkpoint writer every training config names
        assert cfg.custom_imports["imports"] == [
            entry.algorithm_module,
            "worker.atomic_checkpoints",
        ]
    register_algorithm(method)
    register_all_modules(init_default_scope=True)
    algorithm = MODELS.get(cfg.model["type"])
    assert algorithm.__name__ == (entry.algorithm or cfg.model["type"])
    if backbone != "resnet18":
        arguments = {k: v for k, v in cfg.model["backbone"].items() if k != "type"}
        inspect.signature(MODELS.get(cfg.model["backbone"]["type"])).bind(**arguments)
        return
    model = MODELS.build(cfg.model)
    assert model.backbone.depth == BACKBONES[backbone].arch["depth"]


def test_options_are_the_registry():
    options = accepted_values()
    assert options["detector"] == list(DETECTORS)
    assert options["backbone"] == list(BACKBONES)
    assert options["method"] == list(PRETRAIN_METHODS)
    assert options["pretrain_backbone"] == list(pretrainable_backbones())


def test_a_name_outside_the_registry_is_refused_naming_the_accepted_ones():
    with pytest.raises(ValueError) as raised:
        FinetuneSpec(dataset_id=1, detector="yolo", iterations=1)
    message = str(raised.value)
    assert all(repr(name) in message for name in DETECTORS)


def test_paths_are_under_the_job_folder(tmp_path: Path):
    paths = JobPaths.for_job(tmp_path, 7)
    assert paths.config == tmp_path / "jobs" / "7" / "config.py"
    assert paths.predictions.name == "predictions.bbox.json"


@pytest.mark.parametrize("schedule", ["step", "cosine", "constant"])
def test_the_lr_schedule_and_gradient_clipping_reach_mmengine(schedule, dataset, tmp_path):
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import PARAM_SCHEDULERS

    spec = FinetuneSpec(
        dataset_id=1,
        backbone="resnet18",
        iterations=120,
        warmup_iters=20,
        lr=0.04,
        lr_schedule=schedule,
        grad_clip=10,
    )
    cfg = build_finetune_config(spec, dataset=dataset, paths=JobPaths(tmp_path))
    model = _build_detector(cfg, "resnet18").to_empty(device="cpu")
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert wrapper.clip_grad_kwargs == {"max_norm": 10, "norm_type": 2}
    schedulers = [
        PARAM_SCHEDULERS.build({**step, "optimizer": wrapper.optimizer})
        for step in cfg.param_scheduler
    ]
    lrs = []
    for _ in range(120):
        lrs.append(wrapper.get_lr()["lr"][0])
        for scheduler in schedulers:
            scheduler.step()
    # warm-up from 0.001 x lr; the cosine decays from the start, under the warm-up too
    assert lrs[0] < 0.04 * 0.01 and 0.9 * 0.04 < max(lrs) <= 0.04 * 1.0001
    late = lrs[110]
    expected = {"step": 0.04 * 0.01, "cosine": None, "constant": 0.04}[schedule]
    if expected is None:  # a cosine decays smoothly toward zero by the end
        assert 0 < late < 0.04 * 0.05 and lrs[60] < 0.04 * 0.75
    else:
        assert late == pytest.approx(expected, rel=0.01)


def _widths(model: Any) -> dict[str, int]:
    """Every channel count the neck and heads are configured with, by its path."""
    found: dict[str, int] = {}

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key.endswith("channels") and isinstance(value, int):
                    found[f"{path}.{key}"] = value
                visit(value, f"{path}.{key}")
        elif isinstance(node, list):
            for k, item in enumerate(node):
                visit(item, f"{path}[{k}]")

    visit({k: v for k, v in model.items() if k == "neck" or k.endswith("head")}, "model")
    return found


def _convs_outside_backbone(model: torch.nn.Module) -> dict[str, torch.nn.Conv2d]:
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Conv2d) and not name.startswith("backbone.")
    }


@pytest.mark.parametrize("detector", list(DETECTORS))
def test_feature_channels_narrow_the_neck_and_every_head_and_the_model_still_runs(
    detector, dataset, tmp_path
):
    from mmdet.structures import DetDataSample

    from worker.mmdet_config import DetLabModel, build_evaluate_config

    spec = FinetuneSpec(
        dataset_id=1, detector=detector, backbone="resnet18", iterations=10, feature_channels=48
    )
    cfg = build_finetune_config(spec, dataset=dataset, paths=JobPaths(tmp_path))
    _register_mmdet()
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    with DefaultScope.overwrite_default_scope("mmdet"):
        model = MODELS.build(cfg.model).eval()
    convs = _convs_outside_backbone(model)
    # no conv after the backbone keeps mmdet's width; every output of the neck has the new one
    assert [n for n, c in convs.items() if DEFAULT_FEATURE_CHANNELS == c.out_channels] == []
    assert {c.out_channels for n, c in convs.items() if n.startswith("neck.fpn_convs")} == {48}
    # the layers agree with each other: a forward pass through neck and heads runs
    sample = DetDataSample(
        metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0))
    )
    with torch.no_grad():
        outputs = model(torch.rand(1, 3, 64, 64), [sample], mode="tensor")
    assert outputs

    # a model scored later (its source job's spec) is rebuilt as narrow
    evaluate = build_evaluate_config(
        DetLabModel(detector=detector, backbone="resnet18", feature_channels=48),
        dataset=dataset,
        paths=JobPaths(tmp_path / "evaluate"),
        classes=CLASSES,
        batch_size=1,
        image_scale=(64, 64),
        checkpoint=str(tmp_path / "model.pth"),
    )
    assert _widths(evaluate.model) == _widths(cfg.model)
    assert 48 in _widths(evaluate.model).values()


def test_feature_channels_are_refused_without_a_neck():
    c4 = next(name for name, entry in BACKBONES.items() if entry.c4)
    with pytest.raises(ValueError, match="feature_channels 64 applies to models with a neck"):
        FinetuneSpec(
            dataset_id=1, detector="faster_rcnn", backbone=c4, iterations=10, feature_channels=64
        )


@pytest.mark.parametrize("detector", list(DETECTORS))
def test_a_stored_spec_of_every_detector_reads_back_as_the_worker_reads_it(detector):
    # the API stores every field (defaults too); the worker validates that dict again
    spec = FinetuneSpec(dataset_id=1, detector=detector, backbone="resnet18", iterations=10)
    stored = spec.model_dump(mode="json")
    assert "roi_samples_per_image" in stored
    assert FinetuneSpec.model_validate(stored) == spec
