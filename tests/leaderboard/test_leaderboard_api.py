"""GET /leaderboard over job, evaluation and weights rows the test writes: ranking, filters,
init labels, paging, and the 422s for what it does not accept."""

from __future__ import annotations

from typing import Any

import factories
import pytest

from backend.jobs.models import JobKind, JobStatus

SPEC: dict[str, Any] = {
    "detector": "faster_rcnn",
    "backbone": "resnet50",
    "neck": "fpn",
    "init": "imagenet",
    "norm": "frozen_bn",
    "image_scale": [1333, 800],
    "epochs": 12,
    "batch_size": 2,
    "lr": 0.02,
    "seed": 0,
    "data_fraction": 1.0,
    "amp": True,
}


def add_job(db, dataset_id, mAP, *, status=JobStatus.succeeded, kind=JobKind.finetune, **spec):
    return factories.finished_job(
        db,
        dataset_id=dataset_id,
        status=status,
        kind=kind,
        name=f"run-{mAP}",
        spec={**SPEC, **spec},
        config_text="x" * 10_000,
        metrics={"bbox_mAP": mAP, "bbox_mAP_50": None if mAP is None else mAP + 0.2},
    ).id


def test_ranking_filters_labels_and_paging(client, db, dataset_id):
    weights = factories.weights(db, name="moco-800ep", architecture="resnet50", method="mocov2")
    best = add_job(db, dataset_id, 0.41, init={"weights_id": weights.id})
    mid = add_job(db, dataset_id, 0.37, backbone="resnet101")
    low = add_job(db, dataset_id, 0.12, init="scratch", norm="sync_bn")
    unscored = add_job(db, dataset_id, None, init={"checkpoint": "/data/ckpt/detco.pth"})
    add_job(db, dataset_id, 0.99, status=JobStatus.failed)  # not finished well: left out
    add_job(db, dataset_id, 0.98, kind=JobKind.pretrain)  # not a fine-tune: left out

    board = client.get("/leaderboard", params={"dataset": dataset_id}).json()
    assert board["total"] == 4 and board["metric"] == "bbox_mAP"
    assert [r["job_id"] for r in board["items"]] == [best, mid, low, unscored]  # nulls last
    top = board["items"][0]
    assert top["init"] == "weights:moco-800ep (mocov2)"
    assert top["bbox_mAP"] == 0.41 and top["bbox_mAP_50"] == pytest.approx(0.61)
    assert top["image_scale"] == [1333, 800] and top["epochs"] == 12 and top["amp"] is True
    assert top["name"] == "run-0.41" and top["finished_at"] is None
    assert board["items"][3]["init"] == "checkpoint:detco.pth"

    ascending = client.get("/leaderboard", params={"dataset": dataset_id, "order": "asc"}).json()
    assert [r["job_id"] for r in ascending["items"]] == [low, mid, best, unscored]
    by_50 = client.get(
        "/leaderboard", params={"dataset": dataset_id, "metric": "bbox_mAP_50"}
    ).json()
    assert [r["job_id"] for r in by_50["items"]] == [best, mid, low, unscored]

    def ids(**params):
        found = client.get("/leaderboard", params={"dataset": dataset_id, **params}).json()
        return [r["job_id"] for r in found["items"]], found["total"]

    assert ids(backbone="resnet101") == ([mid], 1)
    assert ids(init="scratch") == ([low], 1)
    # init matches the label, its prefix, or the registered weights' name or method
    assert ids(init="weights") == ([best], 1)
    assert ids(init="mocov2") == ([best], 1)
    assert ids(init="moco-800ep") == ([best], 1)
    assert ids(init="checkpoint") == ([unscored], 1)
    assert ids(init="mocov2", backbone="resnet101") == ([], 0)
    assert ids(limit=2) == ([best, mid], 4)
    assert ids(limit=2, offset=2) == ([low, unscored], 4)
    assert ids(init="imagenet", limit=1, offset=0) == ([mid], 1)


def test_what_it_does_not_accept_is_a_422_naming_the_choices(client, dataset_id):
    response = client.get("/leaderboard", params={"metric": "accuracy"})
    assert response.status_code == 422
    assert "metric 'accuracy' is not accepted; use one of bbox_mAP, bbox_mAP_50" in response.text
    assert client.get("/leaderboard", params={"order": "up"}).status_code == 422
    assert client.get("/leaderboard", params={"limit": 10_001}).status_code == 422


def test_runs_scored_again_or_imported_are_ranked_and_marked(client, db, dataset_id):
    trained = add_job(db, dataset_id, 0.30, backbone="resnet101")
    rescored = factories.finished_job(
        db,
        dataset_id=dataset_id,
        kind=JobKind.evaluate,
        name="again",
        parent_id=trained,
        spec={"kind": "evaluate", "dataset_id": dataset_id, "source_job_id": trained},
        metrics={"bbox_mAP": 0.30},
    ).id
    imported = factories.finished_job(
        db,
        dataset_id=dataset_id,
        kind=JobKind.imported,
        name="elsewhere",
        spec={"kind": "import", "dataset_id": dataset_id, "source": {"model": "yolo"}},
        metrics={"bbox_mAP": 0.40},
    ).id

    rows = client.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    by_id = {row["job_id"]: row for row in rows}
    assert [row["job_id"] for row in rows][:1] == [imported]
    assert by_id[imported]["init"] == "imported" and by_id[imported]["backbone"] is None
    assert by_id[imported]["source"] == {"model": "yolo"} and by_id[imported]["lr"] is None
    # scored again from a DetLab run: that run's architecture
    assert by_id[rescored]["init"] == "evaluated" and by_id[rescored]["kind"] == "evaluate"
    assert by_id[rescored]["backbone"] == "resnet101" and by_id[rescored]["neck"] == "fpn"
    evaluated = client.get("/leaderboard", params={"dataset": dataset_id, "init": "evaluated"})
    assert [row["job_id"] for row in evaluated.json()["items"]] == [rescored]


def test_a_weights_name_that_says_its_method_is_not_followed_by_it(client, db, dataset_id):
    """A pretrain job's weights are named for their method ("mocov2-resnet18-job3"): the init
    label does not repeat it, so that the leaderboard's init column stays narrow; filtering by
    the method or the label still finds the run."""
    weights = factories.weights(db, name="MoCoV2-resnet18-job3", method="mocov2")
    job = add_job(db, dataset_id, 0.3, init={"weights_id": weights.id})
    board = client.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    assert [row["init"] for row in board] == ["weights:MoCoV2-resnet18-job3"]
    for wanted in ("mocov2", "weights:MoCoV2-resnet18-job3", "weights"):
        found = client.get("/leaderboard", params={"dataset": dataset_id, "init": wanted}).json()
        assert [row["job_id"] for row in found["items"]] == [job], wanted
