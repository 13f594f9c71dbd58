"""The API under 50, 200 and 1,000 concurrent clients, served by uvicorn on Postgres.

Targets (issue 13), with the default settings: at 1,000 concurrent clients every request is
answered (no 5xx, no reset, none slower than the client's 30 s timeout); at 200 clients the
leaderboard's p95 is under 1 s.

The API runs as in production (`python -m uvicorn backend.main:app`) on a fresh database that
it migrates at start-up, with the filesystem broker so that POST /jobs needs no worker. The
database gets a shapes dataset (POST /datasets) and finished fine-tune jobs with evaluations
and training curves, written directly (the API cannot finish jobs). Each level is a closed
loop: every client sends a request, waits for its answer and sends the next, for --duration
seconds, picking GET /leaderboard?dataset=, GET /jobs, GET /jobs/{id}/metrics and POST /jobs
in the proportions of ROUTES.

--baseline DIR serves the same load from another checkout too (for example the code before a
change: `git archive HEAD | tar -x -C DIR`), on a database of its own, each level run against
the baseline and then this checkout, and prints their ratios: the machine's noise affects both
alike. The API's CPU time a request (its processes' CPU time from /proc over the requests
sent) is the figure least moved by what else the machine runs.

--set DETLAB_X=value runs the API with a setting changed (for example DETLAB_API_THREADS).

Both APIs stay up for the whole run and keep their pools' connections (32 a uvicorn worker by
default): `--workers 2 --baseline DIR` holds up to 128, more than Postgres' default
max_connections of 100, and the second checkout's requests then fail for want of one. Compare
two workers one checkout at a time, or raise max_connections.

What the API spends its CPU on under load is best seen by sampling it, for example with
py-spy (`py-spy record --gil -p <uvicorn pid>`): the threads that hold the GIL are the ones
that cost, since one process runs Python on one core at a time.

Run: ``python benchmarks/bench_load.py`` (needs Postgres, as the tests do; the databases are
dropped afterwards). Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import psycopg
from sqlalchemy import MetaData, create_engine, insert

from backend.analysis.tables import METRIC_KEYS
from backend.datasets.shapes import generate_shapes
from backend.jobs.spec import FinetuneSpec

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get(
    "DETLAB_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CLIENT_TIMEOUT_S = 30.0
LEADERBOARD_P95_TARGET_S = 1.0
# share of each route in the mix (weights)
ROUTES = {
    "GET /leaderboard": 3,
    "GET /jobs": 3,
    "GET /jobs/{id}/metrics": 3,
    "POST /jobs": 1,
}
# a job the worker would train in seconds; the benchmark never runs it
SUBMITTED_SPEC = {
    "backbone": "resnet18",
    "init": "scratch",
    "image_scale": [128, 128],
    "batch_size": 2,
    "iterations": 30,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--levels", default="50,200,1000", help="numbers of concurrent clients, comma-separated"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per level")
    parser.add_argument("--jobs", type=int, default=200, help="finished jobs on the leaderboard")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout to serve the same load, for ratios"
    )
    parser.add_argument(
        "--baseline-uvicorn",
        default="",
        metavar="ARGS",
        help="uvicorn arguments for the baseline only, e.g. '--loop asyncio --http h11'",
    )
    parser.add_argument(
        "--baseline-set",
        action="append",
        default=[],
        metavar="DETLAB_X=value",
        help="a setting for the baseline's API only (repeatable), after --set's",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DETLAB_X=value",
        help="a setting for the API (repeatable); the defaults otherwise",
    )
    args = parser.parse_args()
    # one token stands for a whole lab here: its submissions must not meet one person's quota
    settings = {"DETLAB_MAX_ACTIVE_JOBS_PER_USER": "1000000"}
    settings.update(item.split("=", 1) for item in args.set)
    baseline_settings = dict(item.split("=", 1) for item in args.baseline_set)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the databases are dropped
    levels = [int(level) for level in args.levels.split(",")]
    raise_open_files_limit(2 * max(levels) + 512)

    checkouts = {"this checkout": ROOT}
    if args.baseline:
        checkouts = {"baseline": args.baseline.resolve(), **checkouts}
    runs: dict[str, dict[int, Level]] = {label: {} for label in checkouts}
    with ExitStack() as stack:
        served = {
            label: stack.enter_context(
                seeded_api(
                    code,
                    jobs=args.jobs,
                    workers=args.workers,
                    settings={**settings, **baseline_settings} if label == "baseline" else settings,
                    uvicorn_args=args.baseline_uvicorn.split() if label == "baseline" else [],
                )
            )
            for label, code in checkouts.items()
        }
        # level by level, the checkouts one after the other: both see the same noise
        for clients in levels:
            for label, (server, dataset_id, job_ids) in served.items():
                print(f"\n[{label}: {checkouts[label]}]", end="")
                cpu = server.cpu_seconds()
                level = asyncio.run(
                    load(
                        server.base_url,
                        headers=server.headers,
                        clients=clients,
                        duration=args.duration,
                        dataset_id=dataset_id,
                        job_ids=job_ids,
                    )
                )
                level.server_cpu_s = server.cpu_seconds() - cpu
                print_level(level)
                runs[label][clients] = level
    if args.baseline:
        print_ratios(runs["baseline"], runs["this checkout"])
    return 1 if missed_targets(runs["this checkout"]) else 0


def raise_open_files_limit(wanted: int) -> None:
    """One socket a client and one a server connection: raise the soft limit (the API
    process inherits it) up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    print(f"open files limit: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}")


