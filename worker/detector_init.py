"""Starting a fine-tune from a whole pretrained detector (box-domain pretraining's output):
every tensor of the checkpoint whose name and shape the model shares is loaded into it, after
mmengine's own initialisation and before the first step, and what was loaded is reported by
part (backbone, neck, RPN head, RoI head).

The class-specific layers (the RoI head's classifier and box regressor, the mask head's last
layer) differ in shape from a pretraining on one "object" class: they keep their fresh
initialisation and are listed as skipped. A resumed run loads nothing: its own checkpoint holds
the state. The saved config names this module in custom_imports, so mmdet's tools run it too.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

__all__ = ["DetectorInitHook", "PARTS", "load_detector_weights"]

log = logging.getLogger(__name__)

PARTS = ("backbone", "neck", "rpn_head", "roi_head", "bbox_head")


def _state_dict(path: str) -> dict[str, torch.Tensor]:
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path} holds no state_dict of a detector")
    return {key: value for key, value in state.items() if isinstance(value, torch.Tensor)}


def load_detector_weights(model: torch.nn.Module, path: str) -> dict[str, Any]:
    """Load the tensors of the detector checkpoint at ``path`` that the model has (same name,
    same shape); returns per part {loaded, of} (the model's tensors), the skipped names (shape
    differs) and how many of the checkpoint's tensors the model lacks."""
    saved = _state_dict(path)
    own = model.state_dict()
    taken = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(k for k in saved if k in own and own[k].shape != saved[k].shape)
    model.load_state_dict(taken, strict=False)
    parts: dict[str, dict[str, int]] = {}
    for key in own:
        part = key.split(".", 1)[0]
        counts = parts.setdefault(part, {"loaded": 0, "of": 0})
        counts["of"] += 1
        counts["loaded"] += key in taken
    return {
        "checkpoint": path,
        "parts": parts,
        "skipped": skipped,
        "unused": sum(1 for k in saved if k not in own),
    }


@HOOKS.register_module()
class DetectorInitHook(Hook):
    """Loads a whole detector's weights before the first step (not on resume)."""

    priority = "VERY_HIGH"

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self.report: dict[str, Any] | None = None

    def before_train(self, runner: Any) -> None:
        if runner.iter > 0:
            return
        model = getattr(runner.model, "module", runner.model)
        self.report = load_detector_weights(model, self.checkpoint)
        log.info("detector init from %s: %s", self.checkpoint, self.report)
