"""What the dashboard tests share: runs seeded through the API, and pages opened with AppTest.

Seeding is idempotent within a test session: the second test module to ask for the runs finds
the ones the first submitted (same database) instead of training them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import factories
import httpx
import streamlit as st
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
DATASET_NAME = "shapes-dashboard"
# The tests' tiny training, 30 iterations: ~30 s per run on a CPU.
TINY = {**factories.TINY_TRAINING, "iterations": 30, "eval_interval": 30}


@dataclass(frozen=True)
class Seeded:
    dataset_id: int
    job_a: dict  # "dash-a", seed 0
    job_b: dict  # "dash-b", seed 1


def seed_runs(api: httpx.Client, wait_job: Callable[..., dict], shapes: Any) -> Seeded:
    """The shapes dataset (`shapes`, as generate_shapes returns it) and two finished tiny runs on
    it (seeds 0 and 1), through the API; `wait_job` is the session's fixture of that name."""
    datasets = api.get("/datasets").json()["items"]
    dataset = next((d for d in datasets if d["name"] == DATASET_NAME), None)
    if dataset is None:
        body = {"name": DATASET_NAME, **factories.dataset_files(shapes)}
        response = api.post("/datasets", json=body)
        assert response.status_code == 201, response.text
        dataset = response.json()
    jobs = api.get("/jobs", params={"dataset": dataset["id"], "limit": 500}).json()["items"]
    runs = {}
    for name, seed in (("dash-a", 0), ("dash-b", 1)):
        found = [j for j in jobs if j["name"] == name and j["status"] != "cancelled"]
        if found:
            runs[name] = found[0]
        else:
            spec = {**TINY, "dataset_id": dataset["id"], "name": name, "seed": seed}
            response = api.post("/jobs", json=spec)
            assert response.status_code == 201, response.text
            runs[name] = response.json()
    for name, job in runs.items():
        job = wait_job(job["id"])
        assert job["status"] == "succeeded", job["error"]
        runs[name] = job
    return Seeded(dataset_id=dataset["id"], job_a=runs["dash-a"], job_b=runs["dash-b"])


def open_page(page: str, **query: object) -> AppTest:
    """Run one page of the dashboard (app_pages/<page>.py) with these query parameters.

    The API's address comes from DETLAB_API_URL, which the caller sets. Cached reads of an
    earlier test are dropped so each page shows what the API holds now.
    """
    st.cache_data.clear()
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.switch_page(f"app_pages/{page}.py")
    at.query_params.update({key: str(value) for key, value in query.items()})
    return at.run()


def texts(elements) -> str:
    """The text of a list of AppTest elements (errors, captions, ...), one per line."""
    return "\n".join(str(e.value) for e in elements)
