"""The GPUs a worker runs jobs on, and how the jobs of one host share them.

`detlab-worker --gpus 0,1,2,3` (DETLAB_WORKER_GPUS) names them by nvidia-smi's numbering;
unset, the worker takes CUDA_VISIBLE_DEVICES or every GPU nvidia-smi lists; "none", or a host
without NVIDIA GPUs, makes a CPU worker. A job holds its GPUs through one lock file per GPU
(an exclusive fcntl lock taken by the Celery child that runs it): the kernel drops the lock
when that process ends, however it ends, so a crashed job never keeps a GPU. The children of a
host claim in turn, under a host-wide lock, so two of them never pick the same free GPUs.
The lock files live in the host's own temporary folder (never on a shared mount, where one
host's GPU 0 would lock another's).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from backend.config import Settings
from backend.jobs.spec import MAX_GPUS

__all__ = ["Gpu", "WorkerDevices", "cuda_environment", "discover_gpus"]

LOCK_FOLDER = Path(tempfile.gettempdir()) / "detlab-gpus"


@dataclass(frozen=True)
class Gpu:
    index: str
    name: str
    memory_mb: int

    def as_dict(self) -> dict[str, Any]:
        return {"index": int(self.index), "name": self.name, "memory_mb": self.memory_mb}


def _nvidia_smi() -> list[Gpu]:
    """Every NVIDIA GPU of this host as nvidia-smi numbers them (PCI bus order)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=index,name,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 3 and parts[0].isdigit():
            memory = int(parts[2]) if parts[2].isdigit() else 0
            gpus.append(Gpu(index=parts[0], name=parts[1], memory_mb=memory))
    return gpus


def discover_gpus(selection: str, *, found: list[Gpu] | None = None) -> list[Gpu]:
    """The GPUs a worker uses: `selection` as DETLAB_WORKER_GPUS takes it (see the module).
    Raises ValueError naming an index this host does not have and those it has."""
    found = _nvidia_smi() if found is None else found
    if selection == "none":
        return []
    if not selection:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            return found
        selection = ",".join(part for part in visible.split(",") if part.strip().isdigit())
        if not selection:
            return []
    by_index = {gpu.index: gpu for gpu in found}
    wanted = [part.strip() for part in selection.split(",")]
    missing = [index for index in wanted if index not in by_index]
    if missing:
        have = ", ".join(by_index) or "none (nvidia-smi lists no GPU)"
        raise ValueError(
            f"DETLAB_WORKER_GPUS names GPU {', '.join(missing)}, which this host does not have; "
            f"its GPUs: {have}. Give indices as nvidia-smi numbers them, or 'none' for a CPU "
            "worker"
        )
    return [by_index[index] for index in dict.fromkeys(wanted)]


def cuda_environment(devices: list[str] | None) -> dict[str, str]:
    """The environment that shows a job exactly its GPUs (none for a CPU job), numbered as
    nvidia-smi numbers them."""
    if devices is None:
        return {}
    gpus = [device for device in devices if device != "cpu"]
    return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(gpus)}


@dataclass
class WorkerDevices:
    """A worker's GPUs and the locks its process holds on them."""

    gpus: list[Gpu]
    cpu_slots: int = 1
    lock_folder: Path = LOCK_FOLDER
    _held: dict[str, IO[bytes]] = field(default_factory=dict)
    _keep_only: list[str] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerDevices:
        return cls(gpus=discover_gpus(settings.worker_gpus), cpu_slots=settings.worker_cpu_slots)

    @property
    def slots(self) -> int:
        """Jobs this worker runs at once: one per GPU, or cpu_slots on a CPU worker."""
        return len(self.gpus) or self.cpu_slots

    def threads_per_job(self, cores: int, jobs: int | None = None) -> int | None:
        """Torch threads for each job of a CPU worker that runs several at once: the host's
        `cores` shared out between the jobs it runs side by side (`jobs`, the pool's size when
        `--concurrency` set it, else the slots), so that they do not oversubscribe the cores
        (each would otherwise take all of them). None leaves torch's default: a GPU worker, one
        job at a time, or OMP_NUM_THREADS set by whoever started the worker."""
        at_once = jobs or self.cpu_slots
        if self.gpus or at_once == 1 or "OMP_NUM_THREADS" in os.environ:
            return None
        return max(1, cores // at_once)

    @property
    def max_job_gpus(self) -> int:
        """The most processes one job gets here: its GPUs, or MAX_GPUS gloo processes on CPU."""
        return len(self.gpus) or MAX_GPUS

    def claim_limits(self, free: list[str]) -> dict[str, Any]:
        """The keyword arguments of jobs.service.claim for what is free now."""
        if self.gpus:
            return {"free_gpus": free}
        return {"max_processes": MAX_GPUS}

    @contextlib.contextmanager
    def claiming(self) -> Iterator[list[str]]:
        """Take this host's claim turn and lock every free GPU of this worker; yields their
        indices. Call `keep` with those the claimed job holds before leaving: the others are
        released on exit."""
        if not self.gpus:
            yield []
            return
        self._folder()
        with open(self.lock_folder / "claim.lock", "ab") as turn:
            fcntl.flock(turn, fcntl.LOCK_EX)
            try:
                free = [gpu.index for gpu in self.gpus if self._try_lock(gpu.index)]
                self._keep_only = None
                yield free
            finally:
                keep: list[str] = self._keep_only or []
                for index in [index for index in self._held if index not in keep]:
                    self._held.pop(index).close()
                fcntl.flock(turn, fcntl.LOCK_UN)

    def keep(self, devices: list[str] | None) -> None:
        """Within `claiming`: the GPUs the claimed job holds, kept locked until release()."""
        self._keep_only = [device for device in devices or [] if device != "cpu"]

    def release(self) -> None:
        """Unlock every GPU this process holds (the job ended)."""
        for handle in self._held.values():
            handle.close()
        self._held.clear()

    def _folder(self) -> None:
        self.lock_folder.mkdir(mode=0o1777, exist_ok=True)
        with contextlib.suppress(PermissionError):  # another user's folder: theirs to set
            os.chmod(self.lock_folder, 0o1777)

    def _try_lock(self, index: str) -> bool:
        if index in self._held:
            return False
        path = self.lock_folder / f"gpu{index}.lock"
        handle = open(path, "ab")  # noqa: SIM115 - held open for as long as the job runs
        with contextlib.suppress(PermissionError):
            os.chmod(path, 0o666)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._held[index] = handle
        return True
