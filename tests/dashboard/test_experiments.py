"""The Experiments page with AppTest against a real API process: the list and a grid's progress,
its result matrix as a table (each cell's mean, interval and n) and as heatmaps, the curve of
mAP against data fraction with its bands, a cell's jobs, the report downloads, the start form
(a refused cell named with its problem, then a grid queued) and what each role is shown; and
once in a real browser, the progress and the matrix moving as a job finishes.

Nothing trains: the experiments are queued through an API process of this module's own whose
queue no worker serves (the session's worker, when another module started it, serves the
session's queue), and some of their jobs are then given scores in the database, as a worker
would leave them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import factories
import httpx
import pytest
import redis
from dashboard_seed import open_page, texts
from sqlalchemy import text
from sqlalchemy.orm import Session
from streamlit.runtime.media_file_manager import MediaFileManager
from streamlit.testing.v1 import AppTest
from test_browser import browser, page, served_dashboard  # noqa: F401 (fixtures)

from backend.jobs.models import Job, JobStatus

ROOT = Path(__file__).resolve().parents[2]
# no worker serves this queue: the experiments' jobs stay queued
IDLE_QUEUE = f"dashboard-experiments-idle-{uuid.uuid4().hex[:8]}"
START = "FormSubmitter:start-experiment-Start experiment"
# a small fine-tune, less the fields the experiments vary
BASE = {k: v for k, v in factories.TINY_TRAINING.items() if k not in ("init", "lr", "batch_size")}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def idle_api(api, lab_env, redis_url) -> Iterator[str]:
    """The API's URL, served by a uvicorn process that queues jobs on IDLE_QUEUE (`api` makes
    the database and is the admin's client to it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "backend.main:app", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **lab_env, "DETLAB_QUEUE": IDLE_QUEUE},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, "API did not start"
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=30)
    # the messages no worker took, and the broker's binding of the queue
    broker = redis.Redis.from_url(redis_url)
    for key in broker.scan_iter(f"*{IDLE_QUEUE}"):
        broker.delete(key)


@dataclass(frozen=True)
class Grids:
    url: str
    member: str
    member_token: str
    dataset_id: int
    matrix: int  # init x lr, two seeds a cell
    low_data: int  # data_fraction x init x batch_size, one run a cell


def score(session: Session, job_id: int, value: float, low: float, high: float, mmdet: str):
    """The job succeeded with bbox_mAP `value` and its interval over the val images."""
    job = session.get(Job, job_id)
    job.status = JobStatus.succeeded
    job.record = {"mmdet": mmdet}
    session.commit()
    stored = factories.evaluation(session, job_id=job_id, metrics={"bbox_mAP": value})
    stored.intervals = {"metrics": {"bbox_mAP": {"low": low, "high": high}}}
    session.commit()


def by_values(experiment: dict) -> dict[tuple, dict]:
    """The experiment's cells by their values, in the order the axes were given (the API may
    list the axes in another order)."""
    order = {
        "matrix": ("init", "lr"),
        "low data": ("data_fraction", "init", "batch_size"),
    }[experiment["name"]]
    return {tuple(cell["values"][axis] for axis in order): cell for cell in experiment["cells"]}


def create(url: str, token: str, body: dict) -> dict:
    created = httpx.post(f"{url}/experiments", json=body, headers=bearer(token), timeout=30)
    assert created.status_code == 201, created.text
    return created.json()


