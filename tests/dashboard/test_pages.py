"""Every dashboard page rendered with AppTest against a real API process and a real worker.

The API (uvicorn) serves a Postgres database seeded through its own endpoints: a dataset and
two finished tiny fine-tune runs. The pages are asserted on what they show.
"""

from __future__ import annotations

import base64
import html
import json
import uuid

import factories
import numpy as np
import pytest
from dashboard_seed import TINY, open_page, seed_runs, texts
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from dashboard import views
from dashboard.client import ApiClient, ApiError, describe_detail

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def seeded(api, worker, wait_job, shapes):
    return seed_runs(api, wait_job, shapes)


@pytest.fixture(autouse=True)
def dashboard_env(request, monkeypatch):
    """Point the pages at the API process, signed in as an admin, for the tests that use it
    (no process otherwise)."""
    if "api" in request.fixturenames:
        monkeypatch.setenv("DETLAB_API_URL", str(request.getfixturevalue("api").base_url))
        monkeypatch.setenv("DETLAB_API_TOKEN", request.getfixturevalue("admin_token"))


def legend(api) -> dict:
    """The analysis' vocabulary as the API serves it; the pages show nothing else."""
    return api.get("/analysis/legend").json()


def plotly_titles(at) -> list[str]:
    titles = []
    for chart in at.get("plotly_chart"):
        title = json.loads(chart.proto.spec).get("layout", {}).get("title", {})
        titles.append(title.get("text", "") if isinstance(title, dict) else str(title))
    return titles


def plotly_values(values) -> list:
    """A trace's array as a list: plotly writes numpy arrays as {"dtype", "bdata"} (base64)."""
    if isinstance(values, dict) and "bdata" in values:
        return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).tolist()
    return list(values)


def forest_points(spec: str) -> dict[str, tuple[float, str]]:
    """A forest plot's rows: label -> (difference drawn, the trace it is in)."""
    return {
        label: (x, trace["name"])
        for trace in json.loads(spec)["data"]
        for label, x in zip(plotly_values(trace["y"]), plotly_values(trace["x"]), strict=True)
    }


def test_leaderboard_ranks_the_runs_and_filters_them(api, seeded):
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    assert not at.exception and not at.error
    board = api.get("/leaderboard", params={"dataset": seeded.dataset_id}).json()["items"]
    table = at.dataframe[0].value
    assert list(table["job_id"]) == [row["job_id"] for row in board]  # best mAP first
    assert set(table["job_id"]) == {seeded.job_a["id"], seeded.job_b["id"]}
    assert "2 of 2 finished runs" in texts(at.caption)

    row = table.set_index("job_id").loc[seeded.job_a["id"]]
    expected = next(r for r in board if r["job_id"] == seeded.job_a["id"])
    assert row["mAP50"] == pytest.approx(round(100 * expected["bbox_mAP_50"], 1))
    assert (row["backbone"], row["init"], row["neck"]) == ("resnet18", "scratch", "fpn")
    assert (row["image scale"], row["iterations"], row["seed"]) == ("128×128", 30, 0)
    assert row["run"] == f"run?job={seeded.job_a['id']}"
    assert plotly_titles(at) == [
        "mAP of the best 2 runs shown, with 95% intervals",
        "mAP by backbone (mean ± std over runs)",
    ]

    at.multiselect(key="leaderboard-filter-seed").select(1).run()
    assert list(at.dataframe[0].value["job_id"]) == [seeded.job_b["id"]]
    assert "1 of 2 finished runs" in texts(at.caption)

    at.segmented_control(key="leaderboard-group").set_value("init").run()
    assert plotly_titles(at)[-1] == "mAP by init (mean ± std over runs)"


