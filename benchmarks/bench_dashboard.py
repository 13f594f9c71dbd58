"""Time two dashboard pages against a real API process on a big Postgres database.

Targets (issue #5): the leaderboard with 10,000 finished jobs renders in under 2 s; the
predictions explorer shows its first 24 overlays (1333x800 images) in under 3 s.

A fresh database is built by the migrations and filled directly (the API cannot create
finished jobs): 10,000 succeeded fine-tune jobs with evaluations (metrics and their bootstrap
intervals) on a shapes dataset of 1333x800 images, one of them with a predictions file (ground
truth jittered, plus false positives, 100 boxes an image) whose analysis the API computes
(`POST /jobs/{id}/analysis`).
A page "renders" when its script run is over: every API call made and every element sent, as
`streamlit.testing.v1.AppTest` measures it; cold = the dashboard's caches cleared first.

Run: ``python benchmarks/bench_dashboard.py`` (needs Postgres, as the tests do; the database
is dropped afterwards). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg
import streamlit as st
from sqlalchemy import create_engine, insert
from sqlalchemy.orm import Session
from streamlit.testing.v1 import AppTest

import backend.models  # noqa: F401 - every table, for the foreign keys
from backend.analysis.tables import METRIC_KEYS
from backend.datasets.shapes import generate_shapes
from backend.evaluations.models import Evaluation
from backend.jobs.models import Job, JobKind, JobStatus
from backend.jobs.spec import FinetuneSpec
from backend.migrate import upgrade_head

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "dashboard" / "app.py"
POSTGRES_ADMIN = os.environ.get(
    "DETLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
LEADERBOARD_TARGET_S = 2.0
EXPLORER_TARGET_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--renders", type=int, default=5)
    args = parser.parse_args()

    name = f"detlab_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    database_url = f"{base}/{name}"
    try:
        with tempfile.TemporaryDirectory(prefix="detlab-bench-") as home:
            return bench(Path(home), database_url, jobs=args.jobs, renders=args.renders)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def admin_token(database_url: str) -> str:
    """A new admin's token on the benchmark's database."""
    from sqlalchemy.orm import Session

    from backend.db import make_engine
    from backend.users import service
    from backend.users.models import Role

    engine = make_engine(database_url)
    with Session(engine) as session:
        admin = service.create_user(session=session, name="bench", role=Role.admin)
        _, secret = service.create_token(session=session, user=admin, name="dashboard benchmark")
    engine.dispose()
    return secret


def bench(home: Path, database_url: str, *, jobs: int, renders: int) -> int:
    env = {
        "DETLAB_HOME": str(home / "var"),
        "DETLAB_DATABASE_URL": database_url,
        "DETLAB_BROKER_URL": "memory://",
        "DETLAB_DATA_ROOTS": str(home / "data"),
        "DETLAB_ARTIFACT_ROOT": str(home / "artifacts"),
    }
    os.environ.update(env)

    upgrade_head(database_url)
    # the dashboard and this script act as an admin (the dashboard reads DETLAB_API_TOKEN)
    os.environ["DETLAB_API_TOKEN"] = admin_token(database_url)
    started = time.perf_counter()
    shapes = generate_shapes(
        home / "data" / "shapes",
        seed=1,
        num_train=4,
        num_val=48,
        image_size=(1333, 800),
        num_classes=4,
    )
    with api_process(env) as api:
        response = api.post(
            "/datasets",
            json={
                "name": "shapes-1333",
                "train_ann": str(shapes.train_ann),
                "val_ann": str(shapes.val_ann),
                "train_images": str(shapes.train_images),
                "val_images": str(shapes.val_images),
            },
        )
        response.raise_for_status()
        dataset_id = response.json()["id"]
        predictions = home / "data" / "predictions.bbox.json"
        predictions.write_text(json.dumps(synthetic_predictions(shapes.val_ann)))
        first_job = insert_finished_jobs(database_url, dataset_id, predictions, count=jobs)
        analysis = api.post(f"/jobs/{first_job}/analysis")
        print(
            f"seeded {jobs:,} finished jobs in {time.perf_counter() - started:.1f} s; "
            f"analysis of job {first_job}: HTTP {analysis.status_code}"
        )

        os.environ["DETLAB_API_URL"] = str(api.base_url)
        timed = time.perf_counter()
        api.get("/leaderboard", params={"dataset": dataset_id, "limit": 10_000}).raise_for_status()
        print(f"GET /leaderboard?limit=10000 alone: {time.perf_counter() - timed:.2f} s")

        timed = time.perf_counter()
        listing = api.get(f"/jobs/{first_job}/images", params={"limit": 24}).json()["items"]
        with ThreadPoolExecutor(8) as pool:
            list(
                pool.map(
                    lambda item: api.get(
                        f"/jobs/{first_job}/images/{item['image_id']}/overlay.png"
                    ).raise_for_status(),
                    listing,
                )
            )
        print(
            f"GET /jobs/{{id}}/images + 24 overlay.png (8 at a time) alone: "
            f"{time.perf_counter() - timed:.2f} s"
        )

        board = time_page(
            "leaderboard",
            {"dataset": dataset_id},
            renders=renders,
            check=lambda at: (
                len(at.dataframe[0].value) == min(jobs, 10_000)
                and at.dataframe[0].value["mAP [95% CI]"].str.contains("[", regex=False).all()
            ),
        )
        explorer = time_page(
            "explorer", {"job": first_job}, renders=renders, check=lambda at: len(at.image) == 24
        )
    print(f"load average (1 min) while timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    failed = report("leaderboard, 10,000 jobs", board, LEADERBOARD_TARGET_S)
    failed |= report("explorer, first 24 overlays", explorer, EXPLORER_TARGET_S)
    return 1 if failed else 0


class api_process:
    """The API served by uvicorn on a free port, as in production."""

    def __init__(self, env: dict[str, str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.env = env

    def __enter__(self) -> httpx.Client:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(self.port)],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}",
            timeout=120,
            headers={"Authorization": f"Bearer {os.environ['DETLAB_API_TOKEN']}"},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/health").status_code == 200:
                    return self.client
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the API did not start")
            time.sleep(0.3)

    def __exit__(self, *_: object) -> None:
        self.client.close()
        self.process.terminate()
        self.process.wait(timeout=30)


def synthetic_predictions(val_ann: Path, per_image: int = 100) -> list[dict]:
    """Detections of a mediocre model: most objects found (some with the wrong class), the
    rest of the 100 boxes an image false positives."""
    gt = json.loads(val_ann.read_text())
    rng = random.Random(0)
    by_image: dict[int, list[dict]] = {}
    for ann in gt["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    results = []
    for image in gt["images"]:
        boxes = []
        for ann in by_image.get(image["id"], []):
            x, y, w, h = ann["bbox"]
            category = ann["category_id"] if rng.random() < 0.8 else rng.randint(1, 4)
            boxes.append(
                (
                    category,
                    [x + rng.uniform(-4, 4), y + rng.uniform(-4, 4), w, h],
                    rng.uniform(0.3, 1.0),
                )
            )
        while len(boxes) < per_image:
            w, h = rng.uniform(20, 300), rng.uniform(20, 300)
            box = [rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h), w, h]
            boxes.append((rng.randint(1, 4), box, rng.uniform(0.01, 0.9)))
        results += [
            {"image_id": image["id"], "category_id": c, "bbox": b, "score": s} for c, b, s in boxes
        ]
    return results


def insert_finished_jobs(
    database_url: str, dataset_id: int, predictions: Path, *, count: int
) -> int:
    """`count` succeeded fine-tune jobs with evaluations; returns the first job's id."""

    rng = random.Random(0)
    backbones = ["resnet18", "resnet50", "resnet101", "swin_t"]
    inits = ["scratch", "imagenet"]
    now = datetime.now(timezone.utc)
    rows = []
    for i in range(count):
        backbone = backbones[i % len(backbones)]
        spec = FinetuneSpec(
            dataset_id=dataset_id,
            name=f"bench-{i}",
            backbone=backbone,
            init=inits[(i // 4) % 2],
            neck=("fpn", "pafpn")[(i // 8) % 2],
            epochs=(12, 24, 36)[i % 3],
            lr=(0.01, 0.02, 0.04)[(i // 3) % 3],
            seed=i % 5,
        ).model_dump(mode="json")
        finished = now - timedelta(minutes=count - i)
        rows.append(
            {
                "kind": JobKind.finetune,
                "status": JobStatus.succeeded,
                "name": f"bench-{i}",
                "dataset_id": dataset_id,
                "spec": spec,
                "progress_iter": 100,
                "progress_total": 100,
                "attempts": 1,
                "cancel_requested": False,
                "created_at": finished,
                "started_at": finished,
                "finished_at": finished,
            }
        )
    engine = create_engine(database_url)
    with Session(engine) as session:
        ids = session.scalars(
            insert(Job).returning(Job.id, sort_by_parameter_order=True), rows
        ).all()
        session.execute(
            insert(Evaluation),
            [evaluation_row(job_id, rng, predictions, now) for job_id in ids],
        )
        session.commit()
    engine.dispose()
    return ids[0]


def evaluation_row(
    job_id: int, rng: random.Random, predictions: Path, now: datetime
) -> dict[str, object]:
    """Random metrics with intervals around them, as the worker stores an evaluation (the
    leaderboard shows the ranking metric's interval in every row)."""
    metrics = {metric: rng.uniform(0.1, 0.5) for metric in METRIC_KEYS}
    square = rng.random()
    return {
        "job_id": job_id,
        "per_class_ap": {"square": square, "circle": None},
        "predictions_path": str(predictions),
        "created_at": now,
        "intervals": {
            "metrics": {metric: around(value, rng) for metric, value in metrics.items()},
            "per_class": {"square": around(square, rng), "circle": around(None, rng)},
            "resamples": 1000,
            "seed": 0,
            "level": 0.95,
            "method": "basic bootstrap over images",
        },
        **metrics,
    }


def around(value: float | None, rng: random.Random) -> dict[str, float | int | None]:
    if value is None:
        return {"estimate": None, "low": None, "high": None, "defined": 0}
    return {
        "estimate": value,
        "low": max(0.0, value - rng.uniform(0.005, 0.02)),
        "high": min(1.0, value + rng.uniform(0.005, 0.02)),
        "defined": 1000,
    }


def time_page(page: str, query: dict, *, renders: int, check) -> dict[str, list[float]]:
    """Cold and warm script-run times of one page, each run checked to show its content.

    One AppTest stands for one dashboard server: its first run (imports, Streamlit's scan of
    installed components) is not counted. Cold: the dashboard's caches cleared before the run;
    warm: the run right after, within the caches' lifetime.
    """
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.switch_page(f"app_pages/{page}.py")
    at.query_params.update({k: str(v) for k, v in query.items()})
    at.run()
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    for _ in range(renders):
        st.cache_data.clear()
        for kind in ("cold", "warm"):
            start = time.perf_counter()
            at.run()
            times[kind].append(time.perf_counter() - start)
            if at.exception or at.error or not check(at):
                raise RuntimeError(
                    f"{page} did not render its content: "
                    f"{[e.value for e in at.exception] + [e.value for e in at.error]}"
                )
    return times


def report(what: str, times: dict[str, list[float]], target: float) -> bool:
    cold, warm = times["cold"], times["warm"]
    missed = statistics.median(cold) >= target
    print(
        f"{what}: cold median {statistics.median(cold):.2f} s (max {max(cold):.2f} s), "
        f"warm median {statistics.median(warm):.2f} s over {len(cold)} renders; target "
        f"< {target:.0f} s: {'MISSED' if missed else 'met'}"
    )
    return missed


if __name__ == "__main__":
    sys.exit(main())