@pytest.fixture(scope="module")
def grids(api, idle_api, pg_engine, shapes, make_user) -> Iterator[Grids]:
    """A member's two experiments on a dataset of their own, some of their runs scored:

    - matrix (init x lr, 2 seeds): both runs of the first cell, one of the second, both of the
      third (one on another mmdet), none of the last (one failed);
    - low data (data_fraction x init x batch_size, 1 seed): every batch-2 cell and one batch-4
      cell, more data and imagenet scoring higher.
    """
    member, token = make_user("member")
    with Session(pg_engine, expire_on_commit=False) as session:
        dataset_id = factories.dataset(session, shapes=shapes).id
    base = {**BASE, "dataset_id": dataset_id, "iterations": 10}
    matrix = create(
        idle_api,
        token,
        {
            "name": "matrix",
            "base": {**base, "batch_size": 2},
            "axes": {"init": ["scratch", "imagenet"], "lr": [0.005, 0.01]},
            "repeats": 2,
        },
    )
    low_data = create(
        idle_api,
        token,
        {
            "name": "low data",
            "base": {**base, "lr": 0.005},
            "axes": {
                "data_fraction": [0.1, 0.5, 1.0],
                "init": ["scratch", "imagenet"],
                "batch_size": [2, 4],
            },
        },
    )
    matrix_cells = by_values(matrix)
    with Session(pg_engine, expire_on_commit=False) as session:
        first = matrix_cells[("scratch", 0.005)]["job_ids"]
        second = matrix_cells[("scratch", 0.01)]["job_ids"]
        third = matrix_cells[("imagenet", 0.005)]["job_ids"]
        last = matrix_cells[("imagenet", 0.01)]["job_ids"]
        score(session, first[0], 0.30, 0.28, 0.32, "3.3.0")
        score(session, first[1], 0.34, 0.31, 0.36, "3.3.0")
        score(session, second[0], 0.40, 0.38, 0.43, "3.3.0")
        score(session, third[0], 0.50, 0.47, 0.52, "3.3.0")
        score(session, third[1], 0.52, 0.50, 0.55, "3.4.0")
        session.get(Job, last[0]).status = JobStatus.failed
        session.commit()
        for (fraction, init, batch_size), cell in by_values(low_data).items():
            if batch_size == 4 and (fraction, init) != (1.0, "imagenet"):
                continue
            value = fraction / 2 + (0.1 if init == "imagenet" else 0)
            score(session, cell["job_ids"][0], value, value - 0.02, value + 0.03, "3.3.0")
    yield Grids(
        url=idle_api,
        member=member,
        member_token=token,
        dataset_id=dataset_id,
        matrix=matrix["id"],
        low_data=low_data["id"],
    )
    # every experiment of the member's cancelled: their open jobs off the other tests' lists
    # of queued jobs, and their scored runs off the leaderboards
    owner_id = api.get("/users/me", headers=bearer(token)).json()["id"]
    for experiment in api.get("/experiments", params={"limit": 500}).json()["items"]:
        if experiment["owner"] == member and not experiment["cancelled_at"]:
            api.post(f"/experiments/{experiment['id']}/cancel")
    with pg_engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE jobs SET status = 'cancelled' WHERE experiment_id IN "
                "(SELECT id FROM experiments WHERE owner_id = :owner)"
            ),
            {"owner": owner_id},
        )


@pytest.fixture
def signed_in(monkeypatch, grids):
    """signed_in(token): the pages point at the idle API, signed in with `token`."""
    monkeypatch.setenv("DETLAB_API_URL", grids.url)

    def sign_in(token: str) -> None:
        monkeypatch.setenv("DETLAB_API_TOKEN", token)

    return sign_in


@pytest.fixture
def as_admin(signed_in, admin_token):
    signed_in(admin_token)


def detail(api, experiment_id: int, **params) -> dict:
    got = api.get(f"/experiments/{experiment_id}", params=params)
    assert got.status_code == 200, got.text
    return got.json()


def charts(at: AppTest) -> dict[str, dict]:
    """The page's plotly figures by title."""
    figures = {}
    for chart in at.get("plotly_chart"):
        figure = json.loads(chart.proto.spec)
        figures[figure["layout"]["title"]["text"]] = figure
    return figures


def laid_out(at: AppTest, experiment_id: int, rows: str, cols: str) -> AppTest:
    """The page with the matrix's rows and columns by these axes."""
    at.selectbox(key=f"experiments-{experiment_id}-rows").select(rows).run()
    return at.selectbox(key=f"experiments-{experiment_id}-cols-{rows}").select(cols).run()


def shown(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)


def test_the_list_and_a_grids_progress(api, grids, as_admin):
    at = open_page("experiments", experiment=grids.matrix)
    shown(at)
    assert texts(at.title) == "Experiments"
    listed = at.dataframe[0].value.set_index("experiment")
    assert listed.loc[f"#{grids.matrix}", "name"] == "matrix"
    assert listed.loc[f"#{grids.matrix}", "owner"] == grids.member
    # 5 runs scored, 1 failed: 6 of the 8 jobs have ended
    assert listed.loc[f"#{grids.matrix}", "progress"] == "6 of 8 finished"
    assert listed.loc[f"#{grids.low_data}", "progress"] == "7 of 12 finished"

    assert at.header[0].value == f"#{grids.matrix} matrix"
    shape = " × ".join(f"2 {axis}" for axis in detail(api, grids.matrix)["axes"])
    assert f"finetune: 4 cells ({shape}) × 2 seeds = 8 jobs" in texts(at.caption)
    assert f"by {grids.member}" in texts(at.caption)
    (bar,) = at.get("progress")
    assert bar.proto.text == "6 of 8 jobs finished" and bar.proto.value == 75
    counts = {metric.label: metric.value for metric in at.metric}
    statuses = api.get("/jobs/options").json()["status"]
    assert list(counts) == statuses
    expected = {"succeeded": 5, "failed": 1, "queued": 2}
    assert counts == {status: str(expected.get(status, 0)) for status in statuses}
    assert at.button(key=f"experiments-cancel-{grids.matrix}")  # an admin may cancel


