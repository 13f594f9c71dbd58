"""AlignDet's box-domain pretraining (Li et al., ICCV 2023), DetLab's own implementation: a
whole mmdet detector learns on unlabelled images, with unsupervised proposals as pseudo-boxes.

Per step, on a batch of images with their proposals (one class, "object"):
- box regression and objectness: the detector's own RPN and RoI-head losses toward the
  proposals (the RPN learns to propose them, the RoI head to regress and score them);
- box-level contrast: the RoI-head features of sampled proposals in view 1 (the image as the
  pipeline augmented it), projected and normalised, are pulled toward the same proposals' in
  view 2 (the batch flipped left-right with its own colour jitter and noise, through a momentum
  copy of the detector and projector) and pushed from a queue of earlier boxes' keys (MoCo's
  InfoNCE, temperature T).
So backbone, neck, RPN and RoI head all start the fine-tune pretrained, not only the backbone.

Box features (``BOX_FEATURES`` by detector): Faster and Mask R-CNN contrast their RoI head's
representation (pooled features through the box head's shared FC layers; a C4 head's stage 4,
pooled), so the RoI head is pretrained by the contrast too; RetinaNet, a dense head without RoI
features, contrasts its FPN's features pooled over each proposal (RoIAlign at the level its
size maps to, averaged), while its head trains by its own classification and regression losses
toward the proposals.
"""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from mmdet.models.detectors.base import BaseDetector
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox2roi
from mmengine.model import ExponentialMovingAverage
from torch import nn

from backend.artifacts_io import atomic_path

__all__ = ["AlignDet", "export_at_end", "export_detector", "prepare_registries"]

# proposals per image whose features are contrasted (drawn at random, with repeats when an
# image has fewer): a fixed count keeps the keys' shape equal across ranks
CONTRAST_BOXES = 16


def _fc_box_features(
    detector: Any, x: tuple[torch.Tensor, ...], rois: torch.Tensor
) -> torch.Tensor:
    """The RoI head's box representation: pooled features through its shared layers."""
    roi_head = detector.roi_head
    extractor = roi_head.bbox_roi_extractor
    feats = extractor(x[: extractor.num_inputs], rois)
    if getattr(roi_head, "with_shared_head", False):
        feats = roi_head.shared_head(feats)
    head = roi_head.bbox_head
    if getattr(head, "shared_fcs", None):
        out = feats.flatten(1)
        for fc in head.shared_fcs:
            out = head.relu(fc(out))
        return out
    return F.adaptive_avg_pool2d(feats, 1).flatten(1)  # a C4 head: stage 4, then pooled


def _neck_box_features(
    detector: Any, x: tuple[torch.Tensor, ...], rois: torch.Tensor, extractor: Any
) -> torch.Tensor:
    """A dense detector's box representation: its FPN's features pooled over the box."""
    return F.adaptive_avg_pool2d(extractor(x[: extractor.num_inputs], rois), 1).flatten(1)


BOX_FEATURES: dict[str, Any] = {
    "faster_rcnn": _fc_box_features,
    "mask_rcnn": _fc_box_features,
    "retinanet": _neck_box_features,
}
# RetinaNet's FPN levels as an RoI extractor reads them (P3-P6, by the box's size)
_DENSE_EXTRACTOR: dict[str, Any] = dict(
    type="SingleRoIExtractor",
    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
    out_channels=256,
    featmap_strides=[8, 16, 32, 64],
)


