"""Scoring a job's predictions: the engine's COCO metrics as pycocotools gives them, the record
stored beside them, zero-size boxes scored (never a failed job), nothing lost on bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import factories
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.analysis.tables import METRICS
from backend.evaluations.models import Evaluation
from backend.jobs.models import JobStatus


def _cocoeval(gt: dict, results: list[dict]) -> list[float]:
    annotations = [
        {"iscrowd": 0, "area": a["bbox"][2] * a["bbox"][3], **a} for a in gt["annotations"]
    ]
    coco = COCO()
    coco.dataset = {**gt, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes([dict(r) for r in results]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats.tolist()


@pytest.fixture
def val(shapes) -> dict:
    return json.loads(shapes.val_ann.read_text())


def _predictions(val: dict) -> list[dict]:
    """Every val box found, at falling scores, plus a zero-width and a zero-height box."""
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": [a["bbox"][0] + 1, a["bbox"][1], a["bbox"][2], a["bbox"][3]],
            "score": 0.9 - 0.001 * i,
        }
        for i, a in enumerate(val["annotations"])
    ]
    first = val["annotations"][0]
    x, y, w, h = first["bbox"]
    results.append({**results[0], "bbox": [x, y, 0.0, h], "score": 0.95})
    results.append({**results[0], "bbox": [x, y, w, 0], "score": 0.2})
    return results


def _job_with_file(db, dataset_id, tmp_path, text: str, **fields):
    """A finished job whose stored predictions file holds `text`; (job, file path)."""
    path = tmp_path / "predictions.bbox.json"
    path.write_text(text)
    return factories.finished_job(db, dataset_id=dataset_id, predictions_path=path, **fields), path


def test_zero_size_boxes_are_scored_as_pycocotools_scores_them(
    client, db, dataset_id, val, tmp_path
):
    results = _predictions(val)
    job, path = _job_with_file(db, dataset_id, tmp_path, json.dumps(results))

    response = client.post(f"/jobs/{job.id}/analysis")

    assert response.status_code == 200, response.text
    evaluation = response.json()
    reference = _cocoeval(val, results)
    for metric in METRICS:
        expected = None if reference[metric.stat] < 0 else reference[metric.stat]
        assert evaluation[metric.key] == pytest.approx(expected, abs=1e-12), metric.key
    record = evaluation["record"]
    assert record["degenerate_predictions"] == 2
    assert record["predictions"] == len(results)
    assert record["predictions_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["max_dets"] == [1, 10, 100]
    assert record["iou_thresholds"][0] == 0.5 and record["iou_thresholds"][-1] == 0.95
    assert record["score_cut"] is None and record["engine"].startswith("detlab-coco")
    # the breakdown's own cut is stored with it, and the COCO figures did not use it
    assert evaluation["analysis"]["score_thr"] == 0.05


def test_a_cut_for_the_breakdown_leaves_the_coco_metrics_alone(
    client, db, dataset_id, val, tmp_path
):
    results = _predictions(val)
    job, path = _job_with_file(db, dataset_id, tmp_path, json.dumps(results))

    uncut = client.post(f"/jobs/{job.id}/analysis").json()
    cut = client.post(f"/jobs/{job.id}/analysis", params={"score_thr": 0.9}).json()

    assert cut["analysis"]["score_thr"] == 0.9
    assert cut["analysis"]["counts"]["tp"] < uncut["analysis"]["counts"]["tp"]
    assert {m.key: cut[m.key] for m in METRICS} == {m.key: uncut[m.key] for m in METRICS}


def test_predictions_that_cannot_be_scored_keep_the_stored_evaluation(
    client, db, dataset_id, tmp_path
):
    path = tmp_path / "predictions.bbox.json"
    path.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, -3, 4]}]))
    job = factories.finished_job(
        db, dataset_id=dataset_id, predictions_path=path, metrics={"bbox_mAP": 0.42}
    )

    response = client.post(f"/jobs/{job.id}/analysis")

    assert response.status_code == 422
    assert "results[0]" in response.json()["detail"]["message"]
    db.expire_all()
    stored = db.query(Evaluation).filter_by(job_id=job.id).one()
    assert stored.bbox_mAP == 0.42 and stored.predictions_path == str(path)


def test_a_file_that_is_not_json_is_a_422(client, db, dataset_id, tmp_path):
    job, _ = _job_with_file(db, dataset_id, tmp_path, '[{"image_id": 1, "category_id": 1,')

    response = client.post(f"/jobs/{job.id}/analysis")

    assert response.status_code == 422
    assert "is not a JSON file" in response.json()["detail"]["message"]


def test_the_workers_end_of_job_step_stores_a_job_with_a_zero_width_box(
    db, dataset_id, val, tmp_path
):
    """The worker's own scoring step (worker.finetune.store_evaluation) on a real database."""
    from sqlalchemy.orm import sessionmaker

    from worker.finetune import store_evaluation

    results = _predictions(val)
    path = tmp_path / "predictions.bbox.json"
    path.write_text(json.dumps(results))
    job = factories.job(db, dataset_id=dataset_id, status=JobStatus.running)
    sessions = sessionmaker(bind=db.get_bind(), join_transaction_mode="create_savepoint")

    store_evaluation(job_id=job.id, predictions=path, sessions=sessions)

    db.expire_all()
    stored = db.query(Evaluation).filter_by(job_id=job.id).one()
    assert stored.bbox_mAP == pytest.approx(_cocoeval(val, results)[0], abs=1e-12)
    assert stored.record["degenerate_predictions"] == 2
    assert stored.analysis["counts"]["tp"] > 0


def test_an_older_evaluation_gets_seeded_intervals_from_post_analysis(
    client, db, dataset_id, val, tmp_path
):
    job, _ = _job_with_file(db, dataset_id, tmp_path, json.dumps(_predictions(val)))
    assert client.get(f"/jobs/{job.id}/evaluation").json()["intervals"] is None

    first = client.post(f"/jobs/{job.id}/analysis", params={"resamples": 200}).json()
    again = client.post(f"/jobs/{job.id}/analysis", params={"resamples": 200}).json()
    other = client.post(f"/jobs/{job.id}/analysis", params={"resamples": 200, "seed": 7}).json()

    intervals = first["intervals"]
    assert intervals["resamples"] == 200 and intervals["seed"] == 0
    mean_ap = intervals["metrics"]["bbox_mAP"]
    assert mean_ap["estimate"] == pytest.approx(first["bbox_mAP"])
    assert mean_ap["low"] < mean_ap["high"] and mean_ap["defined"] == 200
    assert set(intervals["per_class"]) == set(first["per_class_ap"])
    assert again["intervals"] == intervals
    assert other["intervals"]["seed"] == 7
    assert other["intervals"]["metrics"]["bbox_mAP"] != mean_ap


def test_scoring_again_keeps_what_the_job_added_to_the_record(
    client, db, dataset_id, val, tmp_path
):
    from backend.evaluations import analysis_service

    job, _ = _job_with_file(db, dataset_id, tmp_path, json.dumps(_predictions(val)))
    mapping = {"matched": ["circle"], "model_only": ["person"], "dataset_only": []}
    analysis_service.evaluate_job(
        session=db, job_id=job.id, resamples=None, record_extra={"class_mapping": mapping}
    )
    again = client.post(f"/jobs/{job.id}/analysis").json()
    assert again["record"]["class_mapping"] == mapping
    assert again["record"]["predictions"] == len(_predictions(val))
