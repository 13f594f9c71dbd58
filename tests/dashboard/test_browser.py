"""The dashboard end to end in a real headless browser (Debian's chromium, driven by Playwright).

`streamlit run dashboard/app.py` serves the pages from its own process, against the API process
of the test session; screenshots are saved under test-artifacts/ at the repository root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
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
def seeded(api, worker, wait_job, shapes_payload):
    return seed_runs(api, wait_job, shapes_payload)


@pytest.fixture(scope="module")
def dashboard_url(api, tmp_path_factory):
    """The dashboard served by `streamlit run`, pointed at the test session's API."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log_path = tmp_path_factory.mktemp("streamlit") / "streamlit.log"
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
        env={**os.environ, "DETLAB_API_URL": str(api.base_url)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
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
    process.terminate()
    process.wait(timeout=30)
    log.close()


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
    context = browser.new_context(viewport={"width": 1500, "height": 2200})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(path))
    return path


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
    dialog.get_by_text(f"Predictions with score ≥ {drawn_from:.2f}").wait_for()
    dialog.get_by_role("columnheader", name="outcome").wait_for()  # the box list
    page.wait_for_function(
        "() => [...document.querySelectorAll('[role=dialog] img')]"
        ".some(img => img.complete && img.naturalWidth > 0)"
    )
    assert f"image={items[0]['image_id']}" in page.url
    screenshot(page, "explorer-enlarged")