@MODELS.register_module()
class AlignDet(BaseDetector):
    """A detector pretrained on proposals by regression and box-level contrast (see module)."""

    def __init__(
        self,
        detector: dict[str, Any],
        *,
        detector_name: str = "faster_rcnn",
        feature_dim: int = 128,
        queue_length: int = 65536,
        temperature: float = 0.2,
        momentum: float = 0.001,
        data_preprocessor: dict[str, Any] | None = None,
        init_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.detector = MODELS.build(detector)
        self.box_features = BOX_FEATURES[detector_name]
        self.dense = not hasattr(self.detector, "roi_head")
        if self.dense:
            self.extractor = MODELS.build(_DENSE_EXTRACTOR)
            in_dim = _DENSE_EXTRACTOR["out_channels"]
        else:
            width = self.detector.roi_head.bbox_head
            in_dim = (
                width.fc_out_channels if getattr(width, "shared_fcs", None) else width.in_channels
            )
        self.projector = nn.Sequential(
            nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, feature_dim)
        )
        online = nn.ModuleDict({"detector": self.detector, "projector": self.projector})
        # the momentum encoder; its first update copies the online weights exactly
        self.target = ExponentialMovingAverage(online, momentum=momentum)
        self.temperature = temperature
        self.register_buffer("queue", F.normalize(torch.randn(feature_dim, queue_length), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def extract_feat(self, batch_inputs: torch.Tensor) -> Any:
        return self.detector.extract_feat(batch_inputs)

    def _forward(self, batch_inputs: torch.Tensor, batch_data_samples: Any = None) -> Any:
        return self.detector._forward(batch_inputs, batch_data_samples)

    def predict(self, batch_inputs: torch.Tensor, batch_data_samples: Any) -> Any:
        return self.detector.predict(batch_inputs, batch_data_samples)

    def _detection_losses(self, x: Any, data_samples: list[Any]) -> dict[str, Any]:
        """The detector's own losses toward the proposals (labels all 0, "object"): the RPN's
        and RoI head's, or a dense head's."""
        det = self.detector
        if self.dense:
            return dict(det.bbox_head.loss(x, data_samples))
        rpn_losses, proposals = det.rpn_head.loss_and_predict(
            x, copy.deepcopy(data_samples), proposal_cfg=det.train_cfg.rpn_proposal
        )
        losses = dict(rpn_losses)  # loss_rpn_cls, loss_rpn_bbox
        losses.update(det.roi_head.loss(x, proposals, data_samples))
        return losses

    def _sampled_boxes(self, data_samples: list[Any]) -> list[torch.Tensor]:
        """CONTRAST_BOXES proposals of each image (the whole image when it has none)."""
        boxes = []
        for sample in data_samples:
            found = sample.gt_instances.bboxes
            found = getattr(found, "tensor", found)
            if not len(found):
                height, width = sample.metainfo["img_shape"]
                found = found.new_tensor([[0.0, 0.0, float(width), float(height)]])
            pick = torch.randint(len(found), (CONTRAST_BOXES,), device=found.device)
            boxes.append(found[pick])
        return boxes

    def _second_view(
        self, inputs: torch.Tensor, boxes: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The batch flipped left-right (boxes with it), with per-image colour jitter and noise
        (the inputs are normalised: an affine change per channel is a brightness/contrast one)."""
        n, channels = inputs.shape[:2]
        width = inputs.shape[-1]
        scale = torch.empty(n, channels, 1, 1, device=inputs.device).uniform_(0.8, 1.2)
        shift = torch.empty(n, channels, 1, 1, device=inputs.device).uniform_(-0.2, 0.2)
        view = inputs.flip(-1) * scale + shift + 0.05 * torch.randn_like(inputs)
        flipped = [
            torch.stack([width - b[:, 2], b[:, 1], width - b[:, 0], b[:, 3]], 1) for b in boxes
        ]
        return view, flipped

    def _embed(self, model: Any, x: Any, boxes: list[torch.Tensor]) -> torch.Tensor:
        rois = bbox2roi(boxes)
        if self.dense:
            features = self.box_features(model["detector"], x, rois, self.extractor)
        else:
            features = self.box_features(model["detector"], x, rois)
        return F.normalize(model["projector"](features), dim=1)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        from mmengine.dist import all_gather, get_world_size

        if get_world_size() > 1:
            keys = torch.cat(all_gather(keys))
        length = self.queue.shape[1]
        keys = keys[-length:]
        start = int(self.queue_ptr)
        positions = (start + torch.arange(len(keys), device=keys.device)) % length
        self.queue[:, positions] = keys.T
        self.queue_ptr[0] = (start + len(keys)) % length

    def loss(self, batch_inputs: torch.Tensor, batch_data_samples: list[Any]) -> dict[str, Any]:
        online = nn.ModuleDict({"detector": self.detector, "projector": self.projector})
        self.target.update_parameters(online)
        x = self.detector.extract_feat(batch_inputs)
        losses = self._detection_losses(x, batch_data_samples)

        boxes = self._sampled_boxes(batch_data_samples)
        query = self._embed(online, x, boxes)
        with torch.no_grad():
            view, flipped = self._second_view(batch_inputs, boxes)
            target = self.target.module
            keys = self._embed(target, target["detector"].extract_feat(view), flipped)
        positive = (query * keys).sum(dim=1, keepdim=True)
        negative = query @ self.queue.clone().detach()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        labels = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        losses["loss_box_contrast"] = F.cross_entropy(logits, labels)
        self._enqueue(keys)
        return losses


def export_detector(model: Any, out: Path, *, meta: dict[str, Any]) -> str:
    """Save the online detector (backbone, neck and heads, in mmdet's key layout) as plain
    tensors; returns the file's sha256."""
    module = getattr(model, "module", model)
    state = {
        key: value.detach().cpu().clone() for key, value in module.detector.state_dict().items()
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        torch.save({"state_dict": state, "meta": meta}, partial)
    return hashlib.sha256(out.read_bytes()).hexdigest()


def prepare_registries(_context: dict[str, Any]) -> None:
    """mmdet's modules and AlignDet (this module), as every rank needs them."""
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


def export_at_end(runner: Any, _hook: Any, context: dict[str, Any]) -> dict[str, Any] | None:
    """Rank 0 exports the pretrained detector; its sha256 and the iterations."""
    from mmengine.dist import get_rank

    if get_rank() != 0:
        return None
    sha256 = export_detector(runner.model, Path(context["out"]), meta=context["meta"])
    return {"sha256": sha256, "iterations": runner.iter}
