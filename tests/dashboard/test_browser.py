"""The dashboard end to end in a real headless browser (Debian's chromium, driven by Playwright).

`streamlit run dashboard/app.py` serves the pages from its own process, against the API process
of the test session, signed in with an admin's token from DETLAB_API_TOKEN (and once without
it, to sign in on the form); screenshots are saved under test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from dashboard_seed import ROOT, seed_runs

CHROMIUM = os.environ.get("DETLAB_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "test-artifacts"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def seeded(api, worker, wait_job, shapes):
    return seed_runs(api, wait_job, shapes)


@contextmanager
def served_dashboard(env: dict[str, str], log_path: Path) -> Iterator[str]:
    """The dashboard served by `streamlit run` with this environment: its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = log_path.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "dashboard" / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/_stcore/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "streamlit did not start:\n" + log_path.read_text()
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def dashboard_url(api, admin_token, tmp_path_factory):
    """The dashboard pointed at the test session's API, signed in as an admin by default."""
    env = {**os.environ, "DETLAB_API_URL": str(api.base_url), "DETLAB_API_TOKEN": admin_token}
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
    with served_dashboard(env, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def signed_out_dashboard_url(api, tmp_path_factory):
    """The dashboard with no token of its own: each browser session signs in."""
    env = {k: v for k, v in os.environ.items() if k != "DETLAB_API_TOKEN"}
    env["DETLAB_API_URL"] = str(api.base_url)
    log_path = tmp_path_factory.mktemp("streamlit-signed-out") / "streamlit.log"
    with served_dashboard(env, log_path) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the browser test needs the playwright package (pip install playwright); "
            "it drives the system chromium, no browser download",
            pytrace=False,
        )
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"the browser test needs Debian's chromium at {CHROMIUM}: apt-get install -y chromium",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    # the width the pages are laid out for: every table column and label fits it
    context = browser.new_context(viewport={"width": 1440, "height": 2200})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path))
    return path


def test_sign_in_and_out_in_a_browser(page, signed_out_dashboard_url, api, make_user):
    name, token = make_user("viewer")
    page.goto(f"{signed_out_dashboard_url}/jobs")
    main = page.get_by_test_id("stMain")
    main.get_by_role("heading", name="Sign in to DetLab").wait_for()
    field = main.get_by_label("API token")
    assert field.get_attribute("type") == "password"

    field.fill(f"{token}-wrong")
    main.get_by_role("button", name="Sign in").click()
    main.get_by_text("The API refused this token").wait_for()
    screenshot(page, "sign-in-refused")

    field.fill(token)
    main.get_by_role("button", name="Sign in").click()
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_text(f"Signed in as {name} (viewer)").wait_for()
    main.get_by_role("heading", name="Jobs").wait_for()  # the page asked for
    main.get_by_text("You are signed in as a viewer").wait_for()
    assert token not in page.url
    screenshot(page, "signed-in")

    sidebar.get_by_role("button", name="Sign out").click()
    main.get_by_role("heading", name="Sign in to DetLab").wait_for()
    # the sidebar is redrawn after the main area: wait for the old line to go (up to 15 s)
    sidebar.get_by_text("Signed in as").wait_for(state="detached", timeout=15_000)
    assert sidebar.get_by_text("Signed in as").count() == 0


def test_leaderboard_in_a_browser(page, dashboard_url, seeded):
    page.goto(f"{dashboard_url}/?dataset={seeded.dataset_id}")
    main = page.get_by_test_id("stMain")
    main.get_by_role("heading", name="Leaderboard").wait_for()
    main.get_by_text("2 of 2 finished runs on").wait_for()
    table = main.get_by_test_id("stDataFrame")
    table.wait_for()
    # the chart is drawn by plotly in the page: its title and axis are text in the DOM
    main.get_by_text("mAP by backbone (mean ± std over runs)").wait_for()
    assert main.locator(".js-plotly-plot .xtick").filter(has_text="resnet18").count() == 1
    page.wait_for_timeout(500)  # let the table's canvas paint before the picture
    assert screenshot(page, "leaderboard").stat().st_size > 0

    page.goto(f"{dashboard_url}/run?job={seeded.job_a['id']}")
    main.get_by_role("heading", name=f"#{seeded.job_a['id']} · dash-a").wait_for()
    main.get_by_text("Learning rate").first.wait_for()
    # the metrics may be drawn after the chart: wait for the sixth before counting them
    main.get_by_test_id("stMetric").nth(5).wait_for()
    assert main.get_by_test_id("stMetric").count() == 6
    screenshot(page, "run")


