"""A worker's entry in the fleet (GET /workers): registered at start, beating while it runs,
marked stopped when it shuts down cleanly. A worker that dies stops beating; the API then shows
it stale, and the reconciler takes its jobs over once their own heartbeats are stale."""

from __future__ import annotations

import logging
import os
import socket
import threading
from importlib import metadata

from sqlalchemy.orm import Session, sessionmaker

from backend.config import Settings
from backend.workers import service as workers_service
from worker.devices import WorkerDevices
from worker.record import git_commit

__all__ = ["Registration", "version"]

log = logging.getLogger(__name__)


def version() -> str:
    """DetLab's version and commit, as the fleet page shows it."""
    try:
        number = metadata.version("detlab")
    except metadata.PackageNotFoundError:
        number = "unknown"
    commit = git_commit()
    return f"{number} ({commit[:12]})" if commit else number


class Registration:
    """The registered worker `name` and the thread that beats for it."""

    def __init__(
        self,
        *,
        name: str,
        settings: Settings,
        sessions: sessionmaker[Session],
        devices: WorkerDevices,
        slots: int | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self.sessions = sessions
        self.devices = devices
        self.slots = slots or devices.slots
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fleet-heartbeat", daemon=True)

    def start(self) -> Registration:
        """Register and beat from a thread of this process; self."""
        self._thread.start()
        return self

    def register(self) -> None:
        with self.sessions() as session:
            workers_service.register(
                session=session,
                name=self.name,
                host=socket.gethostname(),
                pid=os.getpid(),
                gpus=[gpu.as_dict() for gpu in self.devices.gpus],
                queues=[self.settings.queue],
                slots=self.slots,
                max_job_gpus=self.devices.max_job_gpus,
                version=version(),
            )

    def _beat(self) -> None:
        registered = False
        while True:
            try:
                if not registered:
                    self.register()
                    registered = True
                    log.info(
                        "worker %s registered with %d GPU(s)", self.name, len(self.devices.gpus)
                    )
                else:
                    with self.sessions() as session:
                        registered = workers_service.beat(session=session, name=self.name)
            except Exception:  # a database blip: the next beat tries again
                log.exception("worker %s: fleet heartbeat not written", self.name)
            if self._stop.wait(self.settings.heartbeat_interval_s):
                return

    def stop(self) -> None:
        """Stop beating and mark the worker stopped (a clean shutdown)."""
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            with self.sessions() as session:
                workers_service.stop(session=session, name=self.name)
        except Exception:
            log.exception("worker %s: could not mark itself stopped", self.name)
