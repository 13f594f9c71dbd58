"""The Celery client the API queues jobs through (by task name; it never imports the worker).

A message only wakes a worker: the worker claims the oldest queued job of its queue from the
database (backend/jobs/service.py), so the broker's order and its losses do not decide what
runs. `waiting_messages` lets the reconciler count what the broker still holds."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError

from backend.config import Settings, get_settings

__all__ = ["celery_config", "get_client", "enqueue", "waiting_messages"]

TASK_NAME = "jobs.run"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API (producer) and the workers (consumers)."""
    transport_options: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        folder = settings.broker_folder
        # one folder for both directions; store_processed would break redelivery. The
        # exchange tables go beside it, not in kombu's default "control" under the cwd.
        transport_options = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder / "control"),
        }
    else:
        # far above the longest job, else Redis redelivers a still-running task
        transport_options = {"visibility_timeout": settings.visibility_timeout_s}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        "task_ignore_result": True,  # job state lives in the database
        "task_serializer": "json",
        "accept_content": ["json"],
        # long GPU jobs: take one at a time, ack only when done, requeue if the child dies
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 1,
        "worker_concurrency": 1,
        "worker_hijack_root_logger": False,
    }


@lru_cache
def get_client() -> Celery:
    """A producer-only Celery app for the configured broker."""
    settings = get_settings()
    settings.prepare_folders()
    client = Celery("detlab-api")
    client.conf.update(celery_config(settings))
    return client


def enqueue(job_id: int) -> None:
    """Queue a job for the workers; only its id travels."""
    get_client().send_task(TASK_NAME, args=[job_id])


def waiting_messages(settings: Settings) -> int | None:
    """Messages waiting in the broker for the configured queue (not those a worker holds), or
    None when the broker cannot count them. A queue the broker does not know holds none."""
    try:
        with get_client().connection_for_write() as connection:
            declared = connection.default_channel.queue_declare(queue=settings.queue, passive=True)
    except ChannelError:  # Redis after its data was lost: the queue's binding is gone
        return 0
    except NotImplementedError:
        return None
    return int(declared.message_count)