def test_the_matrix_shows_each_cells_mean_interval_and_n(api, grids, as_admin):
    at = laid_out(open_page("experiments", experiment=grids.matrix), grids.matrix, "init", "lr")
    shown(at)
    cells = list(by_values(detail(api, grids.matrix)).values())
    table = at.dataframe[1].value
    assert table.index.name == "init \\ lr"
    assert list(table.index) == ["scratch", "imagenet"]
    assert list(table.columns) == ["0.005", "0.01"]
    two = cells[0]
    assert two["n"] == 2 and two["interval"] == "seeds"
    assert two["mean"] == pytest.approx(0.32)
    assert table.loc["scratch", "0.005"] == (
        f"32.0 [{100 * two['low']:.1f}, {100 * two['high']:.1f}] (2)"
    )
    # a single run: its own interval over the val images
    assert table.loc["scratch", "0.01"] == "40.0 [38.0, 43.0] (1)"
    # one of its runs on another mmdet: marked, the field named
    assert table.loc["imagenet", "0.005"].startswith("51.0 [")
    assert table.loc["imagenet", "0.005"].endswith("(2) ⚠ mmdet")
    assert table.loc["imagenet", "0.01"] == "–"
    assert "⚠ names the fields of the reproducibility record" in texts(at.caption)

    (figure,) = charts(at).values()
    (heat,) = figure["data"]
    assert heat["type"] == "heatmap"
    assert heat["y"] == ["scratch", "imagenet"] and heat["x"] == ["0.005", "0.01"]
    assert heat["z"] == [[32.0, 40.0], [51.0, None]]
    assert "n = 1 of 2 runs" in heat["text"][0][1]
    assert "95% interval [38.0, 43.0] over val images" in heat["text"][0][1]
    assert "over seeds" in heat["text"][0][0] and "record differs: mmdet" in heat["text"][1][0]
    assert "no scored run yet (1 failed, 1 queued)" in heat["text"][1][1]
    # no data fraction among the axes: no curve
    assert not [title for title in charts(at) if "vs data fraction" in title]


def test_rows_columns_and_metric_are_the_users_choice(api, grids, as_admin):
    at = laid_out(open_page("experiments", experiment=grids.matrix), grids.matrix, "lr", "init")
    shown(at)
    table = at.dataframe[1].value
    assert table.index.name == "lr \\ init"
    assert list(table.index) == ["0.005", "0.01"]
    assert table.loc["0.01", "scratch"] == "40.0 [38.0, 43.0] (1)"

    # the runs were scored on mAP only: nothing to show on mAP50
    at.selectbox(key="experiments-metric").select("bbox_mAP_50").run()
    shown(at)
    table = at.dataframe[1].value
    assert set(table.to_numpy().ravel()) <= {"–", "– ⚠ mmdet"}
    assert "the heatmap of mAP50 shows once one has" in texts(at.info)


def test_a_cell_leads_to_its_jobs(api, grids, as_admin):
    at = open_page("experiments", experiment=grids.matrix)
    cells = detail(api, grids.matrix)["cells"]
    at.selectbox(key=f"experiments-{grids.matrix}-cell").select(1).run()
    shown(at)
    links = {
        link.proto.label: f"{link.proto.page}?{link.proto.query_string}"
        for link in at.get("page_link")
    }
    for job_id in cells[1]["job_ids"]:
        (label,) = [label for label in links if label.startswith(f"#{job_id} ")]
        assert links[label].endswith(f"run?job={job_id}")
        status = api.get(f"/jobs/{job_id}").json()["status"]
        assert label.endswith(status)


