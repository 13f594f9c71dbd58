"""DetCo as an mmpretrain self-supervised algorithm (Xie et al., "DetCo: Unsupervised
Contrastive Learning for Object Detection", ICCV 2021).

On top of MoCo v2 it adds, as the paper describes:
- multi-level supervision: a contrastive loss at every backbone stage (res2..res5), each
  stage with its own projection MLP and its own queue of negatives, weighted per stage;
- global and local contrast: each view is also cut into a 3x3 grid of patches encoded
  separately; their pooled features, concatenated, form a local representation. Losses
  pair global with global, local with local, and global with local in both directions.

Simplifications, said openly: the local patches are cut from the same augmented views as
the global images (the paper draws them from a separate jigsaw augmentation), and the key
batch is not shuffled across GPUs (single-process training).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from mmengine.model import ExponentialMovingAverage
from mmpretrain.models.selfsup.base import BaseSelfSupervisor
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample
from torch import nn

__all__ = ["DetCo"]

GRID = 3  # patches per side of the local view


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim)
    )


def _patches(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * 9, C, H // 3, W // 3), patches of one image consecutive."""
    n, c, h, w = images.shape
    ph, pw = h // GRID, w // GRID
    grid = images[:, :, : ph * GRID, : pw * GRID].reshape(n, c, GRID, ph, GRID, pw)
    return grid.permute(0, 2, 4, 1, 3, 5).reshape(n * GRID * GRID, c, ph, pw)


@MODELS.register_module()
class DetCo(BaseSelfSupervisor):
    """Multi-level, global-and-local momentum contrast for detection-friendly backbones."""

    def __init__(
        self,
        *,
        backbone: dict,
        head: dict,
        stage_channels: Sequence[int] = (256, 512, 1024, 2048),
        stage_weights: Sequence[float] = (0.1, 0.4, 0.7, 1.0),
        queue_len: int = 65536,
        feat_dim: int = 128,
        momentum: float = 0.001,
        data_preprocessor: dict | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone,
            neck=None,
            head=head,
            data_preprocessor=data_preprocessor,
            init_cfg=init_cfg,
        )
        if len(stage_channels) != len(stage_weights):
            raise ValueError("stage_channels and stage_weights need one entry per stage")
        self.stage_weights = tuple(float(w) for w in stage_weights)
        self.global_necks = nn.ModuleList(_mlp(c, c, feat_dim) for c in stage_channels)
        self.local_necks = nn.ModuleList(_mlp(c * GRID * GRID, c, feat_dim) for c in stage_channels)
        self.encoder_k = ExponentialMovingAverage(self._query_encoder(), momentum)
        stages = len(stage_channels)
        self.queue_len = queue_len
        self.register_buffer(
            "global_queue", F.normalize(torch.randn(stages, feat_dim, queue_len), dim=1)
        )
        self.register_buffer(
            "local_queue", F.normalize(torch.randn(stages, feat_dim, queue_len), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _query_encoder(self) -> nn.ModuleList:
        # built on the fly, never registered, so the backbone keeps its one `backbone.` name
        return nn.ModuleList([self.backbone, self.global_necks, self.local_necks])

    @staticmethod
    def _encode(
        encoder: nn.ModuleList, images: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Normalised global and local embeddings of a batch, one per stage."""
        backbone = encoder[0]
        global_necks = cast(nn.ModuleList, encoder[1])
        local_necks = cast(nn.ModuleList, encoder[2])
        n = images.shape[0]
        whole = backbone(images)
        parts = backbone(_patches(images))
        global_out, local_out = [], []
        for stage, (feat, patch_feat) in enumerate(zip(whole, parts, strict=True)):
            pooled = F.adaptive_avg_pool2d(feat, 1).flatten(1)
            global_out.append(F.normalize(global_necks[stage](pooled), dim=1))
            patch_pooled = F.adaptive_avg_pool2d(patch_feat, 1).flatten(1).reshape(n, -1)
            local_out.append(F.normalize(local_necks[stage](patch_pooled), dim=1))
        return global_out, local_out

    def _contrast(
        self, query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor
    ) -> torch.Tensor:
        positive = (query * key).sum(dim=1, keepdim=True)
        negative = query @ queue.clone().detach()
        return self.head.loss(positive, negative)

    @torch.no_grad()
    def _enqueue(self, global_keys: list[torch.Tensor], local_keys: list[torch.Tensor]) -> None:
        batch = global_keys[0].shape[0]
        if self.queue_len % batch:
            raise ValueError(
                f"queue length {self.queue_len} is not a multiple of the batch size {batch}"
            )
        ptr = int(self.queue_ptr)
        for stage, (g, loc) in enumerate(zip(global_keys, local_keys, strict=True)):
            self.global_queue[stage, :, ptr : ptr + batch] = g.T
            self.local_queue[stage, :, ptr : ptr + batch] = loc.T
        self.queue_ptr[0] = (ptr + batch) % self.queue_len

    def loss(
        self, inputs: list[torch.Tensor], data_samples: list[DataSample], **kwargs: object
    ) -> dict[str, torch.Tensor]:
        """Weighted sum over stages of the global, local and cross contrastive losses."""
        view_q, view_k = inputs[0], inputs[1]
        q_global, q_local = self._encode(self._query_encoder(), view_q)
        with torch.no_grad():
            self.encoder_k.update_parameters(self._query_encoder())
            k_global, k_local = self._encode(self.encoder_k.module, view_k)
        losses = {
            "loss_global": view_q.new_zeros(()),
            "loss_local": view_q.new_zeros(()),
            "loss_cross": view_q.new_zeros(()),
        }
        for stage, weight in enumerate(self.stage_weights):
            g_queue, l_queue = self.global_queue[stage], self.local_queue[stage]
            losses["loss_global"] = losses["loss_global"] + weight * self._contrast(
                q_global[stage], k_global[stage], g_queue
            )
            losses["loss_local"] = losses["loss_local"] + weight * self._contrast(
                q_local[stage], k_local[stage], l_queue
            )
            cross = self._contrast(q_global[stage], k_local[stage], l_queue) + self._contrast(
                q_local[stage], k_global[stage], g_queue
            )
            losses["loss_cross"] = losses["loss_cross"] + weight * cross / 2
        self._enqueue(k_global, k_local)
        return losses