def test_predictions_explorer_in_a_browser(page, dashboard_url, seeded, api):
    job_id = seeded.job_a["id"]
    page.goto(f"{dashboard_url}/explorer?job={job_id}")
    main = page.get_by_test_id("stMain")
    main.get_by_role("heading", name="Predictions explorer").wait_for()
    items = api.get(f"/jobs/{job_id}/images", params={"limit": 24}).json()["items"]
    tiles = main.get_by_test_id("stImage").locator("img")
    page.wait_for_function(
        "n => [...document.querySelectorAll('[data-testid=stMain] [data-testid=stImage] img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= n",
        arg=len(items),
    )
    assert tiles.count() == len(items)
    main.get_by_text(items[0]["file_name"]).first.wait_for()
    screenshot(page, "explorer")

    main.get_by_role("button", name="Enlarge").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text(f"{items[0]['file_name']}").first.wait_for()
    drawn_from = api.get("/analysis/legend").json()["defaults"]["draw_score_thr"]
    drawn = api.get(
        f"/jobs/{job_id}/images/{items[0]['image_id']}/detections",
        params={"score_thr": drawn_from, "show": "gt,tp,errors"},
    ).json()["detections"]
    dialog.get_by_text(f"Predictions drawn, score ≥ {drawn_from:.2f} ({len(drawn)})").wait_for()
    if drawn:  # the worst image of a 30-iteration model may have no prediction that high
        dialog.get_by_role("columnheader", name="outcome").wait_for()  # the box list
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')]"
        ".some(img => img.complete && img.naturalWidth > 0)"
    )
    assert f"image={items[0]['image_id']}" in page.url
    screenshot(page, "explorer-enlarged")


def loaded_images(page, where: str, count: int) -> None:
    """Wait until `count` images under the CSS selector `where` have loaded."""
    page.wait_for_function(
        "([where, n]) => [...document.querySelectorAll(where + ' [data-testid=stImage] img')]"
        ".filter(img => img.complete && img.naturalWidth > 0).length >= n",
        arg=[where, count],
    )


