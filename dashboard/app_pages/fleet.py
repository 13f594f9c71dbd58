"""Fleet: every worker that registered, one section each: where it runs, whether it is alive,
its GPUs busy or idle with the job on each, and the jobs it runs (a CPU worker has only those).

A stale worker stopped beating without shutting down (it died or hangs): it is marked, and
what it shows running is as it last reported. Refreshed every few seconds.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import cached, views
from dashboard.client import ApiError

REFRESH_S = 5
# how each state reads in a worker's heading: a stale one stands out
STATE_LABELS = {
    "alive": ":green-badge[alive]",
    "stale": ":red-badge[:material/warning: stale]",
    "stopped": ":gray-badge[stopped]",
}


def gpu_frame(worker: dict[str, Any]) -> pd.DataFrame:
    """One row per GPU: what it is, and the job holding it (none: idle)."""
    names = {job["id"]: job["name"] or job["kind"] for job in worker["jobs"]}
    gpus = worker["gpus"]
    return pd.DataFrame(
        {
            "GPU": [gpu["index"] for gpu in gpus],
            "name": [gpu["name"] for gpu in gpus],
            "memory": [f"{gpu['memory_mb'] / 1024:.0f} GiB" for gpu in gpus],
            "state": ["busy" if gpu["job_id"] else "idle" for gpu in gpus],
            "run": [f"run?job={gpu['job_id']}" if gpu["job_id"] else None for gpu in gpus],
            "job": [names.get(gpu["job_id"], "") if gpu["job_id"] else "" for gpu in gpus],
        }
    )


def gpu_table(worker: dict[str, Any]) -> None:
    st.dataframe(
        gpu_frame(worker),
        hide_index=True,
        width="stretch",
        column_config={
            "GPU": st.column_config.NumberColumn("GPU", width="small"),
            "run": st.column_config.LinkColumn("run", display_text=r"job=(\d+)", width="small"),
        },
    )


def job_text(job: dict[str, Any]) -> str:
    """Where a running job is: its devices and progress."""
    devices = job["devices"] or []
    held = "CPU" if devices == ["cpu"] else f"GPU {', '.join(devices)}" if devices else "?"
    total = job["progress_total"]
    progress = f"iteration {job['progress_iter']:,} / {total:,}" if total else "starting…"
    owner = f" · by {job['owner']}" if job["owner"] else ""
    return f"{job['gpus']} process(es) on {held} · {progress}{owner}"


def running_jobs(worker: dict[str, Any]) -> None:
    if not worker["jobs"]:
        st.caption("Runs nothing now.")
        return
    for job in worker["jobs"]:
        label, where = st.columns([2, 3], vertical_alignment="center")
        name = job["name"] or job["kind"]
        label.page_link(
            "app_pages/run.py", label=f"#{job['id']} · {name}", query_params={"job": job["id"]}
        )
        where.caption(job_text(job))


def worker_section(worker: dict[str, Any]) -> None:
    with st.container(border=True):
        st.markdown(f"#### {worker['name']} {STATE_LABELS[worker['state']]}")
        age = views.format_duration(worker["heartbeat_age_s"])
        st.caption(
            f"host {worker['host']} · pid {worker['pid']} · version {worker['version']} · "
            f"queues {', '.join(worker['queues']) or views.EMPTY} · last heartbeat {age} ago"
        )
        if worker["state"] == "stale":
            st.warning(
                f"No heartbeat for {age}: this worker died or hangs. What it shows running is "
                "as it last reported; its jobs go back in line for another worker."
            )
        if worker["gpus"]:
            busy = sum(1 for gpu in worker["gpus"] if gpu["job_id"])
            st.caption(f"{busy} of {len(worker['gpus'])} GPUs busy")
            gpu_table(worker)
        else:
            st.caption(
                f"CPU worker: up to {worker['slots']} job(s) at once, each of up to "
                f"{worker['max_job_gpus']} process(es)"
            )
        running_jobs(worker)


@st.fragment(run_every=REFRESH_S)
def fleet(*, include_stopped: bool) -> None:
    try:
        items = cached.workers(include_stopped=include_stopped)["items"]
    except ApiError as err:
        views.show_api_error(err, doing="load the workers")
        return
    if not items:
        st.info(
            "No worker has registered. A worker registers when it starts: "
            "`celery -A worker.celery_app worker`."
        )
        return
    states = pd.Series([worker["state"] for worker in items]).value_counts()
    gpus = [gpu for worker in items if worker["state"] == "alive" for gpu in worker["gpus"]]
    st.caption(
        ", ".join(f"{count} {state}" for state, count in states.items())
        + f" · {sum(1 for gpu in gpus if gpu['job_id'])} of {len(gpus)} GPUs of alive workers "
        "busy"
    )
    for worker in items:
        worker_section(worker)


st.title("Fleet")
include_stopped = st.toggle("Show stopped workers", key="fleet-stopped")
fleet(include_stopped=include_stopped)