@contextmanager
def fresh_database() -> Iterator[str]:
    """An empty Postgres database, dropped afterwards; the API migrates it."""
    name = f"detlab_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    admin.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def seeded_api(
    code: Path,
    *,
    jobs: int,
    workers: int,
    settings: dict[str, str],
    uvicorn_args: list[str],
) -> Iterator[tuple[Server, int, list[int]]]:
    """`code`'s API on a fresh database with a dataset and `jobs` finished jobs: the server,
    the dataset's id and the jobs' ids."""
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_database())
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="detlab-load-")))
        env = {
            **settings,
            "DETLAB_HOME": str(home / "var"),
            "DETLAB_DATABASE_URL": database_url,
            "DETLAB_BROKER_URL": "filesystem://",
            "DETLAB_DATA_ROOTS": str(home / "data"),
            "DETLAB_ARTIFACT_ROOT": str(home / "artifacts"),
        }
        shapes = generate_shapes(
            home / "data" / "shapes", seed=1, num_train=8, num_val=8, image_size=(64, 64)
        )
        # every uvicorn worker migrates at start-up; on a fresh database two at once collide
        # (and uvicorn stops when a worker fails to start), so the schema is made first
        subprocess.run(
            [sys.executable, "-m", "backend.migrate"],
            cwd=code,
            env={**os.environ, **env, "PYTHONPATH": str(code)},
            check=True,
            stdout=subprocess.DEVNULL,
        )
        headers = admin_headers(code, env)
        server = stack.enter_context(
            api_process(code, env, workers=workers, headers=headers, uvicorn_args=uvicorn_args)
        )
        with httpx.Client(
            base_url=server.base_url, timeout=CLIENT_TIMEOUT_S, headers=server.headers
        ) as api:
            response = api.post(
                "/datasets",
                json={
                    "name": "shapes",
                    "train_ann": str(shapes.train_ann),
                    "val_ann": str(shapes.val_ann),
                    "train_images": str(shapes.train_images),
                    "val_images": str(shapes.val_images),
                },
            )
            response.raise_for_status()
            dataset_id = response.json()["id"]
        job_ids = insert_finished_jobs(database_url, dataset_id, count=jobs)
        print(f"{code}: dataset {dataset_id} and {len(job_ids)} finished jobs seeded")
        yield server, dataset_id, job_ids