def test_the_data_fraction_curve_and_a_heatmap_per_slice(api, grids, as_admin):
    at = open_page("experiments", experiment=grids.low_data)
    at = laid_out(at, grids.low_data, "data_fraction", "init")
    shown(at)
    figures = charts(at)
    # rows by data fraction, columns by init, a slice per batch size
    assert "mAP (%) by data_fraction × init · batch_size=2" in figures
    slice_four = figures["mAP (%) by data_fraction × init · batch_size=4"]["data"][0]
    assert slice_four["z"] == [[None, None], [None, None], [None, 60.0]]
    assert len(at.dataframe) == 1 + 2  # the list, then a table per slice

    title = "mAP vs data fraction, a line per init × batch_size (95% intervals as bands)"
    curve = figures[title]
    assert curve["layout"]["xaxis"]["type"] == "log"
    assert curve["layout"]["xaxis"]["ticktext"] == ["10%", "50%", "100%"]
    traces = {trace["name"]: trace for trace in curve["data"]}
    line = traces["init=imagenet, batch_size=2"]
    assert line["x"] == [0.1, 0.5, 1.0]
    assert line["y"] == [15.0, 35.0, 60.0]
    band = traces["init=imagenet, batch_size=2 interval"]
    assert band["fill"] == "toself"
    assert band["x"] == [0.1, 0.5, 1.0, 1.0, 0.5, 0.1]
    assert band["y"] == [18.0, 38.0, 63.0, 58.0, 33.0, 13.0]
    assert traces["init=scratch, batch_size=2"]["y"] == [5.0, 25.0, 50.0]
    assert traces["init=imagenet, batch_size=4"]["x"] == [1.0]
    assert traces["init=scratch, batch_size=4"]["x"] == []  # nothing scored yet


@pytest.fixture
def served(monkeypatch) -> dict[str, bytes]:
    """What the page's download buttons serve, by file name."""
    files: dict[str, bytes] = {}
    add = MediaFileManager.add

    def keep(self, path_or_data, mimetype, coordinates, file_name=None, **kwargs):
        files[file_name] = path_or_data
        return add(self, path_or_data, mimetype, coordinates, file_name=file_name, **kwargs)

    monkeypatch.setattr(MediaFileManager, "add", keep)
    return files


def test_the_report_downloads_hold_the_apis_text(api, grids, as_admin, served):
    at = laid_out(open_page("experiments", experiment=grids.matrix), grids.matrix, "lr", "init")
    shown(at)
    labels = [button.label for button in at.get("download_button")]
    assert labels == ["Report (Markdown)", "Report (CSV)"]
    report = f"/experiments/{grids.matrix}/report"
    markdown = api.get(report, params={"rows": "lr", "cols": "init"}).text
    assert served[f"experiment_{grids.matrix}_bbox_mAP.md"].decode() == markdown
    assert "## bbox_mAP: lr x init" in markdown  # laid out as the page shows it
    csv = api.get(report, params={"format": "csv"}).text
    assert served[f"experiment_{grids.matrix}_bbox_mAP.csv"].decode() == csv


def test_a_viewer_sees_the_results_but_no_form_and_no_cancel(grids, signed_in, make_user):
    _, viewer_token = make_user("viewer")
    signed_in(viewer_token)
    at = laid_out(open_page("experiments", experiment=grids.matrix), grids.matrix, "init", "lr")
    shown(at)
    assert "You are signed in as a viewer: starting experiments needs the member role" in (
        texts(at.info)
    )
    assert not at.expander and not at.text_area
    assert not [b for b in at.button if "Start" in b.label or "Cancel" in b.label]
    assert at.dataframe[1].value.loc["scratch", "0.01"] == "40.0 [38.0, 43.0] (1)"
    assert at.get("download_button")  # reading is for everyone


def test_a_member_cancels_their_own_experiment_only(api, grids, signed_in, make_user):
    experiment = create(
        grids.url,
        grids.member_token,
        {
            "name": "to cancel",
            "base": {**BASE, "dataset_id": grids.dataset_id, "iterations": 10, "batch_size": 2},
            "axes": {"lr": [0.005, 0.01]},
        },
    )
    cancel = f"experiments-cancel-{experiment['id']}"
    _, other_token = make_user("member")
    signed_in(other_token)
    at = open_page("experiments", experiment=experiment["id"])
    shown(at)
    assert not [b for b in at.button if b.key == cancel]
    assert f"Started by {grids.member}: they or an admin can cancel it." in texts(at.caption)

    signed_in(grids.member_token)
    at = open_page("experiments", experiment=experiment["id"])
    shown(at)
    # one column: the only axis is the rows'
    assert list(at.dataframe[1].value.columns) == ["mAP"]
    at.button(key=cancel).click().run()
    shown(at)
    assert detail(api, experiment["id"])["status_counts"] == {"cancelled": 2}
    assert not [b for b in at.button if b.key == cancel]
    assert "; the runs that had finished stay." in texts(at.caption)
    assert at.get("progress")[0].proto.text == "2 of 2 jobs finished"