def test_leaderboard_shows_the_ranked_metric_with_its_interval(api, seeded):
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    assert not at.exception and not at.error
    board = api.get("/leaderboard", params={"dataset": seeded.dataset_id}).json()["items"]
    shown = at.dataframe[0]
    # every metric is shown with its interval, none as a bare number
    assert "mAP [95% CI]" in shown.proto.column_order
    assert "mAP50 [95% CI]" in shown.proto.column_order
    assert "mAP" not in shown.proto.column_order and "mAP50" not in shown.proto.column_order
    table = shown.value.set_index("job_id")
    for row in board:
        interval = row["interval"]
        assert interval is not None and interval["metric"] == "bbox_mAP"  # the worker's
        assert table.loc[row["job_id"], "mAP [95% CI]"].strip() == (
            f"{100 * row['bbox_mAP']:.1f} [{100 * interval['low']:.1f}, "
            f"{100 * interval['high']:.1f}]"
        )
    assert "every other metric column carries its own interval" in texts(at.caption)
    for row in board:
        low50, high50 = (100 * row["intervals"]["bbox_mAP_50"][b] for b in ("low", "high"))
        assert table.loc[row["job_id"], "mAP50 [95% CI]"].strip() == (
            f"{100 * row['bbox_mAP_50']:.1f} [{low50:.1f}, {high50:.1f}]"
        )

    # the chart's whiskers reach the interval's bounds
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    points = {
        label: (y, up, down)
        for trace in chart["data"]
        for label, y, up, down in zip(
            plotly_values(trace["x"]),
            plotly_values(trace["y"]),
            plotly_values(trace["error_y"]["array"]),
            plotly_values(trace["error_y"]["arrayminus"]),
            strict=True,
        )
    }
    for row in board:
        y, up, down = points[f"#{row['job_id']} {row['name']}"]
        assert y == pytest.approx(100 * row["bbox_mAP"], abs=0.05)
        assert y + up == pytest.approx(max(y, 100 * row["interval"]["high"]), abs=0.06)
        assert y - down == pytest.approx(min(y, 100 * row["interval"]["low"]), abs=0.06)

    # ranked by another metric, that metric carries the interval
    at.selectbox(key="leaderboard-metric").select("bbox_mAP_50").run()
    assert "mAP50 [95% CI]" in at.dataframe[0].proto.column_order
    assert "mAP [95% CI]" in at.dataframe[0].proto.column_order


def test_leaderboard_marks_the_runs_tied_with_the_leader(api, seeded):
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    assert not at.exception and not at.error
    tested = api.get(
        "/leaderboard", params={"dataset": seeded.dataset_id, "significance": "true", "limit": 50}
    ).json()["items"]
    leader, other = tested[0], tested[1]
    assert leader["vs_leader"] == {"leader": True}
    found = other["vs_leader"]
    verdict = "tied" if found["tied_with_leader"] else "worse"
    p = found["p_holm"]
    p_text = "p < 0.001" if p < 0.001 else f"p = {p:.2g}"

    shown = at.dataframe[0]
    assert "vs leader" in shown.proto.column_order  # on by default: two runs
    column = shown.value.set_index("job_id")["vs leader"]
    assert column[leader["job_id"]] == "leader"
    assert column[other["job_id"]] == f"{verdict} ({p_text})"
    assert (
        "not significantly different from the top row (paired bootstrap over val images, "
        "Holm-corrected over the 2 rows tested" in texts(at.caption)
    )
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert {trace["name"] for trace in chart["data"]} == {"leader", verdict}

    at.checkbox(key=f"leaderboard-significance-{seeded.dataset_id}").uncheck().run()
    assert "vs leader" not in at.dataframe[0].proto.column_order
    assert "Holm-corrected" not in texts(at.caption)


def test_leaderboard_opens_on_the_dataset_with_the_most_finished_runs(api, seeded, shapes):
    name = f"empty-{uuid.uuid4().hex[:6]}"
    created = api.post("/datasets", json={"name": name, **factories.dataset_files(shapes)})
    assert created.status_code == 201, created.text
    at = open_page("leaderboard")
    assert not at.exception and not at.error
    finished = {
        d["id"]: api.get("/leaderboard", params={"dataset": d["id"], "limit": 1}).json()["total"]
        for d in api.get("/datasets").json()["items"]
    }
    busiest = max(finished.values())
    chosen = at.selectbox(key="leaderboard-dataset").value
    assert chosen != created.json()["id"]  # the newest, with no run
    assert finished[chosen] == busiest >= 2
    at = open_page("leaderboard", dataset=created.json()["id"])  # a link still wins
    assert f"No fine-tune job on {name} has finished yet" in texts(at.info)


def test_leaderboard_chart_and_cells_read_without_overlaps_or_none(api, seeded):
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    assert not at.exception and not at.error
    # the group chart's counts are under its bars, not printed on them under the error bars
    bars = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert "text" not in bars
    assert plotly_values(bars["x"]) == ["resnet18<br>n=2"]
    # every cell shown has a value or the one empty mark, and no column is left out of view
    shown = at.dataframe[0]
    table = shown.value
    order = list(shown.proto.column_order)
    assert not table[order].isna().any().any()
    board = api.get("/leaderboard", params={"dataset": seeded.dataset_id}).json()["items"]
    labels = {m["key"]: m["label"] for m in legend(api)["metrics"]}
    for row in board:
        cells = table.set_index("job_id").loc[row["job_id"]]
        for key, label in labels.items():
            if views.ap_points(row[key]) is None:
                assert cells[f"{label} [95% CI]"] == "–"
    # the axes the two runs share are said once, not repeated in columns
    assert "seed" in order and "backbone" not in order and "init" not in order
    # the two runs' records agree: no record column
    assert all(row["record_differs"] == [] for row in board) and "record" not in order
    assert "The same for every run shown: detector faster_rcnn · backbone resnet18" in texts(
        at.caption
    )


