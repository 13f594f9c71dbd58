"""How a job's run can end early, as exceptions the runner records."""

from __future__ import annotations

from typing import Any

__all__ = ["JobCancelled", "JobFailed", "describe_failure"]


class JobCancelled(Exception):
    """The user asked for the job to stop."""


class JobFailed(Exception):
    """A failure with a reason already readable by users."""


def describe_failure(exc: BaseException, *, spec: dict[str, Any]) -> str:
    """A failure reason a user can act on."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if name == "OutOfMemoryError" or "CUDA out of memory" in text:
        size = spec.get("image_scale") or spec.get("image_size")
        return (
            f"CUDA out of memory with batch_size {spec.get('batch_size')} at image size "
            f"{size}; lower either, or enable amp"
        )
    return f"{name}: {text}"[:2000]
