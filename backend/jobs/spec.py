"""Validated job specs: the only way a user describes a run (no user-supplied Python)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from backend import registry
from backend.jobs.models import JobStatus

__all__ = [
    "CheckpointInit",
    "EvaluateSpec",
    "FinetuneSpec",
    "InitSpec",
    "JobSpec",
    "PretrainSpec",
    "WeightsInit",
    "accepted_values",
]

MAX_REPEATS = 20
DEFAULT_WARMUP = 500
MAX_GPUS = 8

# One process per GPU on one host (gloo processes on a CPU worker). batch_size and lr are one
# process's: the total batch is gpus x batch_size and the lr is gpus x lr (linear scaling).
Gpus = Annotated[
    int,
    Field(
        ge=1,
        le=MAX_GPUS,
        description=f"processes the job trains with, one per GPU on one host (1-{MAX_GPUS}; "
        "gloo processes on a CPU worker); batch_size and lr are per process, and the lr is "
        "multiplied by gpus (linear scaling in the total batch)",
    ),
]


def default_interval(length: int, *, by_epoch: bool) -> int:
    """Validate (and checkpoint) about 10 times per run; an epoch run of up to 12 epochs after
    every epoch, as mmdet's own 1x schedule does."""
    if by_epoch and length <= 12:
        return 1
    return max(1, -(-length // 10))


Neck = Literal["fpn", "pafpn"]
Norm = Literal["frozen_bn", "bn", "syncbn"]
Optimizer = Literal["sgd", "adamw"]
# after warm-up: mmdet's 1x steps (x0.1 at 8/12 and 11/12 of the run), a cosine decay to
# zero, or the lr held
LrSchedule = Literal["step", "cosine", "constant"]

# The registry's names as Literals, so pydantic validates them and lists them in the schema.
# mypy cannot read a Literal built at run time; to it they are plain strings.
if TYPE_CHECKING:
    DetectorName = str
    BackboneName = str
    MethodName = str
    PretrainBackboneName = str
else:
    DetectorName = Literal[tuple(registry.DETECTORS)]
    BackboneName = Literal[tuple(registry.BACKBONES)]
    MethodName = Literal[tuple(registry.PRETRAIN_METHODS)]
    PretrainBackboneName = Literal[registry.pretrainable_backbones()]


NECK_DESCRIPTION = (
    "multi-scale neck on the backbone's stages; unset: fpn, and none for backbones in the C4 "
    f"layout ({', '.join(registry.c4_backbones())}), whose RPN and RoI head read stage 3 and "
    "run stage 4 per RoI; the stored spec holds the neck used"
)


# the width of mmdet's necks (FPN, PAFPN) and of the heads that read them in its configs: what a
# spec without feature_channels gets, and what a box-domain pretraining's whole detector has
DEFAULT_FEATURE_CHANNELS = 256
FEATURE_CHANNELS_DESCRIPTION = (
    "channels of the neck's outputs and of every head layer that reads them (mmdet's "
    "configs: 256, the default); fewer make a small model train faster, e.g. on a CPU; needs "
    "a neck"
)


def _check_feature_channels(channels: int | None, neck: str | None) -> None:
    """Feature channels are the neck's width: a model without a neck (C4) has none to set."""
    if channels is not None and neck is None:
        raise ValueError(
            f"feature_channels {channels} applies to models with a neck (fpn, pafpn); in the C4 "
            "layout the heads read the backbone's own stage 3 and 4 channels; leave it unset"
        )


def _fill_neck(data: Any, default_backbone: str | None) -> Any:
    """The neck a spec leaves unset (or null): fpn, or none for a C4 backbone."""
    if not isinstance(data, dict) or data.get("neck") is not None:
        return data
    name = data.get("backbone") or default_backbone
    if name is not None and (
        not isinstance(name, str) or name not in registry.BACKBONES or registry.BACKBONES[name].c4
    ):
        return data  # C4: no neck; a wrong or unknown name is reported by its field
    return {**data, "neck": "fpn"}


def _check_layout(detector: str, backbone: str, neck: str | None) -> None:
    """A C4 backbone takes no neck and needs a detector with a C4 model (registry)."""
    if not registry.BACKBONES[backbone].c4:
        return
    if neck is not None:
        raise ValueError(
            f"neck {neck!r} does not apply to {backbone}: in the C4 layout the RPN and RoI head "
            "read stage 3 directly and stage 4 runs in the RoI head; leave neck unset"
        )
    takes_c4 = registry.c4_detectors()
    if detector not in takes_c4:
        raise ValueError(
            f"{backbone} (the C4 layout) works with {', '.join(takes_c4)}; mmdet has no C4 "
            f"model for {detector}: use an FPN backbone such as "
            f"{next(n for n, e in registry.BACKBONES.items() if not e.c4)} with {detector}"
        )


class _Strict(BaseModel):
    """Refuses unknown fields, naming the ones that are accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _unknown_fields(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields))
            if unknown:
                raise ValueError(
                    f"unknown field(s) {', '.join(unknown)}; accepted fields: "
                    f"{', '.join(cls.model_fields)}"
                )
        return data


class CheckpointInit(_Strict):
    """Backbone weights from a checkpoint file under an allowed data root."""

    checkpoint: str = Field(min_length=1)
    prefix: str = Field(default="", description="key prefix to strip, e.g. 'module.encoder_q.'")


class WeightsInit(_Strict):
    """Backbone weights from the weights registry."""

    weights_id: int = Field(ge=1, le=2**31 - 1)


InitSpec = Literal["scratch", "imagenet"] | CheckpointInit | WeightsInit


class FinetuneSpec(_Strict):
    """A fine-tune job: one detector trained and evaluated on one registered dataset."""

    kind: Literal["finetune"] = "finetune"
    name: str | None = Field(default=None, max_length=200)
    dataset_id: int = Field(ge=1, le=2**31 - 1)
    detector: DetectorName = "faster_rcnn"
    backbone: BackboneName = "resnet50"
    neck: Neck | None = Field(default=None, description=NECK_DESCRIPTION)
    init: InitSpec = "imagenet"
    norm: Norm | None = Field(
        default=None,
        description="ResNet norm layers; default frozen_bn for imagenet init, else bn",
    )
    image_scale: Annotated[tuple[int, int], Field(description="(width, height) to resize to")] = (
        1333,
        800,
    )
    epochs: int | None = Field(default=None, ge=1, le=1000)
    iterations: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int = Field(default=2, ge=1, le=256)
    gpus: Gpus = 1
    optimizer: Optimizer = "sgd"
    lr: float = Field(default=0.02, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    warmup_iters: int | None = Field(
        default=None,
        ge=0,
        description="linear lr warm-up; default 500 iterations, at most a tenth of the run",
    )
    warmup_ratio: float = Field(default=0.001, gt=0, le=1)
    lr_schedule: LrSchedule = Field(
        default="step",
        description="after warm-up: step (mmdet's 1x: x0.1 at 8/12 and 11/12 of the run), "
        "cosine (to zero at the end) or constant",
    )
    grad_clip: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="clip the gradients' global L2 norm to this before each step (none: no "
        "clipping); lets a short run use a higher lr without diverging",
    )
    amp: bool = Field(default=False, description="fp16 mixed precision (needs a CUDA GPU)")
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    repeats: int = Field(
        default=1,
        ge=1,
        le=MAX_REPEATS,
        description="replicates with seeds seed, seed+1, ..., seed+repeats-1: one job each, "
        "in one replicate group",
    )
    data_fraction: float = Field(
        default=1.0, ge=0.01, le=1.0, description="share of the train split used (0.01 to 1)"
    )
    eval_interval: int | None = Field(
        default=None,
        ge=1,
        description="epochs (or iterations) per val; default: about 10 validations per run "
        "(every epoch up to 12 epochs)",
    )
    checkpoint_interval: int | None = Field(
        default=None, ge=1, description="epochs (or iterations) per checkpoint; default eval's"
    )
    num_workers: int = Field(default=2, ge=0, le=64)
    roi_samples_per_image: int = Field(
        default=512, ge=16, le=4096, description="RoIs sampled per image for the R-CNN head"
    )
    test_proposals_per_image: int = Field(
        default=1000, ge=10, le=10_000, description="RPN proposals kept per image at test time"
    )
    feature_channels: int | None = Field(
        default=None, ge=16, le=1024, description=FEATURE_CHANNELS_DESCRIPTION
    )

    @model_validator(mode="after")
    def _consistent(self) -> FinetuneSpec:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("give exactly one of 'epochs' or 'iterations'")
        width, height = self.image_scale
        if not (32 <= width <= 4096 and 32 <= height <= 4096):
            raise ValueError(
                f"image_scale {self.image_scale} is not accepted; "
                "width and height must be between 32 and 4096"
            )
        _check_layout(self.detector, self.backbone, self.neck)
        _check_feature_channels(self.feature_channels, self.neck)
        if not registry.BACKBONES[self.backbone].has_batch_norm and self.norm is not None:
            raise ValueError(
                f"norm applies to backbones with batch norm; {self.backbone} uses LayerNorm, "
                "leave norm unset"
            )
        # a stored spec holds every field, so the default is not a choice to refuse
        if (
            not registry.DETECTORS[self.detector].two_stage
            and self.roi_samples_per_image
            != type(self).model_fields["roi_samples_per_image"].default
        ):
            two_stage = [name for name, entry in registry.DETECTORS.items() if entry.two_stage]
            raise ValueError(
                f"roi_samples_per_image applies to two-stage detectors ({', '.join(two_stage)}); "
                f"{self.detector} has no RoI head"
            )
        if self.init == "scratch" and self.norm == "frozen_bn":
            raise ValueError(
                "frozen_bn cannot train from scratch (its statistics would never be "
                "learned); use bn or syncbn"
            )
        if (
            self.iterations is not None
            and self.warmup_iters is not None
            and self.warmup_iters > self.iterations
        ):
            raise ValueError(
                f"warmup_iters {self.warmup_iters} is longer than the run "
                f"({self.iterations} iterations); give at most {self.iterations}, or "
                f"leave it unset for min({DEFAULT_WARMUP}, a tenth of the run)"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _default_neck(cls, data: Any) -> Any:
        return _fill_neck(data, cls.model_fields["backbone"].default)

    @model_validator(mode="before")
    @classmethod
    def _fit_schedule(cls, data: Any) -> Any:
        """Intervals and warm-up that fit the run's length, unless given: a short run does not
        validate and checkpoint every step, nor warm up longer than it lasts. (An epoch run's
        warm-up waits for the dataset's size: `fit_warmup`.)"""
        if not isinstance(data, dict):
            return data
        epochs, iterations = data.get("epochs"), data.get("iterations")
        length = epochs if epochs is not None else iterations
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            return data  # the fields' own validation reports it
        filled = dict(data)
        if filled.get("eval_interval") is None:
            filled["eval_interval"] = default_interval(length, by_epoch=epochs is not None)
        if epochs is None and filled.get("warmup_iters") is None:
            filled["warmup_iters"] = min(DEFAULT_WARMUP, length // 10)
        return filled

    def fit_warmup(self, iterations_per_epoch: int) -> FinetuneSpec:
        """An epoch run's warm-up against its length in iterations, once the dataset's size is
        known: unset, min(500, a tenth of the run); longer than the run, refused."""
        if self.epochs is None:
            return self
        total = self.epochs * iterations_per_epoch
        if self.warmup_iters is None:
            return self.model_copy(update={"warmup_iters": min(DEFAULT_WARMUP, total // 10)})
        if self.warmup_iters > total:
            raise ValueError(
                f"warmup_iters {self.warmup_iters} is longer than the run ({self.epochs} "
                f"epochs of {iterations_per_epoch} iterations = {total}); give at most {total}, "
                f"or leave it unset for min({DEFAULT_WARMUP}, a tenth of the run)"
            )
        return self

    def replicates(self) -> list[FinetuneSpec]:
        """One spec per replicate: the seeds in turn, each a single run."""
        return [
            self.model_copy(update={"seed": self.seed + i, "repeats": 1})
            for i in range(self.repeats)
        ]

    @property
    def resolved_norm(self) -> str | None:
        """The norm actually used: frozen BN for ImageNet init, trainable BN otherwise."""
        if not registry.BACKBONES[self.backbone].has_batch_norm:
            return None
        if self.norm is not None:
            return self.norm
        return "frozen_bn" if self.init == "imagenet" else "bn"

    @property
    def by_epoch(self) -> bool:
        return self.epochs is not None

    @property
    def length(self) -> int:
        """The run's length in its own unit: epochs, or iterations."""
        return self.epochs if self.epochs is not None else self.iterations or 0


class PretrainSpec(_Strict):
    """A self-supervised pretraining job on unlabelled images; its output is a weights entry."""

    kind: Literal["pretrain"]
    name: str | None = Field(default=None, max_length=200)
    method: MethodName = "mocov2"
    backbone: PretrainBackboneName = "resnet50"
    dataset_id: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="its train images are used"
    )
    image_folder: str | None = Field(default=None, description="or a folder under a data root")
    epochs: int | None = Field(default=None, ge=1, le=10_000)
    iterations: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=2, le=4096)
    gpus: Gpus = 1
    detector: DetectorName | None = Field(
        default=None,
        description="box-domain methods (aligndet) only: the detector pretrained whole; "
        f"one of {', '.join(registry.BOX_PRETRAINABLE_DETECTORS)} (default faster_rcnn)",
    )
    init: Literal["scratch", "imagenet"] | WeightsInit = Field(
        default="scratch",
        description="box-domain methods only: the backbone's start (e.g. the weights of an "
        "image-domain pretraining); image-domain methods start from scratch",
    )
    proposals_per_image: int = Field(
        default=32,
        ge=1,
        le=512,
        description="box-domain methods only: unsupervised proposals per image (pseudo-boxes)",
    )
    image_size: int = Field(
        default=224,
        ge=32,
        le=1024,
        description="crop size of each view; for a box-domain method, the images' resized "
        "long side",
    )
    lr: float = Field(default=0.03, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    momentum_coefficient: float = Field(
        default=0.001, gt=0, lt=1, description="key encoder EMA step (mmpretrain's `momentum`)"
    )
    queue_length: int = Field(default=65536, ge=2, le=1_000_000)
    feature_dim: int = Field(default=128, ge=8, le=4096)
    temperature: float = Field(default=0.2, gt=0, le=10)
    amp: bool = False
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    num_workers: int = Field(default=2, ge=0, le=64)
    checkpoint_interval: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_detector(cls, data: Any) -> Any:
        """A box-domain method pretrains Faster R-CNN unless told otherwise (stored resolved)."""
        if isinstance(data, dict) and data.get("detector") is None:
            name = data.get("method", "mocov2")
            # a method that is not a name is reported by its field
            method = registry.PRETRAIN_METHODS.get(name) if isinstance(name, str) else None
            if method is not None and method.box_domain:
                return {**data, "detector": "faster_rcnn"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> PretrainSpec:
        if (self.epochs is None) == (self.iterations is None):
            raise ValueError("give exactly one of 'epochs' or 'iterations'")
        if (self.dataset_id is None) == (self.image_folder is None):
            raise ValueError(
                "give exactly one of 'dataset_id' (its train images are used) or 'image_folder'"
            )
        box_domain = registry.PRETRAIN_METHODS[self.method].box_domain
        if box_domain and self.detector not in registry.BOX_PRETRAINABLE_DETECTORS:
            raise ValueError(
                f"detector {self.detector!r} cannot be pretrained by {self.method} (it has no "
                "box features to contrast); accepted: "
                f"{', '.join(registry.BOX_PRETRAINABLE_DETECTORS)}"
            )
        if not box_domain and (self.detector is not None or self.init != "scratch"):
            box_methods = [n for n, m in registry.PRETRAIN_METHODS.items() if m.box_domain]
            raise ValueError(
                f"detector and init apply to box-domain pretraining ({', '.join(box_methods)}), "
                f"which pretrains a whole detector; {self.method} pretrains a backbone from "
                "scratch: leave them out"
            )
        if not box_domain and self.queue_length % self.batch_size:
            raise ValueError(
                f"queue_length ({self.queue_length}) must be a multiple of "
                f"batch_size ({self.batch_size}) so whole batches enter the queue"
            )
        return self

    @property
    def box_domain(self) -> bool:
        """Whether the method pretrains a whole detector (its output: detector weights)."""
        return registry.PRETRAIN_METHODS[self.method].box_domain

    @property
    def by_epoch(self) -> bool:
        return self.epochs is not None

    @property
    def length(self) -> int:
        """The run's length in its own unit: epochs, or iterations."""
        return self.epochs if self.epochs is not None else self.iterations or 0


class EvaluateSpec(_Strict):
    """Score a checkpoint trained elsewhere (or by DetLab) on a registered dataset's val split.

    The model is one of three: a DetLab job's own (`source_job_id`: its architecture, image
    scale and last checkpoint), one of DetLab's detector x backbone choices (`detector`,
    `backbone`, `neck`), or a config shipped in the installed mmdet package
    (`mmdet_config`, e.g. faster-rcnn_r50_fpn_1x_coco); the last two need `checkpoint`.
    Classes are matched by name between the checkpoint and the dataset."""

    kind: Literal["evaluate"]
    name: str | None = Field(default=None, max_length=200)
    dataset_id: int = Field(ge=1, le=2**31 - 1)
    source_job_id: int | None = Field(
        default=None, ge=1, le=2**31 - 1, description="a fine-tune job whose model to score"
    )
    checkpoint: str | None = Field(
        default=None,
        min_length=1,
        description="a checkpoint file under a data root or the artifact root",
    )
    detector: DetectorName | None = None
    backbone: BackboneName | None = None
    neck: Neck | None = Field(default=None, description=NECK_DESCRIPTION)
    mmdet_config: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.\-]{1,200}$",
        description="the name of a config in the installed mmdet package, without .py",
    )
    feature_channels: int | None = Field(
        default=None,
        ge=16,
        le=1024,
        description="with detector and backbone: the checkpoint's neck width (see fine-tune's "
        "feature_channels); a source job's own is used for its model",
    )
    image_scale: Annotated[tuple[int, int] | None, Field(description="(width, height)")] = None
    batch_size: int = Field(default=1, ge=1, le=64, description="images per inference batch")
    amp: bool = Field(default=False, description="fp16 inference (needs a CUDA GPU)")

    @model_validator(mode="before")
    @classmethod
    def _default_neck(cls, data: Any) -> Any:
        return _fill_neck(data, None)

    @model_validator(mode="after")
    def _one_model(self) -> EvaluateSpec:
        ours = self.detector is not None or self.backbone is not None
        given = [
            name
            for name, used in (
                ("source_job_id", self.source_job_id is not None),
                ("detector and backbone", ours),
                ("mmdet_config", self.mmdet_config is not None),
            )
            if used
        ]
        if len(given) != 1:
            raise ValueError(
                "name the model exactly one way: source_job_id, detector and backbone (with "
                f"checkpoint), or mmdet_config (with checkpoint); got {given or 'none'}"
            )
        if ours and (self.detector is None or self.backbone is None):
            raise ValueError("give both detector and backbone")
        if self.detector is not None and self.backbone is not None:
            _check_layout(self.detector, self.backbone, self.neck)
            _check_feature_channels(self.feature_channels, self.neck)
        elif self.feature_channels is not None:
            raise ValueError(
                "feature_channels describes a model given by detector and backbone; a source "
                "job's model has its own, and an mmdet_config fixes its own"
            )
        if self.source_job_id is None and self.checkpoint is None:
            raise ValueError(f"{given[0]} needs a checkpoint file")
        if self.image_scale is not None:
            width, height = self.image_scale
            if not (32 <= width <= 4096 and 32 <= height <= 4096):
                raise ValueError(
                    f"image_scale {self.image_scale} is not accepted; "
                    "width and height must be between 32 and 4096"
                )
        return self


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        kind = value.get("kind", "finetune")
    else:  # a validated spec, or a body that is not a JSON object (null, a list, text)
        kind = getattr(value, "kind", None)
    return kind if kind in ("finetune", "pretrain", "evaluate") else "unknown"


# "kind" may be left out for fine-tune jobs, the common case
JobSpec = Annotated[
    Annotated[FinetuneSpec, Tag("finetune")]
    | Annotated[PretrainSpec, Tag("pretrain")]
    | Annotated[EvaluateSpec, Tag("evaluate")],
    Discriminator(
        _kind,
        custom_error_type="invalid_kind",
        custom_error_message="a job spec is a JSON object whose kind is 'finetune' (the "
        "default), 'pretrain' or 'evaluate'",
    ),
]


def accepted_values() -> dict[str, Any]:
    """The choices a client may offer, derived from the spec itself."""
    return {
        "kind": ["finetune", "pretrain", "evaluate"],
        "status": [status.value for status in JobStatus],
        "method": list(registry.PRETRAIN_METHODS),
        "pretrain_backbone": list(registry.pretrainable_backbones()),
        # methods that pretrain a whole detector, and the detectors they take
        "box_domain_methods": [n for n, m in registry.PRETRAIN_METHODS.items() if m.box_domain],
        "box_pretrain_detector": list(registry.BOX_PRETRAINABLE_DETECTORS),
        "detector": list(registry.DETECTORS),
        "backbone": list(registry.BACKBONES),
        "neck": list(get_args(Neck)),
        "init": [
            "scratch",
            "imagenet",
            {"checkpoint": "path", "prefix": "module.encoder_q."},
            {"weights_id": 1},
        ],
        "norm": list(get_args(Norm)),
        "optimizer": list(get_args(Optimizer)),
        "lr_schedule": list(get_args(LrSchedule)),
        "max_repeats": MAX_REPEATS,
        "max_gpus": MAX_GPUS,
        "defaults": FinetuneSpec.model_construct().model_dump(
            exclude={"dataset_id", "epochs", "iterations", "name"}
        ),
        "pretrain_defaults": PretrainSpec.model_construct().model_dump(
            exclude={"kind", "dataset_id", "image_folder", "epochs", "iterations", "name"}
        ),
        "evaluate_defaults": EvaluateSpec.model_construct(kind="evaluate").model_dump(
            exclude={"kind", "dataset_id", "name"}
        ),
    }