def test_leaderboard_marks_the_runs_whose_record_differs(api, pg_engine, seeded):
    job_id = seeded.job_b["id"]
    kept = api.get(f"/jobs/{job_id}").json()["record"]

    def store(record: dict) -> None:
        with pg_engine.begin() as connection:
            connection.execute(
                text("UPDATE jobs SET record = CAST(:record AS jsonb) WHERE id = :job"),
                {"record": json.dumps(record), "job": job_id},
            )

    store({**kept, "mmdet": "0.0.1"})  # as if its worker had another mmdet
    try:
        at = open_page("leaderboard", dataset=seeded.dataset_id)
        assert not at.exception and not at.error
        shown = at.dataframe[0]
        assert "record" in shown.proto.column_order
        # two runs that disagree: neither is the odd one, both are marked
        assert set(shown.value["record"]) == {"⚠ differs: mmdet"}
        assert "ran in another environment or on other data" in texts(at.caption)
    finally:
        store(kept)


def test_leaderboard_row_selection_opens_the_run(seeded):
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    position = list(at.dataframe[0].value["job_id"]).index(seeded.job_b["id"])
    at.session_state["leaderboard-table"] = {"selection": {"rows": [position], "columns": []}}
    at.run()
    assert at.query_params["job"] == str(seeded.job_b["id"])
    assert at.header[0].value.startswith(f"#{seeded.job_b['id']} · dash-b")


def test_jobs_page_lists_history_and_shows_the_apis_validation_message(api, seeded):
    at = open_page("jobs")
    assert not at.exception and not at.error
    history = at.dataframe[0].value
    assert {"dash-a", "dash-b"} <= set(history["name"])
    assert set(history.loc[history["name"].isin(["dash-a", "dash-b"]), "status"]) == {"succeeded"}
    assert set(history.loc[history["name"].isin(["dash-a", "dash-b"]), "init / method"]) == {
        "scratch"
    }

    at.selectbox(key="finetune-dataset_id").select(seeded.dataset_id)
    at.selectbox(key="finetune-backbone").select("swin_t")
    at.selectbox(key="finetune-norm").select("bn")
    at.selectbox(key="finetune-init").select("scratch")
    at.button(key="FormSubmitter:submit-finetune-Submit fine-tune job").click().run()
    # the same choices sent straight to the API: the page shows its message, word for word
    spec = {"kind": "finetune", "dataset_id": seeded.dataset_id, "epochs": 12}
    refused = api.post(
        "/jobs", json={**spec, "backbone": "swin_t", "norm": "bn", "init": "scratch"}
    )
    assert refused.status_code == 422
    message = describe_detail(refused.json()["detail"])
    assert "swin_t" in message
    assert f"The API refused this job:\n\n{message}" in texts(at.error)

    at.text_area(key="json-spec-finetune").input('{"dataset_id": 1, "epochs": ')
    at.button(key="FormSubmitter:submit-json-Submit job").click().run()
    assert "not valid JSON" in texts(at.error)


def test_jobs_page_submits_shows_live_progress_and_cancels(api, wait_job, seeded):
    at = open_page("jobs")
    at.selectbox(key="finetune-dataset_id").select(seeded.dataset_id)
    at.selectbox(key="finetune-backbone").select("resnet18")
    at.selectbox(key="finetune-init").select("scratch")
    at.text_input(key="finetune-name").input("dash-long")
    at.radio(key="finetune-unit").set_value("iterations")
    for field, value in {
        "length": 5000,
        "width": 128,
        "height": 128,
        "lr": 0.005,
        "warmup_iters": 10,
        "num_workers": 0,
        "roi_samples_per_image": 64,
        "test_proposals_per_image": 100,
        "gpus": 1,
        "grad_clip": 5.0,
    }.items():
        at.number_input(key=f"finetune-{field}").set_value(value)
    at.selectbox(key="finetune-lr_schedule").select("cosine")
    at.button(key="FormSubmitter:submit-finetune-Submit fine-tune job").click().run()
    assert not at.error, texts(at.error)
    assert "queued: #" in texts(at.success)
    job_id = int(texts(at.success).split("#")[1].split(" ")[0])
    job = api.get(f"/jobs/{job_id}").json()
    assert job["name"] == "dash-long" and job["spec"]["iterations"] == 5000
    assert job["spec"]["gpus"] == job["gpus"] == 1
    assert job["spec"]["grad_clip"] == 5.0 and job["spec"]["lr_schedule"] == "cosine"
    assert job["spec"]["roi_samples_per_image"] == TINY["roi_samples_per_image"]

    wait_job(job_id, until=lambda j: j["status"] == "running" and j["progress_iter"] >= 2)
    at = open_page("jobs")
    bars = [bar for bar in at.get("progress") if "iteration" in bar.text]
    assert len(bars) == 1 and "/ 5,000" in bars[0].text and "ETA" in bars[0].text

    at.button(key=f"cancel-{job_id}").click().run()
    assert api.get(f"/jobs/{job_id}").json()["cancel_requested"] is True
    assert (
        wait_job(job_id, until=lambda j: j["status"] != "running", timeout=60)["status"]
        == "cancelled"
    )


