"""What every kind of job does around mmengine: keep its config, check AMP, train and resume."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.jobs import service as job_service
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from worker.checkpoints import allow_own_checkpoints
from worker.db_writes import retrying
from worker.outcomes import JobFailed
from worker.progress import JobProgressHook
from worker.record import CACHE_FOLDER, capture, config_facts

__all__ = ["require_cuda_for_amp", "save_config", "save_config_and_record", "train"]

log = logging.getLogger(__name__)


def require_cuda_for_amp(amp: bool) -> None:
    """AMP here means fp16 on a CUDA GPU; say so instead of failing deep in mmengine."""
    if amp:
        import torch

        if not torch.cuda.is_available():
            raise JobFailed(
                "amp (fp16 mixed precision) needs a CUDA GPU and this worker has "
                "none; submit with amp false or run a GPU worker"
            )


def save_config(
    cfg: Any, path: Path, *, claim: Claim, sessions: sessionmaker[Session], db_grace_s: float
) -> str:
    """Write the generated config beside the job's files and into the job's row; its text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg.dump(str(path))
    text = path.read_text(encoding="utf-8")

    def write() -> None:
        with sessions() as session:
            job_service.save_config(
                session=session, job_id=claim.job.id, config_text=text, token=claim.token
            )

    retrying(write, grace_s=db_grace_s, what="saving the config")
    return text


def save_config_and_record(
    cfg: Any,
    *,
    paths: JobPaths,
    claim: Claim,
    sessions: sessionmaker[Session],
    settings: Settings,
    train_ann: Path | None = None,
    val_ann: Path | None = None,
    train_image_names: list[str] | None = None,
) -> dict[str, Any]:
    """Save the generated config (save_config), then capture the job's reproducibility record
    (worker/record.py: its data are the annotation files, or a pretraining folder's image
    names) and write it into the job's row; the record."""
    config_text = save_config(
        cfg, paths.config, claim=claim, sessions=sessions, db_grace_s=settings.db_grace_s
    )
    record = capture(
        config_text=config_text,
        job_dir=paths.root,
        train_ann=train_ann,
        val_ann=val_ann,
        train_image_names=train_image_names,
        cache_dir=settings.home / CACHE_FOLDER,
        **config_facts(cfg),
    )

    def write() -> None:
        with sessions() as session:
            job_service.save_record(
                session=session, job_id=claim.job.id, record=record, token=claim.token
            )

    retrying(write, grace_s=settings.db_grace_s, what="saving the reproducibility record")
    return record


def train(
    cfg: Any, *, claim: Claim, sessions: sessionmaker[Session], db_grace_s: float
) -> tuple[Any, JobProgressHook]:
    """Train with mmengine's Runner and DetLab's progress hook, resuming a redelivered job
    from its last checkpoint (ours, so mmengine's pickled types are allowed to load)."""
    from mmengine.runner import Runner

    job_id = claim.job.id
    work_dir = Path(cfg.work_dir)
    cfg.resume = claim.resuming and (work_dir / "last_checkpoint").is_file()
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    hook = JobProgressHook(
        job_id=job_id, sessions=sessions, token=claim.token, db_grace_s=db_grace_s
    )
    runner.register_hook(hook)
    if cfg.resume:
        log.info("job %s: resuming from %s", job_id, work_dir)
    with allow_own_checkpoints() if cfg.resume else contextlib.nullcontext():
        runner.train()
    return runner, hook
