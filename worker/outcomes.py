"""How a job's run can end early, as exceptions the runner records."""

from __future__ import annotations

__all__ = ["JobCancelled", "JobFailed"]


class JobCancelled(Exception):
    """The user asked for the job to stop."""


class JobFailed(Exception):
    """A failure with a reason already readable by users."""