def test_run_page_shows_curves_metrics_breakdown_and_downloads(api, seeded):
    job_id = seeded.job_a["id"]
    at = open_page("run", job=job_id)
    assert not at.exception and not at.error
    assert at.header[0].value == f"#{job_id} · dash-a · resnet18 · scratch · succeeded"
    evaluation = api.get(f"/jobs/{job_id}/evaluation").json()
    shown = {metric.label: metric.value for metric in at.metric}
    assert shown["mAP"] == views.format_ap(evaluation["bbox_mAP"])
    assert shown["mAP50"] == views.format_ap(evaluation["bbox_mAP_50"])
    # a box-only model: its box figures, no empty mask ones
    assert list(shown) == [
        m["label"] for m in legend(api)["metrics"] if m["key"].startswith("bbox_")
    ]
    # each figure's interval under it, and what produced them
    intervals, record = evaluation["intervals"], evaluation["record"]
    mAP = intervals["metrics"]["bbox_mAP"]
    captions = texts(at.caption)
    assert f"95% CI [{100 * mAP['low']:.1f}, {100 * mAP['high']:.1f}]" in captions
    assert (
        f"scored by {record['engine']} · {record['predictions']:,} predictions "
        f"({record['degenerate_predictions']:,} zero-size) · predictions sha256 "
        f"`{record['predictions_sha256'][:12]}` · intervals: {intervals['resamples']:,} "
        f"resamples, seed {intervals['seed']}" in captions
    )

    titles = plotly_titles(at)
    assert {"Losses", "Learning rate", "Validation AP"} <= set(titles)
    if any(ap is not None for ap in evaluation["per_class_ap"].values()):
        assert "AP per class (95% intervals)" in titles
        bars = next(
            json.loads(c.proto.spec)["data"][0]
            for c in at.get("plotly_chart")
            if "AP per class" in c.proto.spec
        )
        for name, x, up in zip(
            plotly_values(bars["y"]),
            plotly_values(bars["x"]),
            plotly_values(bars["error_x"]["array"]),
            strict=True,
        ):
            high = intervals["per_class"][name]["high"]
            assert x + up == pytest.approx(max(x, 100 * high), abs=0.06)
    if evaluation["analysis"] is None:
        assert "error analysis is not available yet" in texts(at.info)
    else:
        assert "dAP50 per error type (AP50 points gained by fixing it)" in titles
        assert any(title.startswith("Confusion matrix") for title in titles)
        counts = at.dataframe[0].value.set_index("outcome")["count"].to_dict()
        assert counts == evaluation["analysis"]["counts"]
        # each error type's bar in the colour of its boxes on the overlays
        colours = {o["name"]: o["colour"] for o in legend(api)["outcomes"]}
        dap = next(c for c in at.get("plotly_chart") if "dAP50" in c.proto.spec)
        bars = json.loads(dap.proto.spec)["data"][0]
        assert bars["marker"]["color"] == [f"rgb{tuple(colours[kind])}" for kind in bars["x"]]
        # each error type and each confusion opens its images in the explorer
        links = {
            link.proto.label: f"{link.proto.page}?{link.proto.query_string}"
            for link in at.get("page_link")
        }
        for kind, count in evaluation["analysis"]["counts"].items():
            if kind in colours and colours[kind] and count and kind != "tp":
                assert "error_type=" + kind in links[f"{kind} ({count:,})"]
        confusion = evaluation["analysis"]["confusion"]
        labels, matrix = confusion["labels"], confusion["matrix"]
        # the first of the largest confusions, as the run page lists them
        largest = min(
            (
                (matrix[r][c], labels[r], labels[c])
                for r in range(len(labels))
                for c in range(len(labels))
                if r != c
            ),
            key=lambda cell: (-cell[0], cell[1], cell[2]),
        )
        if largest[0]:
            count, gt, predicted = largest
            page = links[f"{gt} → {predicted} ({count:,})"]
            assert f"gt_class={gt}" in page and f"predicted_class={predicted}" in page

    downloads = [button.label for button in at.get("download_button")]
    assert {"mmdet config", "evaluation (JSON)"} <= set(downloads)

    # what produced it: versions and hashes (shortened), the whole record to copy
    record = api.get(f"/jobs/{job_id}").json()["record"]
    (shown,) = [e for e in at.expander if e.label == "Reproducibility record"]
    table = texts(shown.markdown)
    assert f"| torch | `{record['torch']}` |" in table
    assert f"| val_ann_sha256 | `{record['val_ann_sha256'][:12]}` |" in table
    assert record["val_ann_sha256"] not in table
    assert json.loads(shown.code[0].value) == record


