"""The plug-in points of a run: detectors, backbones and pretraining methods, one entry each.

Everything that offers or uses these choices derives from the tables here: the job spec's
accepted values and `GET /jobs/options`, the worker's mmdet and mmpretrain configs, and the
weights importer's architectures. Adding a detector, a backbone or a pretraining method is
one entry below (plus its test); nothing else restates the names.
"""

from __future__ import annotations

import difflib
import importlib.util
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "BACKBONES",
    "BOX_PRETRAINABLE_DETECTORS",
    "DETECTORS",
    "PRETRAIN_METHODS",
    "Backbone",
    "Detector",
    "PretrainMethod",
    "c4_backbones",
    "c4_detectors",
    "mask_detectors",
    "importable_architectures",
    "mmdet_config_file",
    "mmdet_configs_root",
    "pretrainable_backbones",
    "similar_mmdet_configs",
]


@dataclass(frozen=True)
class Detector:
    """An mmdet detector, built from one of mmdet's own `_base_/models` configs."""

    name: str
    base_model: str  # file under mmdet's configs/_base_/models
    # R-CNN style: has RoI heads, RoI sampling and RPN proposals
    two_stage: bool
    # attribute paths of the heads whose num_classes follows the dataset; a path that leads
    # to a list (cascade stages) sets every element
    class_heads: tuple[str, ...]
    # neck settings this detector needs beyond in/out channels (e.g. RetinaNet's P3-P7)
    neck_overrides: dict[str, Any] = field(default_factory=dict)
    # mmdet's model file for a C4 backbone (no neck; RPN and RoI head on stage 3, stage 4 run
    # per RoI as the head's shared layer); None: the detector takes no C4 backbone
    c4_base_model: str | None = None
    # has a mask head: trains on instance masks (datasets with a segmentation on every box)
    # and is scored on masks (segm) beside boxes
    masks: bool = False

    @property
    def iou_types(self) -> tuple[str, ...]:
        """What its predictions are scored on: COCO's bbox, and segm for a mask head."""
        return ("bbox", "segm") if self.masks else ("bbox",)

    def base_model_for(self, backbone: Backbone) -> str:
        """The `_base_/models` file this detector is built from with that backbone."""
        if backbone.c4:
            if self.c4_base_model is None:
                raise ValueError(f"{self.name} takes no C4 backbone")
            return self.c4_base_model
        return self.base_model


@dataclass(frozen=True)
class Backbone:
    """A backbone as mmdet builds it, with its ImageNet weights and its key layout."""

    name: str
    mmdet_type: str  # mmdet MODELS type
    arch: dict[str, Any]  # keyword arguments that fix the architecture
    channels: tuple[int, int, int, int]  # output channels of the four stages
    imagenet: str  # checkpoint of the "imagenet" init
    # "resnet": mmdet's ResNet key layout (conv1, bn1, layer1..4), which the weights importer
    # converts MoCo/OpenSelfSup/torchvision/detectron2 files into; None: no import
    key_layout: str | None = None
    # mmpretrain can pretrain it (its ResNet with the same depth)
    pretrainable: bool = False
    # parameter name parts trained without weight decay (mmengine paramwise custom_keys)
    no_weight_decay: tuple[str, ...] = ()
    # the C4 layout: stages 1-3 in the backbone, stage 4 in the RoI head, no neck (a detector
    # with a c4_base_model only). Its weights are the whole ResNet's, in the same key layout.
    c4: bool = False

    @property
    def has_batch_norm(self) -> bool:
        """ResNet-family backbones take a norm setting; Swin uses LayerNorm."""
        return self.key_layout == "resnet"


