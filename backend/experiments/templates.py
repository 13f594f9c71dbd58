"""The studies DetLab is built for, as experiment templates: each fills the form; nothing runs
until it is submitted with a dataset."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.experiments.schemas import Template
from backend.weights.models import Weights

__all__ = ["templates"]

# Faster R-CNN R50-FPN, mmdet's 1x schedule (12 epochs) with lr scaled to a batch of 2
# (0.02 at batch 16)
R50_FPN_1X = {
    "kind": "finetune",
    "detector": "faster_rcnn",
    "backbone": "resnet50",
    "neck": "fpn",
    "epochs": 12,
    "batch_size": 2,
    "lr": 0.0025,
}


# The self-supervised detection benchmark (MoCo's and OpenSelfSup's protocol): Mask R-CNN,
# mmdet's 1x schedule, SyncBN, lr 0.02 at a batch of 16 (8 GPUs x 2: the spec's lr and batch are
# per process, scaled linearly with gpus)
SSL_BENCHMARK = {
    "kind": "finetune",
    "detector": "mask_rcnn",
    "epochs": 12,
    "batch_size": 2,
    "lr": 0.0025,
    "norm": "syncbn",
    "gpus": 8,
}


def _registered_inits(
    session: Session, architecture: str, *, detector: str | None = None
) -> list[dict[str, int]]:
    """Registered backbone weights of an architecture; with ``detector``, the whole
    detectors of that kind on it (box-domain pretraining's output) instead."""
    query = select(Weights.id).where(Weights.architecture == architecture)
    if detector is None:
        query = query.where(Weights.kind == "backbone")
    else:
        query = query.where(Weights.kind == "detector", Weights.detector == detector)
    ids = session.scalars(query.order_by(Weights.id)).all()
    return [{"weights_id": weights_id} for weights_id in ids]


def templates(*, session: Session) -> list[Template]:
    """The templates, with the registered weights of the right architecture as inits."""
    inits = ["scratch", "imagenet", *_registered_inits(session, "resnet50")]
    # image-domain starts (ImageNet, backbones) against image+box-domain ones (AlignDet)
    aligned = [
        "imagenet",
        *_registered_inits(session, "resnet50"),
        *_registered_inits(session, "resnet50", detector="faster_rcnn"),
    ]
    return [
        Template(
            name="init-study",
            title="Init study: Faster R-CNN R50-FPN, 12 epochs, lr 0.0025",
            description="The same detector from scratch, from ImageNet and from every "
            "registered ResNet-50 backbone (MoCo v2, DetCo, DenseCL, ... pretraining), three "
            "seeds each: which initialisation helps, and by more than the seed's noise?",
            base=R50_FPN_1X,
            axes={"init": inits},
            repeats=3,
            needs=["dataset_id"],
        ),
        Template(
            name="backbone-study",
            title="Backbone study: R50 < R101 < X101 < Swin-T",
            description="Faster R-CNN with FPN on four ImageNet-initialised backbones, 12 epochs, "
            "three seeds each.",
            base={k: v for k, v in R50_FPN_1X.items() if k != "backbone"} | {"init": "imagenet"},
            axes={"backbone": ["resnet50", "resnet101", "resnext101_32x4d", "swin_t"]},
            repeats=3,
            needs=["dataset_id"],
        ),
        Template(
            name="low-data-study",
            title="Low-data study: 1%, 5%, 10% and 100% of the train split",
            description="The data regimes of detection-aligned pretraining papers (AlignDet): "
            "each init fine-tuned on a fraction of the train images (a fixed random subset per "
            "seed), three seeds each; mAP against data fraction, one line per init.",
            base=R50_FPN_1X,
            axes={"data_fraction": [0.01, 0.05, 0.1, 1.0], "init": inits},
            repeats=3,
            needs=["dataset_id"],
        ),
        Template(
            name="ssl-benchmark",
            title="Self-supervised detection benchmark: Mask R-CNN R50-FPN and R50-C4, 1x, SyncBN",
            description="The protocol of MoCo's and OpenSelfSup's detection benchmark: Mask R-CNN "
            "fine-tuned from ImageNet and from every registered ResNet-50 (self-supervised) "
            "backbone, on FPN and on C4, 12 epochs (set epochs 24 for 2x), SyncBN, lr 0.02 at "
            "a batch of 16 on 8 GPUs; box AP and mask AP side by side on the leaderboard. "
            "Fewer GPUs: lower gpus, and lr and batch follow (linear scaling). Needs a dataset "
            "with instance masks (COCO polygons or RLE).",
            base=SSL_BENCHMARK,
            axes={
                "init": [i for i in inits if i != "scratch"],
                "backbone": ["resnet50", "resnet50_c4"],
            },
            repeats=1,
            needs=["dataset_id"],
        ),
        Template(
            name="aligndet-study",
            title="AlignDet study: image-domain vs image+box-domain weights at 1%, 10%, 100%",
            description="The same Faster R-CNN R50-FPN fine-tune (1x) from image-domain weights "
            "(ImageNet, every registered ResNet-50 backbone) and from image+box-domain weights "
            "(every registered whole Faster R-CNN R50-FPN from an aligndet pretraining, whose "
            "neck and heads start pretrained too), on 1%, 10% and 100% of the train images, "
            "three seeds each. Pretrain the box-domain weights first: a pretrain job with "
            "method aligndet and init the image-domain weights.",
            base=R50_FPN_1X,
            axes={"data_fraction": [0.01, 0.1, 1.0], "init": aligned},
            repeats=3,
            needs=["dataset_id"],
        ),
    ]
