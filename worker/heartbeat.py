"""A job's heartbeat: a thread that tells the database the attempt is alive, whatever it does.

Training reports progress every second through its hook, but building a model, loading a big
annotation file, saving a checkpoint or scoring 5,000 val images can take minutes without one;
the reconciler takes over a job whose heartbeat is older than DETLAB_HEARTBEAT_STALE_S, so the
beat must not depend on the training loop.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy.orm import Session, sessionmaker

from backend.jobs import service as job_service
from worker.db_writes import RETRYABLE

__all__ = ["Heartbeat"]

log = logging.getLogger(__name__)


class Heartbeat:
    """Beats every interval_s while in its `with` block; `lost` once the job is not ours."""

    def __init__(
        self, *, job_id: int, token: str, sessions: sessionmaker[Session], interval_s: float
    ) -> None:
        self.job_id = job_id
        self.token = token
        self.sessions = sessions
        self.interval_s = interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                with self.sessions() as session:
                    held = job_service.heartbeat(
                        session=session, job_id=self.job_id, token=self.token
                    )
            except RETRYABLE as exc:  # a blip: the next beat tries again
                log.warning("job %s: heartbeat not written (%s)", self.job_id, exc)
                continue
            except Exception:  # never let the beat kill the job; the progress hook still beats
                log.exception("job %s: heartbeat failed", self.job_id)
                continue
            if not held:
                self.lost = True
                log.warning(
                    "job %s is no longer held by this attempt; heartbeat stops", self.job_id
                )
                return
