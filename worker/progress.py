"""An mmengine hook that reports a job's progress and metrics to the database."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

from mmengine.hooks import Hook
from sqlalchemy.orm import Session, sessionmaker

from backend.jobs import service as job_service
from worker.db_writes import retrying
from worker.outcomes import JobCancelled, JobFailed

__all__ = ["JobProgressHook"]


class JobProgressHook(Hook):
    """Writes losses, lr, val metrics and progress in batches; stops on cancel or NaN loss.

    Writes happen at most every `flush_every_s` seconds so the hook costs the
    training loop almost nothing; each write also checks for a cancel request.
    """

    priority = "LOW"

    def __init__(
        self,
        *,
        job_id: int,
        sessions: sessionmaker[Session],
        token: str | None = None,
        flush_every_s: float = 1.0,
        max_points_per_key: int = 5000,
        db_grace_s: float = 600.0,
        writes: bool = True,
    ) -> None:
        self.job_id = job_id
        # False in ranks other than 0 of a multi-process job: they train and validate alike,
        # but only rank 0 reports (and sees a cancel; its supervisor then stops the others)
        self.writes = writes
        self.sessions = sessions
        self.token = token  # the claim this attempt holds: its writes stop counting once lost
        self.db_grace_s = db_grace_s
        self.flush_every_s = flush_every_s
        self.max_points_per_key = max_points_per_key
        self.pending: list[dict[str, Any]] = []
        self.window: dict[str, list[float]] = defaultdict(list)
        self.record_every = 1
        self.last_flush = 0.0
        self.start_time = 0.0
        self.start_iter = 0
        self.last_val_iter: int | None = None

    def before_train(self, runner: Any) -> None:
        total = runner.max_iters
        self.record_every = max(1, math.ceil(total / self.max_points_per_key))
        self.start_iter = runner.iter  # > 0 when resumed from a checkpoint
        self.start_time = self.last_flush = time.monotonic()
        # a resumed run repeats the steps after its checkpoint: their old points go
        self._write(progress_iter=runner.iter, progress_total=total, resumed_at=runner.iter)

    def after_train_iter(
        self,
        runner: Any,
        batch_idx: int,
        data_batch: Any = None,
        outputs: dict[str, Any] | None = None,
    ) -> None:
        step = runner.iter + 1
        for key, value in (outputs or {}).items():
            if "loss" in key or key == "acc":
                number = float(value.item() if hasattr(value, "item") else value)
                if "loss" in key and not math.isfinite(number):
                    raise JobFailed(
                        f"{key} became {number} at iteration {step}; the run diverged "
                        "(try a lower lr or a longer warm-up)"
                    )
                self.window[key].append(number)
        lrs = runner.optim_wrapper.get_lr().get("lr")
        if lrs:
            self.window["lr"].append(float(lrs[0]))
        if step % self.record_every == 0 or step == runner.max_iters:
            epoch = runner.epoch + 1 if self._by_epoch(runner) else None
            for key, values in self.window.items():
                self.pending.append(
                    dict(
                        key=f"train/{key}",
                        step=step,
                        epoch=epoch,
                        value=sum(values) / len(values),
                    )
                )
            self.window.clear()
        if time.monotonic() - self.last_flush >= self.flush_every_s or step == runner.max_iters:
            self.flush(runner, step)

    def after_val_iter(
        self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None
    ) -> None:
        if time.monotonic() - self.last_flush >= self.flush_every_s:
            self.flush(runner, runner.iter)

    def after_val_epoch(self, runner: Any, metrics: dict[str, float] | None = None) -> None:
        self.last_val_iter = runner.iter
        epoch = runner.epoch if self._by_epoch(runner) else None
        for key, value in (metrics or {}).items():
            if isinstance(value, int | float) and math.isfinite(value):
                name = key.split("/", 1)[-1]
                self.pending.append(
                    dict(
                        key=f"val/{name}",
                        step=runner.iter,
                        epoch=epoch,
                        value=float(value),
                    )
                )
        self.flush(runner, runner.iter)

    def flush(self, runner: Any, step: int) -> None:
        """Store pending points and progress; raise JobCancelled when a cancel was asked."""
        now = time.monotonic()
        done = step - self.start_iter
        eta = (now - self.start_time) / done * (runner.max_iters - step) if done > 0 else None
        self.last_flush = now
        cancel = self._write(progress_iter=step, eta_seconds=eta)
        if cancel:
            raise JobCancelled(f"cancelled by request at iteration {step}")

    def _write(self, **progress: Any) -> bool:
        if not self.writes:
            self.pending = []
            return False

        def write() -> bool:
            with self.sessions() as session:
                return job_service.record_progress(
                    session=session,
                    job_id=self.job_id,
                    points=self.pending,
                    token=self.token,
                    **progress,
                )

        # a failed write rolls back whole: the points stay pending until one succeeds; a lost
        # claim (ClaimLost) is not retried and stops the run
        cancel = retrying(write, grace_s=self.db_grace_s, what="recording progress")
        self.pending = []
        return cancel

    @staticmethod
    def _by_epoch(runner: Any) -> bool:
        return type(runner.train_loop).__name__ == "EpochBasedTrainLoop"