def test_walk_from_the_leaderboard_to_a_confusion_and_a_comparison(
    page, dashboard_url, seeded, api
):
    """Leaderboard -> its best run -> the images behind its largest confusion -> the two runs
    compared image by image, as a user clicks through them."""
    board = api.get("/leaderboard", params={"dataset": seeded.dataset_id}).json()["items"]
    best = board[0]["job_id"]
    page.goto(f"{dashboard_url}/?dataset={seeded.dataset_id}")
    main = page.get_by_test_id("stMain")
    table = main.get_by_test_id("stDataFrame")
    table.wait_for()
    page.wait_for_timeout(1000)  # the grid paints its rows on a canvas
    table.click(position={"x": 18, "y": 35 + 17})  # the first row's selection box
    page.wait_for_url(f"**/run?job={best}")

    confusion = api.get(f"/jobs/{best}/evaluation").json()["analysis"]["confusion"]
    labels, matrix = confusion["labels"], confusion["matrix"]
    # the first of the largest confusions, as the run page lists them
    count, gt, predicted = min(
        (
            (matrix[r][c], labels[r], labels[c])
            for r in range(len(labels))
            for c in range(len(labels))
            if r != c
        ),
        key=lambda cell: (-cell[0], cell[1], cell[2]),
    )
    assert count > 0  # a 30-iteration model misses objects, at least
    main.get_by_role("link").filter(has_text=f"{gt} → {predicted} ({count})").click()
    page.wait_for_url("**/explorer?*")
    assert f"gt_class={gt}" in page.url and f"predicted_class={predicted}" in page.url
    main.get_by_text(f"Confusion-matrix cell: ground truth {gt}, predicted {predicted}").wait_for()
    cell = {"gt_class": gt, "predicted_class": predicted}
    listing = api.get(f"/jobs/{best}/images", params={**cell, "limit": 24}).json()
    assert sum(item["selected"] for item in listing["items"]) <= count
    loaded_images(page, "[data-testid=stMain]", len(listing["items"]))
    assert main.get_by_test_id("stImage").count() == len(listing["items"])
    first = listing["items"][0]
    caption = f"{first['file_name']} · {listing['selected_label']}: {first['selected']}"
    main.get_by_text(caption).first.wait_for()
    screenshot(page, "explorer-confusion")

    # what the first tile draws: the cell's boxes and nothing else
    main.get_by_role("button", name="Enlarge").first.click()
    dialog = page.get_by_role("dialog")
    drawn = api.get(
        f"/jobs/{best}/images/{first['image_id']}/detections",
        params={**cell, "score_thr": confusion["score_thr"], "show": "gt,tp,errors"},
    ).json()
    assert drawn["detections"] or drawn["ground_truth"]
    assert {g["category"] for g in drawn["ground_truth"]} <= {gt}
    assert {d["category"] for d in drawn["detections"]} <= {predicted}
    dialog.get_by_text(
        f"Predictions drawn, score ≥ {confusion['score_thr']:.2f} ({len(drawn['detections'])})"
    ).wait_for()
    dialog.get_by_text(f"{len(drawn['ground_truth'])} ground-truth boxes drawn").wait_for()
    rows = dialog.locator("table tbody tr")
    if drawn["detections"]:
        rows.first.wait_for()
    assert rows.count() == len(drawn["detections"])
    for row in range(rows.count()):  # the box list: each row a prediction of the cell's class
        assert rows.nth(row).locator("td, th").all_inner_texts()[0] == predicted
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')]"
        ".some(img => img.complete && img.naturalWidth > 0)"
    )
    screenshot(page, "explorer-confusion-enlarged")

    # the two runs, image by image
    a, b = seeded.job_a["id"], seeded.job_b["id"]
    compared = api.get(f"/jobs/{a}/compare/{b}/images", params={"limit": 6}).json()
    assert compared["better_in_a"] + compared["better_in_b"] > 0  # two seeds differ somewhere
    page.goto(f"{dashboard_url}/compare?jobs={a},{b}&dataset={seeded.dataset_id}")
    main.get_by_text(compared["sentence"][:40]).wait_for()
    tab = f"Better in #{a} dash-a ("
    main.get_by_role("tab", name=tab).wait_for()
    main.get_by_role("tab", name=f"Better in #{b} dash-b (").wait_for()
    side = "a" if compared["better_in_a"] else "b"
    if side == "b":
        main.get_by_role("tab", name=f"Better in #{b} dash-b (").click()
    pairs = api.get(f"/jobs/{a}/compare/{b}/images", params={"better": side, "limit": 6}).json()[
        "items"
    ]
    panel = main.get_by_role("tabpanel").filter(visible=True)
    panel.get_by_text(pairs[0]["file_name"]).first.wait_for()
    page.wait_for_function(
        "n => [...document.querySelectorAll('[role=tabpanel] [data-testid=stImage] img')]"
        ".filter(img => img.complete && img.naturalWidth > 0 && img.offsetParent).length >= n",
        arg=2 * len(pairs),
    )
    counts = pairs[0]["a"]
    panel.get_by_text(
        f"#{a} dash-a: {counts['tp']} TP · {counts['errors']} errors · {counts['missed']} missed"
    ).first.wait_for()
    main.get_by_text("Confusions that changed").wait_for()
    # the picture shows the pairs: the part of the page from the sentence on
    main.get_by_text("Where they differ, image by image").evaluate(
        "heading => heading.scrollIntoView({block: 'start'})"
    )
    page.wait_for_timeout(500)
    screenshot(page, "compare")


