"""A job across several processes: one per GPU it holds (NCCL), or gloo processes on CPU.

The Celery child that claimed the job stays its supervisor: it keeps the heartbeat, starts
`python -m worker.rank` once per rank with torch.distributed's environment (RANK,
LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and the job's GPUs, and waits. Each rank
builds mmengine's Runner from the saved config with `launcher='pytorch'`; only rank 0 writes
progress and metric points and sees a cancel request. When one rank ends badly the others are
stopped (they would wait forever in their next collective), and the first failure's reason,
written by the rank itself, becomes the job's. The ranks die with their supervisor
(PR_SET_PDEATHSIG), so a killed worker leaves no orphan training on its GPUs.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.jobs.service import ClaimLost
from worker.devices import cuda_environment
from worker.outcomes import JobCancelled, JobFailed

__all__ = ["STOPPED", "RankFailed", "World", "launch"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
# a rank's exit status when it wrote why it stopped (cancelled, failed, claim lost)
STOPPED = 3


@dataclass(frozen=True)
class World:
    """The processes a job trains with, and the devices its attempt holds."""

    size: int
    devices: list[str] | None

    @classmethod
    def of(cls, job: Any) -> World:
        return cls(size=int(job.gpus or 1), devices=job.devices)

    @property
    def cuda(self) -> bool:
        if self.devices is None:  # claimed without a device list (tools, tests): ask torch
            import torch

            return bool(torch.cuda.is_available())
        return any(device != "cpu" for device in self.devices)

    @property
    def backend(self) -> str:
        return "nccl" if self.cuda else "gloo"


class RankFailed(JobFailed):
    """A rank ended without saying why (killed, crashed in C++, out of memory)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # runs in the rank between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def launch(*, world: World, folder: Path, task: dict[str, Any], poll_s: float = 0.5) -> Any:
    """Run `task` (see `main`) in world.size ranks and wait; what rank 0's end step returned.
    Raises JobCancelled, JobFailed or ClaimLost as the first rank to stop badly said."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "task.json").write_text(json.dumps(task), encoding="utf-8")
    port = _free_port()
    env = {**os.environ, **cuda_environment(world.devices)}
    if not world.cuda and "OMP_NUM_THREADS" not in os.environ:
        # CPU ranks share the host's cores instead of each taking all of them (as torchrun)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world.size))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    ranks: list[subprocess.Popen[bytes]] = []
    try:
        for rank in range(world.size):
            rank_env = {
                **env,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": str(world.size),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "DETLAB_DIST_BACKEND": world.backend,
            }
            with open(folder / f"rank{rank}.log", "wb") as out:
                ranks.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "worker.rank", str(folder / "task.json")],
                        cwd=ROOT,
                        env=rank_env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        preexec_fn=_die_with_parent,
                    )
                )
        first_bad = _wait(ranks, folder, poll_s)
    finally:
        _stop(ranks)
    if first_bad is None:
        outcome = _outcome(folder, 0) or {}
        return outcome.get("result")
    _raise(folder, first_bad, ranks[first_bad].returncode, world.size)


def _wait(ranks: list[subprocess.Popen[bytes]], folder: Path, poll_s: float) -> int | None:
    """Until every rank has ended well (None) or one has ended badly (its rank). A rank that
    wrote an "ok" outcome ended well whatever its exit status (a crash in teardown)."""
    while True:
        codes = [rank.poll() for rank in ranks]
        ended_well = [
            code == 0 or (code is not None and (_outcome(folder, i) or {}).get("status") == "ok")
            for i, code in enumerate(codes)
        ]
        bad = [i for i, code in enumerate(codes) if code is not None and not ended_well[i]]
        if bad:
            return bad[0]
        if all(ended_well):
            return None
        time.sleep(poll_s)


def _stop(ranks: list[subprocess.Popen[bytes]]) -> None:
    for rank in ranks:
        if rank.poll() is None:
            rank.terminate()
    deadline = time.monotonic() + 20
    for rank in ranks:
        try:
            rank.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            rank.kill()
            rank.wait()


def _outcome(folder: Path, rank: int) -> dict[str, Any] | None:
    path = folder / f"outcome{rank}.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return None


def _raise(folder: Path, rank: int, code: int | None, size: int) -> None:
    outcome = _outcome(folder, rank)
    if outcome is not None:
        message = str(outcome.get("message", ""))
        status = outcome.get("status")
        if status == "cancelled":
            raise JobCancelled(message)
        if status == "claim_lost":
            raise ClaimLost(message)
        raise JobFailed(message)
    how = f"signal {-code}" if code is not None and code < 0 else f"status {code}"
    tail = ""
    log_path = folder / f"rank{rank}.log"
    if log_path.is_file():
        lines = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        tail = lines[-1][:500] if lines else ""
    raise RankFailed(
        f"training process {rank} of {size} ended with {how}"
        + (f": {tail}" if tail else "")
        + f" (its log: {log_path})"
    )