def test_a_member_starts_one_from_a_template(api, grids, signed_in):
    signed_in(grids.member_token)
    at = open_page("experiments")
    shown(at)
    templates = {t["name"]: t for t in api.get("/experiments/templates").json()}
    at.selectbox(key="experiments-template").select("low-data-study").run()
    low = templates["low-data-study"]
    assert low["description"] in texts(at.caption)
    axes = at.text_area(key="experiments-start-axes-low-data-study")
    assert json.loads(axes.value) == low["axes"]  # filled in from the template
    assert at.number_input(key="experiments-start-repeats-low-data-study").value == low["repeats"]
    before = api.get("/experiments").json()["total"]

    axes.input("{not json")
    at.button(key=START).click().run()
    assert "The axes or the base spec are not valid JSON" in texts(at.error)

    unknown = {"weights_id": 999_999}
    at.text_area(key="experiments-start-axes-low-data-study").input(
        json.dumps({"data_fraction": [0.1, 1.0], "init": ["scratch", unknown]})
    )
    at.button(key=START).click().run()
    assert not at.exception
    error = texts(at.error)
    assert "The API refused this experiment" in error
    assert "2 of 4 cells are refused; nothing was queued" in error
    for fraction in (0.1, 1.0):
        assert f"- **data_fraction={fraction}, init=weights:999999**: " in error
    assert "999999" in error.split("**: ", 1)[1]
    assert api.get("/experiments").json()["total"] == before

    at.text_area(key="experiments-start-axes-low-data-study").input(
        json.dumps({"data_fraction": [0.1, 1.0], "init": ["scratch"]})
    )
    at.number_input(key="experiments-start-repeats-low-data-study").set_value(1)
    at.text_input(key="experiments-start-name-low-data-study").input("low data, scratch")
    at.selectbox(key="experiments-start-dataset").select(grids.dataset_id)
    at.button(key=START).click().run()
    shown(at)
    newest = api.get("/experiments").json()["items"][0]
    assert newest["name"] == "low data, scratch" and newest["owner"] == grids.member
    assert newest["template"] == "low-data-study" and newest["jobs"] == 2
    assert newest["base_spec"] == {**low["base"], "dataset_id": grids.dataset_id}
    assert f"Experiment #{newest['id']} low data, scratch started: 2 jobs in 2 cells" in texts(
        at.success
    )
    # the new one is the one shown
    assert at.header[0].value == f"#{newest['id']} low data, scratch"
    assert at.query_params["experiment"] == str(newest["id"])
    assert at.get("progress")[0].proto.text == "0 of 2 jobs finished"


@pytest.mark.browser
def test_the_progress_and_matrix_move_as_jobs_finish_in_a_browser(
    grids,
    admin_token,
    pg_engine,
    tmp_path,
    page,  # noqa: F811
):
    experiment = create(
        grids.url,
        grids.member_token,
        {
            "name": "watched",
            "base": {**BASE, "dataset_id": grids.dataset_id, "iterations": 10, "batch_size": 2},
            "axes": {"lr": [0.005, 0.01]},
        },
    )
    env = {**os.environ, "DETLAB_API_URL": grids.url, "DETLAB_API_TOKEN": admin_token}
    with served_dashboard(env, tmp_path / "streamlit.log") as url:
        page.goto(f"{url}/experiments?experiment={experiment['id']}")
        page.get_by_text("0 of 2 jobs finished").wait_for()
        assert "No cell has a scored run yet" in page.content()
        with Session(pg_engine, expire_on_commit=False) as session:
            score(session, experiment["cells"][0]["job_ids"][0], 0.42, 0.40, 0.45, "3.3.0")
        # no click: the page reads the grid again while jobs are open
        page.get_by_text("1 of 2 jobs finished").wait_for(timeout=60_000)
        page.get_by_text("mAP (%) by lr").wait_for()  # the heatmap, now that a cell has a score