def test_run_page_without_intervals_says_so_and_scores_again(api, pg_engine, seeded):
    job_id = seeded.job_b["id"]
    kept = api.get(f"/jobs/{job_id}/evaluation").json()["intervals"]
    with pg_engine.begin() as connection:  # as an evaluation stored before intervals were kept
        connection.execute(
            text("UPDATE evaluations SET intervals = NULL WHERE job_id = :job"), {"job": job_id}
        )
    at = open_page("run", job=job_id)
    assert not at.exception and not at.error
    assert f"`POST /jobs/{job_id}/analysis`) computes them" in texts(at.info)
    assert "95% CI" not in texts(at.caption)

    at.button(key="run-rescore").click().run()
    assert not at.exception and not at.error
    assert api.get(f"/jobs/{job_id}/evaluation").json()["intervals"] == kept  # same draws
    assert "computes them" not in texts(at.info)
    assert "95% CI [" in texts(at.caption)


def test_run_page_runs_a_job_again_and_says_whether_it_reproduced(api, wait_job, seeded):
    original = seeded.job_a["id"]
    at = open_page("run", job=original)
    at.button(key="run-rerun").click().run()
    assert not at.exception and not at.error
    rerun = api.get("/jobs", params={"limit": 1}).json()["items"][0]
    assert (
        rerun["rerun_of_id"] == original and rerun["spec"]["seed"] == seeded.job_a["spec"]["seed"]
    )
    assert at.header[0].value.startswith(f"#{rerun['id']} ")  # the re-run is shown now
    finished = wait_job(rerun["id"])
    assert finished["status"] == "succeeded", finished["error"]
    at = open_page("run", job=rerun["id"])
    assert not at.exception and not at.error
    verdict = texts(at.success) + texts(at.warning)
    assert "the original's 95% interval" in verdict
    assert "config differs" not in verdict  # the same spec and seed: the same config


def test_run_page_of_an_unknown_job_says_so(seeded):
    at = open_page("run", job=987654)
    assert not at.exception
    assert "Job #987654 does not exist" in texts(at.warning)


def test_explorer_shows_worst_overlays_and_enlarges_one(api, seeded):
    job_id = seeded.job_a["id"]
    at = open_page("explorer", job=job_id)
    assert not at.exception and not at.error
    listing = api.get(f"/jobs/{job_id}/images", params={"sort": "worst", "limit": 24}).json()
    expected = [item["file_name"] for item in listing["items"]]
    captions = [image.captions[0] for image in at.image]
    assert [caption.split(" · ")[0] for caption in captions] == expected  # worst first
    first = listing["items"][0]
    assert captions[0].startswith(f"{first['file_name']} · {first['tp']} TP")
    # both thresholds, each said for what it is used
    drawn_from = legend(api)["defaults"]["draw_score_thr"]
    caption = texts(at.caption)
    assert f"of {listing['total']}" in caption
    assert f"Counted from score {listing['score_thr']:.2f}. Drawn: every box" in caption
    assert f"Drawn: every box, from score {drawn_from:.2f} (boxes scored " in caption

    at.button(key=f"enlarge-{first['image_id']}").click().run()
    assert at.query_params["image"] == str(first["image_id"])
    found = api.get(
        f"/jobs/{job_id}/images/{first['image_id']}/detections",
        params={"score_thr": drawn_from, "show": "gt,tp,errors"},
    ).json()
    kept = found["detections"]
    assert f"**Predictions drawn, score ≥ {drawn_from:.2f}** ({len(kept)})" in texts(at.markdown)
    if kept:
        boxes = at.table[0].value
        assert list(boxes["outcome"]) == [d["error_type"] for d in kept]
        assert list(boxes["class"]) == [d["category"] for d in kept]

    at.slider(key="explorer-thr").set_value(0.9).run()
    assert not at.exception
    assert len([image for image in at.image if image.captions[0]]) == len(expected)

    at.selectbox(key="explorer-error").select("missed").run()
    missed = api.get(f"/jobs/{job_id}/images", params={"error_type": "missed"}).json()
    grid = [image.captions[0] for image in at.image if image.captions[0]]
    assert [c.split(" · ")[0] for c in grid] == [i["file_name"] for i in missed["items"][:24]]
    # each tile says how many of the chosen type it has, the most first
    assert grid[0].split(" · ")[1] == f"missed ground-truth boxes: {missed['items'][0]['missed']}"
    assert [i["selected"] for i in missed["items"]] == sorted(
        (i["missed"] for i in missed["items"]), reverse=True
    )
    # the chosen error type is drawn from the score its counts start at
    assert at.slider(key="explorer-thr").value == pytest.approx(missed["score_thr"])
    assert at.query_params["error_type"] == "missed"
    assert f"Drawn: of the errors only missed, from score {missed['score_thr']:.2f}." in (
        texts(at.caption)
    )
    at.selectbox(key="explorer-error").select(None).run()
    assert at.slider(key="explorer-thr").value == pytest.approx(drawn_from)
    assert "error_type" not in at.query_params


