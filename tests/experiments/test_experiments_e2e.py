"""An experiment through a real worker (issue 17): a 2 x 2 grid with 2 seeds per cell trains
on the shapes data, and its matrix and report hold the jobs' own numbers; a re-run of one of
its jobs repeats the config exactly."""

from __future__ import annotations

import statistics

import factories
import pytest


@pytest.fixture(scope="module")
def dataset_id(api, shapes):
    files = factories.dataset_files(shapes)
    response = api.post("/datasets", json={"name": "shapes-experiments", **files})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def test_a_two_by_two_grid_with_two_seeds_fills_its_matrix(api, worker, wait_job, dataset_id):
    tiny = {k: v for k, v in factories.TINY_TRAINING.items() if k != "lr"}
    body = {
        "name": "e2e grid",
        "base": {**tiny, "dataset_id": dataset_id, "iterations": 10, "eval_interval": 10},
        "axes": {"lr": [0.005, 0.01], "data_fraction": [0.5, 1.0]},
        "repeats": 2,
    }
    created = api.post("/experiments", json=body)
    assert created.status_code == 201, created.text
    experiment = created.json()
    job_ids = [i for cell in experiment["cells"] for i in cell["job_ids"]]
    assert len(job_ids) == 8
    jobs = {i: wait_job(i, until=_finished) for i in job_ids}
    assert {j["status"] for j in jobs.values()} == {"succeeded"}, [
        j["error"] for j in jobs.values()
    ]

    got = api.get(f"/experiments/{experiment['id']}").json()
    assert got["status_counts"] == {"succeeded": 8}
    for cell in got["cells"]:
        scores = [api.get(f"/jobs/{i}/evaluation").json()["bbox_mAP"] for i in cell["job_ids"]]
        assert cell["n"] == 2 and cell["interval"] == "seeds"
        assert cell["mean"] == pytest.approx(statistics.mean(scores))
        assert cell["record_differs"] == []  # one worker, one dataset: every record agrees
        for job_id in cell["job_ids"]:
            assert jobs[job_id]["spec"]["data_fraction"] == cell["values"]["data_fraction"]
    report = api.get(f"/experiments/{experiment['id']}/report").text
    for cell in got["cells"]:
        values = cell["values"]
        assert f"| {values['lr']} | {values['data_fraction']} | 2 | " in report
    assert "- mmdet: 3.3.0" in report

    # a re-run of one job: the same spec and seed, so the same config
    original = jobs[job_ids[0]]
    rerun = api.post(f"/jobs/{original['id']}/rerun").json()
    again = wait_job(rerun["id"], until=_finished)
    assert again["status"] == "succeeded", again["error"]
    assert again["record"]["config_sha256"] == original["record"]["config_sha256"]
    checked = api.get(f"/jobs/{again['id']}/reproduction").json()
    assert checked["config_same"] is True and checked["record_differs"] == []
    assert checked["inside"] is not None