def admin_headers(code: Path, env: dict[str, str]) -> dict[str, str]:
    """An admin's Authorization header for `code`'s API (none for a checkout from before
    users, which needs none), made with its own detlab-admin."""
    if not (code / "backend" / "users" / "cli.py").exists():
        return {}
    run_env = {**os.environ, **env, "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "backend.users.cli"]
    subprocess.run(
        [*command, "create-user", "bench", "--role", "admin", "--exist-ok"],
        cwd=code,
        env=run_env,
        check=True,
        capture_output=True,
    )
    made = subprocess.run(
        [*command, "create-token", "bench", "--name", "load benchmark"],
        cwd=code,
        env=run_env,
        check=True,
        capture_output=True,
        text=True,
    )
    return {"Authorization": f"Bearer {made.stdout.strip()}"}


@contextmanager
def api_process(
    code: Path,
    env: dict[str, str],
    *,
    workers: int,
    headers: dict[str, str],
    uvicorn_args: list[str],
) -> Iterator[Server]:
    """uvicorn serving `code`'s backend.main:app on a free port, as docker-compose starts it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port)]
    if workers > 1:
        command += ["--workers", str(workers)]
    command += uvicorn_args
    log = Path(env["DETLAB_HOME"]).parent / "api.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=code,
            env={**os.environ, **env, "PYTHONPATH": str(code)},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers go with it
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=5).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the API did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.3)
    try:
        yield Server(base_url, process.pid, headers)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # requests stuck in it (a deadlocked baseline)
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclass
class Server:
    base_url: str
    pid: int
    headers: dict[str, str]  # what every request sends: an admin's token

    def cpu_seconds(self) -> float:
        """CPU time of the API's processes so far (uvicorn and its workers), from /proc."""
        parents: dict[int, int] = {}
        times: dict[int, float] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            pid = int(stat.parent.name)
            parents[pid] = int(fields[1])
            times[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        tree, grown = {self.pid}, True
        while grown:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grown = bool(more)
        return sum(times.get(pid, 0.0) for pid in tree)


def insert_finished_jobs(database_url: str, dataset_id: int, *, count: int) -> list[int]:
    """`count` succeeded fine-tune jobs, each with an evaluation (metrics and their intervals)
    and a loss curve of 200 points; returns their ids.

    Written through the reflected tables, so that a baseline checkout with other columns
    takes the same rows."""
    rng = random.Random(0)
    engine = create_engine(database_url)
    tables = MetaData()
    tables.reflect(engine, only=["jobs", "evaluations", "metric_points"])
    jobs, evaluations, points = (
        tables.tables[name] for name in ("jobs", "evaluations", "metric_points")
    )
    now = datetime.now(timezone.utc)
    backbones = ("resnet18", "resnet50", "resnet101", "swin_t")
    job_rows = []
    for i in range(count):
        spec = FinetuneSpec(
            dataset_id=dataset_id,
            name=f"load-{i}",
            backbone=backbones[i % len(backbones)],
            init=("scratch", "imagenet")[i // 4 % 2],
            iterations=1000,
            lr=(0.01, 0.02)[i // 8 % 2],
            seed=i % 3,
        ).model_dump(mode="json")
        finished = now - timedelta(minutes=count - i)
        job_rows.append(
            {
                "kind": "finetune",
                "status": "succeeded",
                "name": f"load-{i}",
                "dataset_id": dataset_id,
                "spec": spec,
                "progress_iter": 1000,
                "progress_total": 1000,
                "attempts": 1,
                "cancel_requested": False,
                "created_at": finished - timedelta(minutes=30),
                "started_at": finished - timedelta(minutes=30),
                "finished_at": finished,
            }
        )
    with engine.begin() as connection:
        ids = list(connection.scalars(insert(jobs).returning(jobs.c.id), job_rows))
        connection.execute(insert(evaluations), [evaluation_row(i, rng, now) for i in ids])
        connection.execute(
            insert(points),
            [
                {
                    "job_id": job_id,
                    "key": "loss",
                    "step": step,
                    "epoch": None,
                    "value": 2.0 / (1 + step / 100) + rng.uniform(0, 0.05),
                }
                for job_id in ids
                for step in range(5, 1001, 5)
            ],
        )
    engine.dispose()
    return ids


def evaluation_row(job_id: int, rng: random.Random, now: datetime) -> dict[str, object]:
    metrics = {key: rng.uniform(0.1, 0.5) for key in METRIC_KEYS}
    intervals = {
        key: {"low": value - 0.02, "high": value + 0.02, "std": 0.01}
        for key, value in metrics.items()
    }
    return {
        "job_id": job_id,
        "per_class_ap": {"square": rng.random(), "circle": rng.random()},
        "predictions_path": "/nowhere/predictions.bbox.json",
        "intervals": {
            "metrics": intervals,
            "per_class": {},
            "resamples": 1000,
            "seed": 0,
            "level": 0.95,
            "method": "basic bootstrap over images",
        },
        "created_at": now,
        **metrics,
    }


@dataclass
class Route:
    requests: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, of answered requests
    server_errors: int = 0  # 5xx
    transport_errors: int = 0  # reset, refused, timed out (CLIENT_TIMEOUT_S)
    other: dict[int, int] = field(default_factory=dict)  # unexpected statuses below 500


@dataclass
class Level:
    clients: int
    seconds: float
    routes: dict[str, Route]
    load_average: tuple[float, float, float]
    client_cpu_s: float  # this process's CPU time: what the load generator took from the API
    server_cpu_s: float = 0.0  # the API's (not Postgres'): per request, a figure noise spares


async def load(
    base_url: str,
    *,
    headers: dict[str, str],
    clients: int,
    duration: float,
    dataset_id: int,
    job_ids: list[int],
) -> Level:
    """`clients` closed-loop clients for `duration` s; each request's latency by route."""
    routes = {name: Route() for name in ROUTES}
    names, weights = list(ROUTES), list(ROUTES.values())
    # one TLS context for all (plain HTTP needs none, but each client would load the CA
    # bundle, 25 ms of CPU)
    tls = ssl.create_default_context()

    async def one(http: httpx.AsyncClient, name: str, rng: random.Random) -> httpx.Response:
        if name == "GET /leaderboard":
            return await http.get("/leaderboard", params={"dataset": dataset_id})
        if name == "GET /jobs":
            return await http.get("/jobs")
        if name == "GET /jobs/{id}/metrics":
            return await http.get(f"/jobs/{rng.choice(job_ids)}/metrics")
        spec = {**SUBMITTED_SPEC, "dataset_id": dataset_id, "seed": rng.randrange(1000)}
        return await http.post("/jobs", json=spec)

    async def client(number: int, deadline: float) -> None:
        rng = random.Random(number)
        # a client (and a kept-alive connection) each: httpx's pool costs more CPU per
        # request the more connections it holds, which would make this process the bottleneck
        async with httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=CLIENT_TIMEOUT_S,
            limits=httpx.Limits(max_connections=1),
            verify=tls,
        ) as http:
            while time.monotonic() < deadline:
                name = rng.choices(names, weights)[0]
                route = routes[name]
                route.requests += 1
                started = time.monotonic()
                try:
                    response = await one(http, name, rng)
                except httpx.TransportError:
                    route.transport_errors += 1
                    continue
                route.latencies.append(time.monotonic() - started)
                if response.status_code >= 500:
                    route.server_errors += 1
                elif response.status_code not in (200, 201):
                    status = response.status_code
                    route.other[status] = route.other.get(status, 0) + 1

    cpu = time.process_time()
    started = time.monotonic()
    await asyncio.gather(*(client(number, started + duration) for number in range(clients)))
    seconds = time.monotonic() - started
    return Level(clients, seconds, routes, os.getloadavg(), time.process_time() - cpu)


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summarize(route: Route, seconds: float) -> dict[str, float]:
    ordered = sorted(route.latencies)
    return {
        "requests": route.requests,
        "per_s": route.requests / seconds,
        "p50": percentile(ordered, 0.50),
        "p95": percentile(ordered, 0.95),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else float("nan"),
        "5xx": route.server_errors,
        "errors": route.transport_errors,
    }


def everything(level: Level) -> Route:
    """All routes of a level as one."""
    merged = Route()
    for route in level.routes.values():
        merged.requests += route.requests
        merged.latencies += route.latencies
        merged.server_errors += route.server_errors
        merged.transport_errors += route.transport_errors
    return merged


def print_level(level: Level) -> None:
    one, five, fifteen = level.load_average
    print(
        f"\n{level.clients} clients, {level.seconds:.1f} s "
        f"(load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs; "
        f"the clients took {level.client_cpu_s:.1f} CPU s)"
    )
    answered = everything(level).requests
    print(
        f"the API took {level.server_cpu_s:.1f} CPU s, "
        f"{1000 * level.server_cpu_s / max(answered, 1):.1f} ms a request"
    )
    print(
        f"{'route':<24}{'requests':>9}{'req/s':>8}{'p50 s':>8}{'p95 s':>8}{'p99 s':>8}"
        f"{'max s':>8}{'5xx':>6}{'errors':>8}"
    )
    for name, route in [*level.routes.items(), ("all", everything(level))]:
        row = summarize(route, level.seconds)
        print(
            f"{name:<24}{row['requests']:>9}{row['per_s']:>8.1f}{row['p50']:>8.3f}"
            f"{row['p95']:>8.3f}{row['p99']:>8.3f}{row['max']:>8.2f}{row['5xx']:>6}"
            f"{row['errors']:>8}"
        )
        if route.other:
            print(f"{'':<24}other statuses: {route.other}")


def print_ratios(before: dict[int, Level], after: dict[int, Level]) -> None:
    print("\nthis checkout against the baseline, level by level in the same run:")
    for clients, level in after.items():
        old, new = before[clients], level
        failed = (
            f"failed (5xx, transport errors) {failed_share(old):.1%} -> {failed_share(new):.1%}"
        )
        if failed_share(old) > 0.5:  # no rate to compare with
            print(f"  {clients:>5} clients: {failed}")
            continue
        print(
            f"  {clients:>5} clients: {failed}; answered (2xx) a second "
            f"x{ok_rate(new) / ok_rate(old):.2f}, API CPU a request "
            f"x{cpu_per_request(new) / cpu_per_request(old):.2f}"
        )


def ok_rate(level: Level) -> float:
    total = everything(level)
    other = sum(sum(route.other.values()) for route in level.routes.values())
    answered = total.requests - total.server_errors - total.transport_errors - other
    return max(answered, 1) / level.seconds


def cpu_per_request(level: Level) -> float:
    return level.server_cpu_s / max(everything(level).requests, 1)


def failed_share(level: Level) -> float:
    total = everything(level)
    return (total.server_errors + total.transport_errors) / max(total.requests, 1)


def missed_targets(run: dict[int, Level]) -> bool:
    missed = []
    for clients, level in run.items():
        total = everything(level)
        slow = sum(latency >= CLIENT_TIMEOUT_S for latency in total.latencies)
        if clients >= 1000 and (total.server_errors or total.transport_errors or slow):
            missed.append(
                f"{clients} clients: {total.server_errors} 5xx, {total.transport_errors} "
                f"transport errors, {slow} answers slower than {CLIENT_TIMEOUT_S:.0f} s"
            )
        board = summarize(level.routes["GET /leaderboard"], level.seconds)
        if clients == 200 and not board["p95"] < LEADERBOARD_P95_TARGET_S:
            missed.append(
                f"{clients} clients: leaderboard p95 {board['p95']:.2f} s, target "
                f"{LEADERBOARD_P95_TARGET_S:.0f} s"
            )
    for line in missed:
        print(f"TARGET MISSED: {line}")
    if not missed:
        print("targets met")
    return bool(missed)


if __name__ == "__main__":
    sys.exit(main())
