"""What every kind of job does around mmengine: keep its config, check AMP, train and resume."""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy.orm import Session, sessionmaker

from backend.artifacts_io import write_text_atomic
from backend.config import Settings
from backend.jobs import service as job_service
from backend.jobs.paths import JobPaths
from backend.jobs.service import Claim
from worker.checkpoints import allow_own_checkpoints
from worker.db_writes import retrying
from worker.distributed import World, launch
from worker.outcomes import JobFailed
from worker.progress import JobProgressHook
from worker.record import CACHE_FOLDER, capture, config_facts

__all__ = [
    "apply_world",
    "require_cuda_for_amp",
    "resolve",
    "run_training",
    "save_config",
    "save_config_and_record",
    "train",
]

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
    write_text_atomic(path, cfg.pretty_text)
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
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save the generated config (save_config), then capture the job's reproducibility record
    (worker/record.py: its data are the annotation files, or a pretraining folder's image
    names; ``extra`` joins it) and write it into the job's row; the record."""
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
    record.update(extra or {})

    def write() -> None:
        with sessions() as session:
            job_service.save_record(
                session=session, job_id=claim.job.id, record=record, token=claim.token
            )

    retrying(write, grace_s=settings.db_grace_s, what="saving the reproducibility record")
    return record


def resolve(name: str) -> Callable[..., Any]:
    """A kind's step named "module:function", so a rank process can find it too."""
    module, function = name.split(":")
    return cast(Callable[..., Any], getattr(importlib.import_module(module), function))


def apply_world(cfg: Any, world: World, *, lr: float, batch_size: int, norm: str | None) -> None:
    """Make cfg train with world.size processes: mmengine's pytorch launcher, the process
    group's backend, DDP without device ids on CPU, and the lr scaled linearly in the total
    batch (stated in the saved config as world_size and lr_scaling)."""
    cfg.world_size = world.size
    cfg.lr_scaling = dict(
        rule="linear in the total batch: lr = lr_per_process x world_size",
        lr_per_process=lr,
        batch_size_per_process=batch_size,
        total_batch_size=batch_size * world.size,
        lr=lr * world.size,
    )
    cfg.optim_wrapper.optimizer.lr = lr * world.size
    if world.size == 1:
        cfg.launcher = "none"
        return
    if norm == "syncbn" and not world.cuda:
        raise JobFailed(
            "norm syncbn needs CUDA GPUs (torch's SyncBatchNorm runs on GPUs only) and this "
            f"job's {world.size} processes run on CPU; submit with norm bn, or run on a GPU "
            "worker"
        )
    cfg.launcher = "pytorch"
    cfg.env_cfg = {**cfg.get("env_cfg", {}), "dist_cfg": dict(backend=world.backend)}
    if not world.cuda:  # DDP takes device ids only for a module on one GPU
        cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)


def run_training(
    cfg: Any,
    *,
    job_id: int,
    token: str | None,
    sessions: sessionmaker[Session],
    db_grace_s: float,
    resume: bool,
    writes: bool = True,
) -> tuple[Any, JobProgressHook]:
    """Train with mmengine's Runner and DetLab's progress hook (which writes only when
    `writes`: rank 0 of a multi-process job), resuming from the last checkpoint when asked
    (ours, so mmengine's pickled types are allowed to load)."""
    from mmengine.runner import Runner

    cfg.resume = resume
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    hook = JobProgressHook(
        job_id=job_id, sessions=sessions, token=token, db_grace_s=db_grace_s, writes=writes
    )
    runner.register_hook(hook)
    if resume:
        log.info("job %s: resuming from %s", job_id, cfg.work_dir)
    with allow_own_checkpoints() if resume else contextlib.nullcontext():
        runner.train()
    return runner, hook


def train(
    cfg: Any,
    *,
    claim: Claim,
    sessions: sessionmaker[Session],
    settings: Settings,
    config_path: Path,
    prepare: str,
    finish: str,
    context: dict[str, Any],
) -> Any:
    """Train the job's config in its world (this process, or one per GPU through
    worker/distributed.py), then run the kind's end step; what it returned (rank 0's).

    `prepare(context)` registers the kind's mmengine modules; `finish(runner, hook, context)`
    runs in every rank after training (collectives allowed) and returns something JSON can
    hold. A redelivered job resumes from its last checkpoint."""
    world = World.of(claim.job)
    resume = claim.resuming and (Path(cfg.work_dir) / "last_checkpoint").is_file()
    if world.size == 1:
        resolve(prepare)(context)
        runner, hook = run_training(
            cfg,
            job_id=claim.job.id,
            token=claim.token,
            sessions=sessions,
            db_grace_s=settings.db_grace_s,
            resume=resume,
        )
        return resolve(finish)(runner, hook, context)
    task = dict(
        job_id=claim.job.id,
        token=claim.token,
        config=str(config_path),
        resume=resume,
        prepare=prepare,
        finish=finish,
        context=context,
        db_grace_s=settings.db_grace_s,
        spec=claim.job.spec,
    )
    folder = Path(cfg.work_dir) / f"ranks-attempt{claim.job.attempts}"
    log.info("job %s: %d processes (%s)", claim.job.id, world.size, world.backend)
    return launch(world=world, folder=folder, task=task)