@dataclass(frozen=True)
class PretrainMethod:
    """A self-supervised method: image-domain ones pretrain a backbone as mmpretrain runs
    them; box-domain ones (AlignDet) pretrain a whole mmdet detector on unlabelled images."""

    name: str
    # mmpretrain config the recipe starts from (views, augmentations, schedule); None for a
    # box-domain method, whose recipe is DetLab's own (worker/aligndet.py)
    base_config: str | None
    # an mmpretrain MODELS type that replaces the base config's algorithm; None keeps it
    algorithm: str | None = None
    # the module that registers `algorithm` in mmpretrain's registry; the worker imports it
    # and the saved config names it in custom_imports, so mmpretrain's tools can run it too
    algorithm_module: str | None = None
    # the algorithm reads every backbone stage (given their channels) instead of a neck on
    # the last stage
    all_stages: bool = False
    # pretrains a whole detector (backbone, neck and heads) on unsupervised box proposals;
    # its output is weights of kind "detector"
    box_domain: bool = False


def _entries(*items: Any) -> dict[str, Any]:
    return {item.name: item for item in items}


DETECTORS: dict[str, Detector] = _entries(
    Detector(
        "faster_rcnn",
        base_model="faster-rcnn_r50_fpn.py",
        two_stage=True,
        class_heads=("roi_head.bbox_head",),
        c4_base_model="faster-rcnn_r50-caffe-c4.py",
    ),
    Detector(
        "mask_rcnn",
        base_model="mask-rcnn_r50_fpn.py",
        two_stage=True,
        class_heads=("roi_head.bbox_head", "roi_head.mask_head"),
        c4_base_model="mask-rcnn_r50-caffe-c4.py",
        masks=True,
    ),
    Detector(
        "cascade_rcnn",
        base_model="cascade-rcnn_r50_fpn.py",
        two_stage=True,
        class_heads=("roi_head.bbox_head",),
    ),
    Detector(
        "retinanet",
        base_model="retinanet_r50_fpn.py",
        two_stage=False,
        class_heads=("bbox_head",),
        neck_overrides={"start_level": 1, "add_extra_convs": "on_input"},
    ),
)

_SWIN_RELEASES = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
_SWIN_COMMON = {
    "mlp_ratio": 4,
    "qkv_bias": True,
    "qk_scale": None,
    "drop_rate": 0.0,
    "attn_drop_rate": 0.0,
    "patch_norm": True,
    "with_cp": False,
}
_SWIN_NO_DECAY = ("absolute_pos_embed", "relative_position_bias_table", "norm")
_RESNET_CHANNELS = (256, 512, 1024, 2048)

BACKBONES: dict[str, Backbone] = _entries(
    Backbone(
        "resnet18",
        mmdet_type="ResNet",
        arch={"depth": 18},
        channels=(64, 128, 256, 512),
        imagenet="torchvision://resnet18",
        key_layout="resnet",
        pretrainable=True,
    ),
    Backbone(
        "resnet50",
        mmdet_type="ResNet",
        arch={"depth": 50},
        channels=_RESNET_CHANNELS,
        imagenet="torchvision://resnet50",
        key_layout="resnet",
        pretrainable=True,
    ),
    # ResNet-50 in the C4 layout of the MoCo/DetCo detection benchmarks. mmdet's C4 files are
    # caffe-style (stride in the 1x1 conv, BGR input) for their MSRA weights; DetLab runs it
    # pytorch-style on RGB like its other ResNets, so torchvision, MoCo and DetLab's own
    # ResNet-50 weights fit it and inits compare on the same model.
    Backbone(
        "resnet50_c4",
        mmdet_type="ResNet",
        arch={"depth": 50},
        channels=_RESNET_CHANNELS,
        imagenet="torchvision://resnet50",
        key_layout="resnet",
        c4=True,
    ),
    Backbone(
        "resnet101",
        mmdet_type="ResNet",
        arch={"depth": 101},
        channels=_RESNET_CHANNELS,
        imagenet="torchvision://resnet101",
        key_layout="resnet",
    ),
    Backbone(
        "resnext101_32x4d",
        mmdet_type="ResNeXt",
        arch={"depth": 101, "groups": 32, "base_width": 4},
        channels=_RESNET_CHANNELS,
        imagenet="open-mmlab://resnext101_32x4d",
        key_layout="resnet",
    ),
    Backbone(
        "swin_t",
        mmdet_type="SwinTransformer",
        arch={
            "embed_dims": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "drop_path_rate": 0.2,
            "pretrain_img_size": 224,
            **_SWIN_COMMON,
        },
        channels=(96, 192, 384, 768),
        imagenet=_SWIN_RELEASES + "swin_tiny_patch4_window7_224.pth",
        no_weight_decay=_SWIN_NO_DECAY,
    ),
    Backbone(
        "swin_l",
        mmdet_type="SwinTransformer",
        arch={
            "embed_dims": 192,
            "depths": [2, 2, 18, 2],
            "num_heads": [6, 12, 24, 48],
            "window_size": 12,
            "drop_path_rate": 0.3,
            "pretrain_img_size": 384,
            **_SWIN_COMMON,
        },
        channels=(192, 384, 768, 1536),
        imagenet=_SWIN_RELEASES + "swin_large_patch4_window12_384_22k.pth",
        no_weight_decay=_SWIN_NO_DECAY,
    ),
)