def test_explorer_class_filter_decides_what_is_listed_and_drawn(api, seeded):
    job_id = seeded.job_a["id"]
    at = open_page("explorer", job=job_id, **{"class": "circle"})
    assert not at.exception and not at.error
    assert at.selectbox(key="explorer-class").value == "circle"  # from the link
    page = api.get(f"/jobs/{job_id}/images", params={"class": "circle"}).json()
    if not page["items"]:
        assert "No image has errors involving circle." in texts(at.info)
        return
    grid = [image.captions[0] for image in at.image if image.captions[0]]
    top = page["items"][0]
    assert grid[0].startswith(
        f"{top['file_name']} · errors involving circle: {top['selected']} · {top['tp']} TP"
    )
    first = page["items"][0]["image_id"]
    at.button(key=f"enlarge-{first}").click().run()
    boxes = at.table[0].value if at.table else None
    if boxes is not None:  # the enlarged image's box list holds circles and circles' errors
        for category, gt_category in zip(boxes["class"], boxes["GT class"], strict=True):
            assert "circle" in (category, gt_category)


def test_explorer_opens_the_images_behind_a_confusion_cell(api, seeded):
    job_id = seeded.job_a["id"]
    confusion = api.get(f"/jobs/{job_id}/evaluation").json()["analysis"]["confusion"]
    labels, matrix = confusion["labels"], confusion["matrix"]
    gt, predicted, count = max(
        (
            (labels[r], labels[c], matrix[r][c])
            for r in range(len(labels))
            for c in range(len(labels))
            if r != c
        ),
        key=lambda cell: cell[2],
    )
    at = open_page("explorer", job=job_id, gt_class=gt, predicted_class=predicted)
    assert not at.exception and not at.error
    page = api.get(
        f"/jobs/{job_id}/images",
        params={"gt_class": gt, "predicted_class": predicted, "limit": 500},
    ).json()
    assert sum(item["selected"] for item in page["items"]) == count
    assert f"Confusion-matrix cell: ground truth **{gt}**, predicted **{predicted}**" in (
        texts(at.info)
    )
    assert at.selectbox(key="explorer-class").disabled
    if count:
        grid = [image.captions[0] for image in at.image if image.captions[0]]
        top = page["items"][0]
        assert grid[0].split(" · ")[1] == f"{page['selected_label']}: {top['selected']}"
        assert at.slider(key="explorer-thr").value == pytest.approx(confusion["score_thr"])
        assert "Drawn: only the boxes that make up this cell" in texts(at.caption)

    next(button for button in at.button if button.label == "Clear").click().run()
    assert "gt_class" not in at.query_params
    assert not at.selectbox(key="explorer-class").disabled


