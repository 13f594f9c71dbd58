"""Checkpoints written whole: an mmengine file backend and CheckpointHook over artifacts_io.

A job's checkpoints and its work_dir/last_checkpoint are read from other hosts (a job
redelivered elsewhere resumes from them, an evaluation job scores them), so each is written to
a temporary name and renamed. The saved config imports this module (custom_imports), so
mmdet's and mmpretrain's own tools build the same hook and backend.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS
from mmengine.utils import mkdir_or_exist

from backend.artifacts_io import write_bytes_atomic, write_text_atomic

__all__ = [
    "BACKEND",
    "AtomicCheckpointHook",
    "AtomicLocalBackend",
    "apply_atomic_checkpoints",
    "checkpoint_hook",
]

BACKEND = "detlab_atomic"


class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend, but every file it writes is written whole."""

    def put(self, obj: bytes, filepath: str | Path) -> None:
        mkdir_or_exist(os.path.dirname(filepath))
        write_bytes_atomic(filepath, obj)

    def put_text(self, obj: str, filepath: str | Path, encoding: str = "utf-8") -> None:
        mkdir_or_exist(os.path.dirname(filepath))
        write_text_atomic(filepath, obj, encoding=encoding)


register_backend(BACKEND, AtomicLocalBackend, force=True)


class _WorkDirElsewhere:
    """The runner, but with another work_dir: where CheckpointHook's plain open() of
    last_checkpoint lands instead of the shared work dir."""

    def __init__(self, runner: Any, work_dir: str) -> None:
        self._runner = runner
        self.work_dir = work_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


@HOOKS.register_module(force=True)
class AtomicCheckpointHook(CheckpointHook):
    """CheckpointHook whose work_dir/last_checkpoint is written whole, like the checkpoints."""

    def _save_checkpoint_with_step(self, runner: Any, step: int, meta: dict) -> None:
        # mmengine truncates and rewrites last_checkpoint in place, where a reader on another
        # host could find it empty: that write goes to a local scratch folder, this one counts
        with tempfile.TemporaryDirectory() as scratch:
            super()._save_checkpoint_with_step(_WorkDirElsewhere(runner, scratch), step, meta)
        if is_main_process():
            write_text_atomic(Path(runner.work_dir) / "last_checkpoint", str(self.last_ckpt))


def checkpoint_hook(*, interval: int, by_epoch: bool) -> dict[str, Any]:
    """The checkpoint hook of every DetLab run: every ``interval`` epochs or iterations, the
    last two kept and the final state saved (apply_atomic_checkpoints makes it write whole)."""
    return dict(
        type="CheckpointHook",
        interval=interval,
        by_epoch=by_epoch,
        max_keep_ckpts=2,
        save_last=True,
    )


def apply_atomic_checkpoints(cfg: Any) -> None:
    """Make cfg's checkpoint hook write its checkpoints and last_checkpoint whole."""
    checkpoint = cfg.default_hooks.checkpoint
    checkpoint.type = AtomicCheckpointHook.__name__
    checkpoint.backend_args = dict(backend=BACKEND)
    # the saved config then builds them in mmdet's and mmpretrain's own tools too
    imports = {"allow_failed_imports": False, **(cfg.get("custom_imports") or {})}
    imports["imports"] = [*[i for i in imports.get("imports", []) if i != __name__], __name__]
    cfg.custom_imports = imports
