"""Evaluate jobs through a real Celery worker, Redis, Postgres and mmdet on CPU: one tiny
fine-tune job, its checkpoint then scored again every way an evaluate spec names a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import factories
import pytest
import torch

from backend.analysis.tables import METRIC_KEYS

# As test_worker_e2e's tiny job, with mmdet's own number of test-time proposals (1000): a model
# named by detector and backbone, or by an mmdet config, is scored with that number
TINY = {
    **{k: v for k, v in factories.TINY_TRAINING.items() if k != "test_proposals_per_image"},
    "iterations": 20,
    "eval_interval": 20,
}
CLASSES = ["square", "rectangle", "circle", "ellipse"]  # the shapes dataset's, in its order
# faster_rcnn with resnet18 and fpn, as mmdet ships it
SAME_ARCHITECTURE = "faster-rcnn_r18_fpn_8xb8-amp-lsj-200e_coco"


def _finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def dataset_id(api, shapes):
    response = api.post(
        "/datasets", json={"name": "shapes-evaluate", **factories.dataset_files(shapes)}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(scope="module")
def trained(api, worker, wait_job, dataset_id, lab_env):
    """The tiny fine-tune job, its evaluation, its val predictions and its last checkpoint."""
    job = api.post("/jobs", json={**TINY, "dataset_id": dataset_id, "name": "to-score"}).json()
    job = wait_job(job["id"], until=_finished)
    assert job["status"] == "succeeded", job["error"]
    evaluation = api.get(f"/jobs/{job['id']}/evaluation").json()
    work_dir = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "jobs" / str(job["id"]) / "work"
    checkpoint = work_dir / Path((work_dir / "last_checkpoint").read_text().strip()).name
    predictions = json.loads(Path(evaluation["predictions_path"]).read_text())
    # a comparison of predictions means something only when there are some
    assert len(predictions) > 0
    return SimpleNamespace(
        job=job, evaluation=evaluation, predictions=predictions, checkpoint=checkpoint
    )


def _plain_copy(trained, out: Path, *, classes: list[str] | None) -> Path:
    """The tiny job's weights alone, as a user exports a checkpoint (torch.save of tensors and
    plain data, loadable with weights_only=True), naming `classes` (None: no meta at all)."""
    # our own file: its mmengine training state may be unpickled here
    full = torch.load(trained.checkpoint, map_location="cpu", weights_only=False)
    exported: dict = {"state_dict": full["state_dict"]}
    if classes is not None:
        exported["meta"] = {"dataset_meta": {"classes": tuple(classes)}}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(exported, out)
    return out


def _evaluate(api, wait_job, spec: dict) -> tuple[dict, dict | None]:
    """Submit an evaluate job, wait for its end: the job and its evaluation (None if none)."""
    response = api.post("/jobs", json={"kind": "evaluate", **spec})
    assert response.status_code == 201, response.text
    job = wait_job(response.json()["id"], until=_finished)
    if job["status"] != "succeeded":
        return job, None
    return job, api.get(f"/jobs/{job['id']}/evaluation").json()


def _figures(evaluation: dict) -> dict:
    return {key: evaluation[key] for key in METRIC_KEYS} | {"per_class": evaluation["per_class_ap"]}


def _sorted(predictions: list[dict]) -> list[dict]:
    return sorted(
        predictions, key=lambda p: (p["image_id"], p["category_id"], -p["score"], p["bbox"])
    )


def _predictions(evaluation: dict) -> list[dict]:
    return json.loads(Path(evaluation["predictions_path"]).read_text())


def test_scoring_a_finetune_job_again_reproduces_its_evaluation(api, wait_job, dataset_id, trained):
    source = trained.job["id"]
    job, evaluation = _evaluate(
        api, wait_job, {"dataset_id": dataset_id, "source_job_id": source, "name": "again"}
    )
    assert job["status"] == "succeeded", job["error"]
    assert job["kind"] == "evaluate" and job["parent_id"] == source
    assert job["progress_iter"] == job["progress_total"] == 12  # val images
    # the same model, pipeline and batch of 1: the same predictions and figures, bit for bit
    assert _sorted(_predictions(evaluation)) == _sorted(trained.predictions)
    assert _figures(evaluation) == _figures(trained.evaluation)
    assert evaluation["record"]["class_mapping"] == {
        "matched": CLASSES,
        "model_only": [],
        "dataset_only": [],
    }
    assert evaluation["record"]["class_names_from"] == "the checkpoint's meta"
    assert evaluation["record"]["checkpoint"] == str(trained.checkpoint)
    # its reproducibility record: the weights scored, the same val split as the source job's
    record, source_record = job["record"], trained.job["record"]
    assert record["init_weights"] == str(trained.checkpoint)
    assert (
        record["init_weights_sha256"] == hashlib.sha256(trained.checkpoint.read_bytes()).hexdigest()
    )
    assert record["val_ann_sha256"] == source_record["val_ann_sha256"] is not None
    assert record["val_images_sha256"] == source_record["val_images_sha256"] is not None
    assert record["train_ann_sha256"] is None and record["seed"] is None
    assert record["torch"] == torch.__version__ and record["config_sha256"]

    config = api.get(f"/jobs/{job['id']}/config").text
    assert "depth=18" in config and str(trained.checkpoint) in config
    rows = api.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    row = next(r for r in rows if r["job_id"] == job["id"])
    assert row["init"] == "evaluated" and row["kind"] == "evaluate"
    assert row["bbox_mAP"] == trained.evaluation["bbox_mAP"]
    assert row["record_differs"] == []


def test_batches_of_four_score_close_to_batches_of_one(api, wait_job, dataset_id, trained):
    job, evaluation = _evaluate(
        api,
        wait_job,
        {"dataset_id": dataset_id, "source_job_id": trained.job["id"], "batch_size": 4},
    )
    assert job["status"] == "succeeded", job["error"]
    # a batch pads its images to a common size; the shapes images share one, so only the
    # arithmetic of batched convolutions may differ
    assert len(_predictions(evaluation)) == pytest.approx(len(trained.predictions), rel=0.02)
    for key in METRIC_KEYS:
        assert evaluation[key] == pytest.approx(trained.evaluation[key], abs=0.01), key


def test_our_model_named_by_detector_and_backbone_scores_the_same(
    api, wait_job, dataset_id, trained, lab_env
):
    exported = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "exports" / "tiny.pth"
    _plain_copy(trained, exported, classes=CLASSES)
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(exported),
        "image_scale": [128, 128],
    }
    job, evaluation = _evaluate(api, wait_job, spec)
    assert job["status"] == "succeeded", job["error"]
    assert _figures(evaluation) == _figures(trained.evaluation)


def test_an_mmdet_config_of_the_same_architecture_scores_the_same(
    api, wait_job, dataset_id, trained, data_root
):
    exported = _plain_copy(trained, data_root / "exports" / "tiny.pth", classes=CLASSES)
    spec = {
        "dataset_id": dataset_id,
        "mmdet_config": SAME_ARCHITECTURE,
        "checkpoint": str(exported),
        "image_scale": [128, 128],
    }
    job, evaluation = _evaluate(api, wait_job, spec)
    assert job["status"] == "succeeded", job["error"]
    assert _figures(evaluation) == _figures(trained.evaluation)
    config = api.get(f"/jobs/{job['id']}/config").text
    assert "num_classes=4" in config and "num_classes=80" not in config


def test_classes_are_matched_by_name_and_foreign_ones_dropped(
    api, wait_job, dataset_id, trained, data_root
):
    # labels 0 and 2 swap names; label 3 (ellipse) becomes a class the dataset lacks
    renamed = ["circle", "rectangle", "square", "blob"]
    exported = _plain_copy(trained, data_root / "exports" / "renamed.pth", classes=renamed)
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(exported),
        "image_scale": [128, 128],
    }
    job, evaluation = _evaluate(api, wait_job, spec)
    assert job["status"] == "succeeded", job["error"]
    assert evaluation["record"]["class_mapping"] == {
        "matched": ["square", "rectangle", "circle"],
        "model_only": ["blob"],
        "dataset_only": ["ellipse"],
    }
    categories = {
        c["name"]: c["id"] for c in api.get(f"/datasets/{dataset_id}").json()["stats"]["categories"]
    }
    moved = {
        categories["square"]: categories["circle"],
        categories["circle"]: categories["square"],
        categories["rectangle"]: categories["rectangle"],
    }
    expected = [
        {**p, "category_id": moved[p["category_id"]]}
        for p in trained.predictions
        if p["category_id"] in moved
    ]
    assert _sorted(_predictions(evaluation)) == _sorted(expected)


def test_a_checkpoint_without_class_names_is_read_in_the_dataset_order(
    api, wait_job, dataset_id, trained, data_root
):
    exported = _plain_copy(trained, data_root / "exports" / "nameless.pth", classes=None)
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(exported),
        "image_scale": [128, 128],
    }
    job, evaluation = _evaluate(api, wait_job, spec)
    assert job["status"] == "succeeded", job["error"]
    assert evaluation["record"]["class_names_from"].startswith("assumed: the dataset's order")
    assert evaluation["bbox_mAP"] == trained.evaluation["bbox_mAP"]


def test_a_checkpoint_sharing_no_class_fails_naming_both_sets(
    api, wait_job, dataset_id, trained, data_root
):
    foreign = ["cat", "dog", "horse", "sheep"]
    exported = _plain_copy(trained, data_root / "exports" / "foreign.pth", classes=foreign)
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(exported),
    }
    job, _ = _evaluate(api, wait_job, spec)
    assert job["status"] == "failed"
    assert "share no name" in job["error"]
    assert all(name in job["error"] for name in foreign + CLASSES), job["error"]


def test_a_training_checkpoint_given_as_a_file_fails_pointing_to_source_job_id(
    api, wait_job, dataset_id, trained
):
    """Files given by path load as plain weights only; a DetLab training checkpoint (with
    mmengine's training state) is scored through its job."""
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(trained.checkpoint),
    }
    job, _ = _evaluate(api, wait_job, spec)
    assert job["status"] == "failed"
    assert "weights_only=True" in job["error"] and "source_job_id" in job["error"], job["error"]


def test_cancel_stops_an_evaluation_between_batches(api, wait_job, dataset_id, trained, data_root):
    exported = _plain_copy(trained, data_root / "exports" / "slow.pth", classes=CLASSES)
    # upscaled to mmdet's 1333 x 800, each image takes about a second on a CPU
    spec = {
        "dataset_id": dataset_id,
        "detector": "faster_rcnn",
        "backbone": "resnet18",
        "checkpoint": str(exported),
    }
    job = api.post("/jobs", json={"kind": "evaluate", **spec}).json()
    wait_job(job["id"], until=lambda j: j["status"] == "running" and j["progress_iter"] >= 1)
    assert api.post(f"/jobs/{job['id']}/cancel").json()["cancel_requested"] is True
    job = wait_job(job["id"], until=_finished, timeout=60)
    assert job["status"] == "cancelled", job
    assert "cancelled by request after" in job["error"] and job["progress_iter"] < 12
    assert api.get(f"/jobs/{job['id']}/evaluation").status_code == 404
