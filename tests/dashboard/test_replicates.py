"""Replicate groups on the dashboard, with AppTest against the real API process: submitting a
spec with several seeds, the leaderboard's one row per group, the run page's group section and
the compare page's group sentence.

The groups are built as the backend's replicate tests build them, in seconds rather than the
minutes training would take: job rows by the factories, predictions made from the val split's
own boxes (some moved off their objects, more for the worse runs), scored by the API itself
(`POST /jobs/{id}/analysis`: metrics, intervals and analysis, as after training).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import factories
import pytest
from dashboard_seed import open_page, texts
from sqlalchemy.orm import Session

from backend.jobs.models import Job, JobStatus

DATASET_NAME = "shapes-replicates"
# runs of a group -> images of the val split whose boxes are moved off their objects
BETTER = {"seeds": [0, 1], "moved": [0, 1]}
WORSE = {"seeds": [0, 1, 2], "moved": [2, 4, 3]}
LONE_MOVED = 6
FINISHED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class Groups:
    dataset_id: int
    better: list[int]  # job ids; the first names the group
    worse: list[int]  # the scored runs; then one failed run of the same group
    worse_failed: int
    lone: int


@pytest.fixture(autouse=True)
def dashboard_env(api, admin_token, monkeypatch):
    monkeypatch.setenv("DETLAB_API_URL", str(api.base_url))
    monkeypatch.setenv("DETLAB_API_TOKEN", admin_token)


def predictions(val: dict, moved: int) -> list[dict]:
    """The val boxes as detections, those of the first `moved` images shifted by their width."""
    damaged = {image["id"] for image in val["images"][:moved]}
    return [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + (a["bbox"][2] if a["image_id"] in damaged else 0)]
            + a["bbox"][1:],
            "score": 0.9,
        }
        for a in val["annotations"]
    ]


@pytest.fixture(scope="module")
def groups(api, pg_engine, shapes, tmp_path_factory) -> Groups:
    """A dataset with two replicate groups (2 and 3 scored runs, the worse one with a failed
    run too) and a lone run, each run scored by the API."""
    created = api.post("/datasets", json={"name": DATASET_NAME, **factories.dataset_files(shapes)})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    val = json.loads(shapes.val_ann.read_text())
    folder = tmp_path_factory.mktemp("replicates")

    def scored_run(session: Session, name: str, seed: int, moved: int, lr: float) -> int:
        path = folder / f"{name}-{seed}.bbox.json"
        path.write_text(json.dumps(predictions(val, moved)))
        job = factories.finished_job(
            session,
            dataset_id=dataset_id,
            name=name,
            predictions_path=path,
            spec={"seed": seed, "lr": lr},
        )
        return job.id

    with Session(pg_engine, expire_on_commit=False) as session:
        better = [
            scored_run(session, "rep-better", seed, moved, 0.01)
            for seed, moved in zip(BETTER["seeds"], BETTER["moved"], strict=True)
        ]
        worse = [
            scored_run(session, "rep-worse", seed, moved, 0.005)
            for seed, moved in zip(WORSE["seeds"], WORSE["moved"], strict=True)
        ]
        failed = factories.job(
            session,
            status=JobStatus.failed,
            dataset_id=dataset_id,
            name="rep-worse",
            spec={"seed": len(WORSE["seeds"]), "lr": 0.005},
        ).id
        lone = scored_run(session, "rep-lone", 0, LONE_MOVED, 0.02)
        for members in (better, [*worse, failed]):
            for job_id in members:
                session.get(Job, job_id).group_id = members[0]
        session.commit()
    for job_id in [*better, *worse, lone]:
        scored = api.post(f"/jobs/{job_id}/analysis")
        assert scored.status_code == 200, scored.text
    return Groups(dataset_id, better, worse, failed, lone)


def test_jobs_page_submits_several_seeds_as_one_replicate_group(api, wait_job, groups):
    options = api.get("/jobs/options").json()
    at = open_page("jobs")
    repeats = at.number_input(key="finetune-repeats")
    assert (repeats.value, repeats.min, repeats.max) == (1, 1, options["max_repeats"])
    at.selectbox(key="finetune-dataset_id").select(groups.dataset_id)
    at.selectbox(key="finetune-backbone").select("resnet18")
    at.selectbox(key="finetune-init").select("scratch")
    at.text_input(key="finetune-name").input("dash-replicates")
    at.radio(key="finetune-unit").set_value("iterations")
    for field, value in {
        "length": 30,
        "width": 128,
        "height": 128,
        "seed": 5,
        "repeats": 3,
        "num_workers": 0,
    }.items():
        at.number_input(key=f"finetune-{field}").set_value(value)
    at.button(key="FormSubmitter:submit-finetune-Submit fine-tune job").click().run()
    assert not at.exception and not at.error, texts(at.error)

    submitted = [
        job
        for job in api.get("/jobs", params={"dataset": groups.dataset_id}).json()["items"]
        if job["name"] == "dash-replicates"
    ]
    try:
        group_id = submitted[0]["group_id"]
        members = api.get("/jobs", params={"group": group_id}).json()["items"]
        members.sort(key=lambda job: job["id"])
        assert [job["spec"]["seed"] for job in members] == [5, 6, 7]
        assert group_id == members[0]["id"] and len(submitted) == 3
        listed = ", ".join(f"#{job['id']} (seed {job['spec']['seed']})" for job in members)
        assert f"3 jobs queued as replicate group #{group_id}: {listed}." in texts(at.success)
    finally:  # the worker need not train them
        for job in submitted:
            api.post(f"/jobs/{job['id']}/cancel")
        for job in submitted:
            assert wait_job(job["id"], timeout=120)["status"] in FINISHED

    at = open_page("jobs")
    at.selectbox(key="jobs-dataset").select(groups.dataset_id).run()
    history = at.dataframe[0].value.set_index("run")
    for job in members:
        assert history.loc[f"run?job={job['id']}", "group"] == f"#{group_id}"
    assert history.loc[f"run?job={groups.lone}", "group"] == ""


def test_leaderboard_shows_one_row_per_replicate_group(api, groups):
    at = open_page("leaderboard", dataset=groups.dataset_id)
    assert not at.exception and not at.error
    assert at.toggle(key="leaderboard-grouped").value is False  # one row per run by default
    assert len(at.dataframe[0].value) == len(groups.better) + len(groups.worse) + 1
    assert "n" not in at.dataframe[0].proto.column_order

    at.toggle(key="leaderboard-grouped").set_value(True).run()
    assert not at.exception and not at.error
    board = api.get("/leaderboard", params={"dataset": groups.dataset_id, "group": "true"}).json()[
        "items"
    ]
    assert [row["job_id"] for row in board] == [groups.better[0], groups.worse[0], groups.lone]
    shown = at.dataframe[0]
    order = list(shown.proto.column_order)
    assert order[2:5] == ["n", "mAP mean [95% CI]", "mAP std"]
    assert "vs leader" not in order  # groups are not tested against the leader
    assert not [box for box in at.checkbox if "significance" in (box.key or "")]
    table = shown.value.set_index("job_id")
    assert list(table.index) == [row["job_id"] for row in board]
    for row in board:
        found, interval = row["replicates"], row["interval"]
        assert table.loc[row["job_id"], "n"] == found["n"]
        assert table.loc[row["job_id"], "mAP mean [95% CI]"].strip() == (
            f"{100 * row['bbox_mAP']:.1f} [{100 * interval['low']:.1f}, "
            f"{100 * interval['high']:.1f}]"
        )
        assert table.loc[row["job_id"], "seed"] == ", ".join(map(str, found["seeds"]))
        if found["n"] >= 2:
            assert table.loc[row["job_id"], "mAP std"] == f"{100 * found['std']:.1f}"
            assert row["bbox_mAP"] == pytest.approx(found["mean"])
        else:
            assert table.loc[row["job_id"], "mAP std"] == "–"  # one run: no spread
    worse = table.loc[groups.worse[0]]
    assert (worse["n"], worse["seed"]) == (3, "0, 1, 2")  # the failed run is not counted
    captions = texts(at.caption)
    assert "3 of 3 replicate groups (6 finished runs" in captions
    assert "with the 95% t-interval of that mean over the seeds" in captions
    assert "mAP std: the standard deviation between the seeds' runs" in captions
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert chart["layout"]["title"]["text"] == "mAP of the best 3 groups shown, with 95% intervals"

    at.toggle(key="leaderboard-grouped").set_value(False).run()
    assert len(at.dataframe[0].value) == 6 and "n" not in at.dataframe[0].proto.column_order


def test_run_page_shows_its_replicate_group(api, groups):
    job_id = groups.worse[1]
    at = open_page("run", job=job_id)
    assert not at.exception and not at.error
    assert "Replicates" in [header.value for header in at.subheader]
    group = api.get(f"/groups/{groups.worse[0]}").json()
    found = group["metrics"]["bbox_mAP"]
    assert found["n"] == 3 and found["seed_share"] is not None
    from_seed = round(100 * found["seed_share"])
    assert (
        f"Over 3 seeds, mAP is {100 * found['mean']:.1f} ± {100 * found['std']:.1f} "
        f"(95% CI {100 * found['low']:.1f} to {100 * found['high']:.1f}); {from_seed}% of one "
        f"run's variance comes from the seed, {100 - from_seed}% from the choice of val images. "
        "(1 of its 4 runs not scored: queued, running or not succeeded.)"
    ) in texts(at.markdown)

    runs, figures = (frame.value for frame in at.dataframe[:2])
    assert list(runs["run"]) == [f"run?job={i}" for i in [*groups.worse, groups.worse_failed]]
    assert list(runs["seed"]) == [0, 1, 2, 3]
    assert list(runs["status"]) == ["succeeded"] * 3 + ["failed"]
    for run, shown in zip(group["runs"], runs["mAP"], strict=True):
        if run["bbox_mAP"] is None:
            assert shown == "–"  # not scored
        else:
            assert shown == f"{round(100 * run['bbox_mAP'], 1):.1f}"
    mAP = figures.loc["mAP"]
    assert mAP["n"] == 3
    assert mAP["mean"] == f"{round(100 * found['mean'], 1):.1f}"
    assert mAP["std"] == f"{round(100 * found['std'], 1):.1f}"
    assert mAP["95% CI"] == f"[{100 * found['low']:.1f}, {100 * found['high']:.1f}]"
    assert mAP["from the seed"] == f"{from_seed}%"
    assert f"Replicate group #{groups.worse[0]}: one spec trained with seeds 0, 1, 2, 3" in (
        texts(at.caption)
    )

    lone = open_page("run", job=groups.lone)
    assert not lone.exception and "Replicates" not in [h.value for h in lone.subheader]


def test_compare_page_compares_the_runs_replicate_groups(api, groups):
    a, b = groups.worse[0], groups.better[0]
    at = open_page("compare", jobs=f"{a},{b}")
    assert not at.exception and not at.error
    runs = api.get(f"/jobs/{a}/compare/{b}").json()["sentence"]
    compared = api.get(f"/groups/{a}/compare/{b}").json()
    assert compared["a"]["runs"] == 3 and compared["b"]["runs"] == 2
    shown = texts(at.info)
    assert f"{runs[:1].upper()}{runs[1:]}." in shown
    assert f"group {a}" in compared["sentence"] and compared["sentence"] != runs
    assert f"{compared['sentence'][:1].upper()}{compared['sentence'][1:]}." in shown
    assert f"group #{a} (3 runs) against group #{b} (2 runs)" in texts(at.caption)

    # two runs of one group: no group comparison
    same = open_page("compare", jobs=f"{groups.worse[0]},{groups.worse[1]}")
    assert not same.exception and not same.error
    assert "group" not in texts(same.info).lower()