@pytest.fixture(scope="module")
def demo_board(pg_engine, shapes, tmp_path_factory):
    """A leaderboard as the demo leaves it: its two RetinaNet runs (from scratch, and from a
    MoCo v2 pretraining's weights entry), each scored from a
    predictions file, as the worker scores them (metrics, intervals, analysis)."""
    import json
    from datetime import UTC, datetime, timedelta

    import factories
    from sqlalchemy.orm import Session

    from backend.evaluations.analysis_service import evaluate_job
    from backend.jobs.models import JobKind, JobStatus
    from scripts.demo import FINETUNE

    folder = tmp_path_factory.mktemp("demo-board")
    gt = json.loads(Path(shapes.val_ann).read_text())
    ids = {c["name"]: c["id"] for c in gt["categories"]}
    with Session(pg_engine, expire_on_commit=False) as session:
        dataset = factories.dataset(session, shapes=shapes, name="demo-board")
        pretrain = factories.job(
            session,
            kind=JobKind.pretrain,
            status=JobStatus.succeeded,
            dataset_id=dataset.id,
            name="demo mocov2 pretrain",
        )
        weights = factories.weights(  # named as a pretrain job names its weights
            session,
            name=f"mocov2-resnet18-job{pretrain.id}",
            method="mocov2",
            producing_job_id=pretrain.id,
        )
        finished = datetime.now(UTC)
        runs = {}
        for number, (name, init) in enumerate(
            (("demo scratch", "scratch"), ("demo mocov2 init", {"weights_id": weights.id}))
        ):
            job = factories.job(
                session,
                status=JobStatus.succeeded,
                dataset_id=dataset.id,
                name=name,
                spec={**FINETUNE, "init": init},
                finished_at=finished + timedelta(minutes=number),
            )
            # imperfect, as the demo's models are: scratch misses every third object and
            # calls every rectangle a square; both place their boxes a little off
            results = [
                {
                    "image_id": ann["image_id"],
                    "category_id": ids["square"]
                    if number == 0 and ann["category_id"] == ids.get("rectangle")
                    else ann["category_id"],
                    "bbox": [ann["bbox"][0] + 0.08 * (k % 4) * ann["bbox"][2], *ann["bbox"][1:]],
                    "score": 0.9 - 0.01 * (k % 7),
                }
                for k, ann in enumerate(gt["annotations"])
                if k % (3 + 3 * number)
            ]
            path = folder / f"{number}.bbox.json"
            path.write_text(json.dumps(results))
            evaluate_job(session=session, job_id=job.id, predictions_path=path, resamples=200)
            runs[name] = job.id
    return dataset.id, runs


def test_the_demo_leaderboard_fits_the_page(page, dashboard_url, demo_board):
    """Every column of the demo's leaderboard, with its runs tested against the leader, is
    on a 1440 px page: the table scrolls neither sideways nor hides a column."""
    dataset_id, runs = demo_board
    page.goto(f"{dashboard_url}/?dataset={dataset_id}")
    main = page.get_by_test_id("stMain")
    main.get_by_text("2 of 2 finished runs on").wait_for()
    main.get_by_text("vs leader: ").wait_for()  # the runs were tested: the widest table
    table = main.get_by_test_id("stDataFrame")
    table.wait_for()
    page.wait_for_timeout(1000)  # the grid sizes its columns to their text, then paints
    scroller = table.locator(".dvn-scroller").first
    overflow = scroller.evaluate("grid => grid.scrollWidth - grid.clientWidth")
    screenshot(page, "leaderboard-demo")
    assert overflow <= 1, f"the leaderboard is {overflow} px wider than the page"