PRETRAIN_METHODS: dict[str, PretrainMethod] = _entries(
    PretrainMethod("mocov2", base_config="mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py"),
    PretrainMethod("densecl", base_config="densecl/densecl_resnet50_8xb32-coslr-200e_in1k.py"),
    # DetCo starts from MoCo v2's recipe (views, schedule) and swaps the algorithm
    PretrainMethod(
        "detco",
        base_config="mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py",
        algorithm="DetCo",
        algorithm_module="worker.detco",
        all_stages=True,
    ),
    # AlignDet's box-domain stage (ICCV 2023): the detector learns box-level contrast between two
    # views and regression toward unsupervised proposals
    PretrainMethod(
        "aligndet",
        base_config=None,
        algorithm="AlignDet",
        algorithm_module="worker.aligndet",
        box_domain=True,
    ),
)

# Detectors a box-domain method can pretrain: each has its box features in worker/aligndet.py
# (the RoI head's for the two-stage ones, the FPN's pooled over a box for RetinaNet)
BOX_PRETRAINABLE_DETECTORS: tuple[str, ...] = ("faster_rcnn", "mask_rcnn", "retinanet")


def pretrainable_backbones() -> tuple[str, ...]:
    """Backbones a pretrain job may train."""
    return tuple(name for name, entry in BACKBONES.items() if entry.pretrainable)


def c4_backbones() -> tuple[str, ...]:
    """Backbones in the C4 layout (no neck; stage 4 in the RoI head)."""
    return tuple(name for name, entry in BACKBONES.items() if entry.c4)


def c4_detectors() -> tuple[str, ...]:
    """Detectors that take a C4 backbone."""
    return tuple(name for name, entry in DETECTORS.items() if entry.c4_base_model is not None)


def mask_detectors() -> tuple[str, ...]:
    """Detectors with a mask head (they need datasets with instance masks)."""
    return tuple(name for name, entry in DETECTORS.items() if entry.masks)


def importable_architectures() -> tuple[str, ...]:
    """Backbones whose checkpoints the weights importer converts (the ResNet key layout)."""
    return tuple(name for name, entry in BACKBONES.items() if entry.key_layout == "resnet")


def mmdet_configs_root() -> Path | None:
    """The configs folder the installed mmdet package ships (found without importing mmdet)."""
    found = importlib.util.find_spec("mmdet")
    if found is None or not found.submodule_search_locations:
        return None
    return Path(list(found.submodule_search_locations)[0]) / ".mim" / "configs"


@lru_cache
def _mmdet_config_files() -> dict[str, Path]:
    root = mmdet_configs_root()
    if root is None or not root.is_dir():
        return {}
    return {
        path.stem: path
        for path in sorted(root.rglob("*.py"))
        if "_base_" not in path.parts and not path.name.startswith("_")
    }


def mmdet_config_file(name: str) -> Path | None:
    """The file of a config the installed mmdet ships (e.g. faster-rcnn_r50_fpn_1x_coco), or
    None: only these names are accepted, never a user's Python file."""
    return _mmdet_config_files().get(name)


def similar_mmdet_configs(name: str) -> list[str]:
    """Up to five shipped config names close to `name`."""
    return difflib.get_close_matches(name, list(_mmdet_config_files()), n=5, cutoff=0.6)