def test_compare_shows_both_runs_metrics_and_class_differences(api, seeded):
    a, b = seeded.job_a["id"], seeded.job_b["id"]
    at = open_page("compare", jobs=f"{a},{b}")
    assert not at.exception and not at.error
    metrics = at.dataframe[0].value
    assert list(metrics.columns) == [f"#{a} dash-a", f"#{b} dash-b", f"Δ #{b} dash-b"]
    evaluation_a = api.get(f"/jobs/{a}/evaluation").json()
    assert metrics.loc["mAP", f"#{a} dash-a"] == views.format_ap(evaluation_a["bbox_mAP"])
    # an AP the val split cannot have reads as every empty cell does, never "None"
    assert not metrics.isna().any().any()
    differing = at.dataframe[1].value
    assert list(differing.index) == ["seed"]
    assert f"AP per class, difference to #{a} dash-a" in plotly_titles(at)

    # is the difference real: the API's sentence, and forest plots of every difference
    compared = api.get(f"/jobs/{a}/compare/{b}").json()
    sentence = compared["sentence"]
    assert f"{sentence[:1].upper()}{sentence[1:]}." in texts(at.info)
    name = f"#{b} dash-b − #{a} dash-a"
    assert f"{name}: per metric (95% CI)" in plotly_titles(at)
    assert f"{name}: AP per class (95% CI)" in plotly_titles(at)
    labels = {m["key"]: m["label"] for m in legend(api)["metrics"]}
    for title, differences in (
        ("per metric", {labels[key]: d for key, d in compared["metrics"].items()}),
        ("AP per class", compared["per_class"]),
    ):
        spec = next(c for c in at.get("plotly_chart") if f"{name}: {title}" in c.proto.spec)
        drawn = forest_points(spec.proto.spec)
        defined = {label: d for label, d in differences.items() if d["estimate"] is not None}
        assert set(drawn) == set(defined)
        for label, d in defined.items():
            x, group = drawn[label]
            assert x == pytest.approx(100 * d["estimate"], abs=0.01)
            significant = d["p_value"] is not None and d["p_value"] < compared["alpha"]
            assert group == ("p < 0.05" if significant else "p ≥ 0.05")
        shapes = json.loads(spec.proto.spec)["layout"]["shapes"]
        assert [shape["x0"] for shape in shapes] == [0]  # the line of no difference

    # image by image: the API's sentence, where each run does better, the pairs drawn
    found = api.get(f"/jobs/{a}/compare/{b}/images", params={"limit": 1}).json()
    assert f"{found['sentence'][:1].upper()}{found['sentence'][1:]}." in texts(at.info)
    tabs = [tab.label for tab in at.tabs]
    for side, name in (("a", f"#{a} dash-a"), ("b", f"#{b} dash-b")):
        count = found[f"better_in_{side}"]
        assert f"Better in {name} ({count:,} image{'' if count == 1 else 's'})" in tabs
    shown = [image.captions[0] for image in at.image]
    pairs = {
        side: api.get(f"/jobs/{a}/compare/{b}/images", params={"better": side, "limit": 6}).json()[
            "items"
        ]
        for side in "ab"
    }
    assert len(shown) == 2 * (len(pairs["a"]) + len(pairs["b"]))
    if pairs["a"]:
        first = pairs["a"][0]
        assert first["better"] == "a" and first["a"]["errors"] < first["b"]["errors"]
        assert shown[0] == (
            f"#{a} dash-a: {first['a']['tp']} TP · {first['a']['errors']} errors · "
            f"{first['a']['missed']} missed"
        )
    changes = found["confusion"]["changes"]
    if changes:
        change = changes[0]
        assert f"{change['label']}: **{change['a']} → {change['b']}**" in texts(at.markdown)

    # ranked by true positives instead
    at.selectbox(key="compare-by").select("tp").run()
    by_tp = api.get(f"/jobs/{a}/compare/{b}/images", params={"by": "tp", "limit": 1}).json()
    assert f"{by_tp['sentence'][:1].upper()}{by_tp['sentence'][1:]}." in texts(at.info)


@pytest.mark.parametrize(
    ("page", "query"),
    [
        ("leaderboard", {}),
        ("jobs", {}),
        ("run", {"job": 1}),
        ("explorer", {"job": 1}),
        ("compare", {"jobs": "1,2"}),
    ],
)
def test_pages_say_plainly_when_the_api_is_unreachable(monkeypatch, page, query):
    monkeypatch.setenv("DETLAB_API_URL", UNREACHABLE)
    monkeypatch.setenv("DETLAB_API_TOKEN", "dl_any")  # signed in: the page itself reads
    at = open_page(page, **query)
    assert not at.exception
    message = texts(at.error)
    assert f"the DetLab API at `{UNREACHABLE}` did not answer" in message
    assert f"URL tried: `{UNREACHABLE}/" in message


def test_client_errors_carry_the_url_and_the_apis_message(api, admin_token, seeded):
    with pytest.raises(ApiError) as no_token:
        ApiClient(str(api.base_url)).job(seeded.job_a["id"])
    assert no_token.value.status == 401 and "Authorization: Bearer" in no_token.value.message

    client = ApiClient(str(api.base_url), token=admin_token)
    assert client.me()["role"] == "admin"
    with pytest.raises(ApiError) as refused:
        client.submit_job({"dataset_id": seeded.dataset_id, "epochs": 1, "lr": -1})
    assert refused.value.status == 422 and refused.value.url == f"{api.base_url}/jobs"
    assert "lr: Input should be greater than 0" in refused.value.message

    with pytest.raises(ApiError) as missing_job:
        client.job(987654)
    assert missing_job.value.status == 404
    assert "job 987654 not found" in missing_job.value.message

    with pytest.raises(ApiError) as unreachable:
        ApiClient(UNREACHABLE).datasets()
    assert unreachable.value.unreachable and unreachable.value.url.startswith(UNREACHABLE)


