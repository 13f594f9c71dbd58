"""One rank of a multi-process job (`python -m worker.rank TASK_JSON`), started by
worker/distributed.py's `launch`: join the process group, train the job's saved config, run the
kind's end step, and write how it ended (outcome<rank>.json) for the supervisor."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from backend.jobs.service import ClaimLost
from worker.distributed import STOPPED
from worker.outcomes import JobCancelled, JobFailed, describe_failure
from worker.training import resolve, run_training

__all__ = ["main"]

log = logging.getLogger(__name__)


def main(task_path: str) -> int:
    """One rank: join the process group, train the job's saved config, run its end step."""
    from backend.db import session_factory

    task = json.loads(Path(task_path).read_text(encoding="utf-8"))
    folder = Path(task_path).parent
    rank = int(os.environ["RANK"])
    logging.basicConfig(level=logging.INFO, format=f"rank {rank} %(levelname)s %(message)s")
    import torch
    import torch.distributed as dist

    backend = os.environ["DETLAB_DIST_BACKEND"]
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    # mmengine's own init_dist would pick NCCL and a CUDA device on CPU too; joined here, the
    # Runner finds the group ready and keeps it
    dist.init_process_group(backend=backend, init_method="env://")
    outcome: dict[str, Any] = {"status": "ok"}
    code = 0
    try:
        from mmengine.config import Config

        resolve(task["prepare"])(task["context"])
        cfg = Config.fromfile(task["config"])
        runner, hook = run_training(
            cfg,
            job_id=task["job_id"],
            token=task["token"],
            sessions=session_factory(),
            db_grace_s=task["db_grace_s"],
            resume=task["resume"],
            writes=rank == 0,
        )
        outcome["result"] = resolve(task["finish"])(runner, hook, task["context"])
    except JobCancelled as exc:
        outcome, code = {"status": "cancelled", "message": str(exc)}, STOPPED
    except ClaimLost as exc:
        outcome, code = {"status": "claim_lost", "message": str(exc)}, STOPPED
    except JobFailed as exc:
        outcome, code = {"status": "failed", "message": str(exc)}, STOPPED
    except Exception as exc:  # noqa: BLE001 - the supervisor records it as the job's reason
        log.exception("rank %s failed", rank)
        message = describe_failure(exc, spec=task.get("spec", {}))
        outcome, code = {"status": "failed", "message": f"rank {rank}: {message}"}, STOPPED
    (folder / f"outcome{rank}.json").write_text(json.dumps(outcome), encoding="utf-8")
    if code == 0:
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    import backend.models  # noqa: F401 - every table, so the ORM can resolve foreign keys

    parser = argparse.ArgumentParser(description="one rank of a multi-process DetLab job")
    parser.add_argument("task", help="the task.json its supervisor wrote")
    status = main(parser.parse_args().task)
    # Leave without the interpreter's teardown: C++ threads of the process group or the data
    # loader still running then abort the process ("terminate called without an active
    # exception") after its work and outcome are written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