def draw_the_outcome_legend() -> None:
    from dashboard import views

    views.outcome_legend()


def test_the_outcome_legend_shows_the_apis_colours_and_meanings(api):
    served = legend(api)
    at = AppTest.from_function(draw_the_outcome_legend).run()
    assert not at.exception
    swatches = texts(at.markdown)
    assert f"rgb{tuple(served['gt_colour'])}" in swatches and "ground truth" in swatches
    for outcome in served["outcomes"]:
        if outcome["colour"] is None:  # never drawn: not in the legend
            assert f">{outcome['name']}<" not in swatches
        else:
            assert f"rgb{tuple(outcome['colour'])};" in swatches
            assert f">{outcome['name']}<" in swatches
            assert html.escape(outcome["description"], quote=True) in swatches


# Last in the file: it adds an evaluated and an imported run to the seeded dataset's board.
def test_runs_scored_elsewhere_or_again_join_the_board_marked(api, admin_token, wait_job, seeded):
    source = seeded.job_a
    at = open_page("jobs")
    at.selectbox(key="evaluate-dataset_id").select(seeded.dataset_id)
    at.number_input(key="evaluate-source_job_id").set_value(source["id"])
    at.text_input(key="evaluate-name").input("dash-evaluated")
    at.button(key="FormSubmitter:submit-evaluate-Submit evaluate job").click().run()
    assert not at.error, texts(at.error)
    evaluated_id = int(texts(at.success).split("#")[1].split(" ")[0])
    assert wait_job(evaluated_id)["status"] == "succeeded"

    # the import form uploads through the dashboard's client; AppTest cannot pick a file
    predictions = api.get(f"/jobs/{source['id']}/predictions").content
    run = ApiClient(str(api.base_url), token=admin_token).import_run(
        dataset_id=seeded.dataset_id,
        name="dash-imported",
        source={"model": "dash-a, exported"},
        filename="dash-a.bbox.json",
        content=predictions,
    )
    assert run["job"]["kind"] == "import"

    mAP = api.get(f"/jobs/{source['id']}/evaluation").json()["bbox_mAP"]
    for job_id in (evaluated_id, run["job"]["id"]):
        assert api.get(f"/jobs/{job_id}/evaluation").json()["bbox_mAP"] == mAP
    at = open_page("leaderboard", dataset=seeded.dataset_id)
    assert not at.exception and not at.error, texts(at.error)
    shown = " ".join(str(v) for frame in at.dataframe for v in frame.value.to_numpy().ravel())
    assert "dash-evaluated" in shown and "dash-imported" in shown
    assert "evaluated" in shown and "imported" in shown


def test_jobs_page_submits_a_box_domain_pretraining(api, seeded):
    at = open_page("jobs")
    assert not at.exception and not at.error
    method = next(box for box in at.selectbox if box.label == "Method")
    method.select("aligndet")
    at.selectbox(key="pretrain-dataset").select(seeded.dataset_id)
    at.selectbox(key="pretrain-detector").select("mask_rcnn")
    at.selectbox(key="pretrain-start").select("scratch")
    at.radio(key="pretrain-unit").set_value("iterations")
    at.number_input(key="pretrain-length").set_value(2)
    at.number_input(key="pretrain-batch_size").set_value(2)
    at.number_input(key="pretrain-queue_length").set_value(64)
    at.number_input(key="pretrain-proposals").set_value(16)
    at.number_input(key="pretrain-num_workers").set_value(0)
    at.text_input(key="pretrain-name").input("dash-aligndet")
    at.button(key="FormSubmitter:submit-pretrain-Submit pretraining job").click().run()
    assert not at.error, texts(at.error)
    job_id = int(texts(at.success).split("#")[1].split(" ")[0])
    api.post(f"/jobs/{job_id}/cancel")  # what was sent is the point, not the training
    spec = api.get(f"/jobs/{job_id}").json()["spec"]
    assert (spec["method"], spec["detector"], spec["init"]) == ("aligndet", "mask_rcnn", "scratch")
    assert spec["proposals_per_image"] == 16 and spec["iterations"] == 2
    history = open_page("jobs").dataframe[0].value.set_index("name")
    assert history.loc["dash-aligndet", "init / method"] == "aligndet (mask_rcnn from scratch)"
