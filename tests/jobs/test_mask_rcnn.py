"""Mask R-CNN: built from mmdet's own Mask R-CNN files (FPN and C4), trained on the shapes
data's polygons, scored on masks beside boxes by the engine (COCOeval segm's figures), refused
on box-only datasets, and ranked by mask AP on the leaderboard."""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from types import SimpleNamespace

import factories
import numpy as np
import pytest
from mmengine.config import Config
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from backend.analysis.metrics import coco_metrics
from backend.analysis.tables import MASK_METRICS, METRIC_KEYS
from backend.jobs.paths import JobPaths
from backend.jobs.spec import FinetuneSpec
from backend.registry import DETECTORS, c4_detectors, mask_detectors
from worker.mmdet_config import DetLabModel, build_evaluate_config, build_finetune_config

TINY = factories.TINY_TRAINING


def _segm_cocoeval(val_ann: str | Path, results: list[dict]) -> np.ndarray:
    """pycocotools' segm stats as mmdet's CocoMetric computes them (results' boxes dropped, so
    sizes are by mask area)."""
    without_boxes = [{k: v for k, v in r.items() if k != "bbox"} for r in copy.deepcopy(results)]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(val_ann))
        evaluator = COCOeval(gt, gt.loadRes(without_boxes), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Four train and two val images of 96 px with polygons, as a registered dataset's fields."""
    return factories.tiny_dataset(tmp_path_factory.mktemp("shapes"))


def test_the_registry_has_mask_rcnn_with_fpn_and_c4_models():
    assert mask_detectors() == ("mask_rcnn",)
    entry = DETECTORS["mask_rcnn"]
    assert entry.iou_types == ("bbox", "segm") and DETECTORS["faster_rcnn"].iou_types == ("bbox",)
    assert "mask_rcnn" in c4_detectors()
    assert {m.key for m in MASK_METRICS} <= set(METRIC_KEYS)


def test_a_mask_rcnn_config_loads_masks_trains_a_step_and_scores_masks_as_cocoeval(tiny, tmp_path):
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=True)
    spec = FinetuneSpec(
        dataset_id=1,
        detector="mask_rcnn",
        backbone="resnet18",
        init="scratch",
        image_scale=(96, 96),
        iterations=2,
        eval_interval=2,
        batch_size=2,
        num_workers=0,
        roi_samples_per_image=16,
        test_proposals_per_image=30,
        lr=0.001,
    )
    paths = JobPaths(tmp_path)
    cfg = build_finetune_config(spec, dataset=tiny, paths=paths)
    cfg.dump(str(tmp_path / "config.py"))
    saved = Config.fromfile(str(tmp_path / "config.py"))
    model = saved.model
    assert model.type == "MaskRCNN"
    assert model.roi_head.mask_head.num_classes == model.roi_head.bbox_head.num_classes == 6
    loads = [s for s in saved.train_dataloader.dataset.pipeline if s.type == "LoadAnnotations"]
    assert loads and loads[0].with_mask is True
    assert saved.val_evaluator.metric == ["bbox", "segm"]

    saved.work_dir = str(paths.work_dir)
    saved.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(saved)
    runner.train()  # two iterations, then the val split scored on boxes and masks
    assert runner.iter == 2

    results = json.loads(paths.mask_predictions.read_text())
    assert results and all(r["segmentation"]["counts"] for r in results)
    found = coco_metrics(json.loads(Path(tiny.val_ann).read_text()), results, iou_type="segm")
    reference = _segm_cocoeval(tiny.val_ann, results)
    for metric in MASK_METRICS:
        expected = None if reference[metric.stat] < 0 else reference[metric.stat]
        assert found[metric.key] == pytest.approx(expected, abs=1e-12), metric.key


def test_a_c4_mask_rcnn_config_is_mmdets_c4_mask_model_and_trains_a_step(tiny, tmp_path):
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    register_all_modules(init_default_scope=True)
    spec = FinetuneSpec(
        dataset_id=1,
        detector="mask_rcnn",
        backbone="resnet50_c4",
        init="scratch",
        image_scale=(96, 96),
        iterations=1,
        batch_size=2,
        num_workers=0,
        roi_samples_per_image=16,
        test_proposals_per_image=10,
        lr=0.001,
    )
    paths = JobPaths(tmp_path)
    cfg = build_finetune_config(spec, dataset=tiny, paths=paths)
    assert "neck" not in cfg.model
    assert cfg.model.roi_head.shared_head.style == "pytorch"
    assert cfg.model.roi_head.mask_head.num_classes == 6
    assert cfg.val_evaluator.metric == ["bbox", "segm"]
    cfg.dump(str(tmp_path / "config.py"))
    saved = Config.fromfile(str(tmp_path / "config.py"))
    saved.work_dir = str(paths.work_dir)
    runner = Runner.from_cfg(saved)
    head = runner.model.roi_head
    before = head.mask_head.conv_logits.weight.detach().clone()
    runner.train()  # one iteration, then the val split scored on boxes and masks
    assert runner.iter == 1
    assert not head.mask_head.conv_logits.weight.equal(before)
    assert paths.mask_predictions.is_file()


def test_an_evaluate_config_of_a_mask_model_scores_masks_only_where_the_dataset_has_them(
    tiny, tmp_path
):
    model = DetLabModel(detector="mask_rcnn", backbone="resnet18")
    common = dict(
        paths=JobPaths(tmp_path),
        classes=("square", "rectangle"),
        batch_size=1,
        image_scale=(96, 96),
        checkpoint="x.pth",
    )
    cfg = build_evaluate_config(model, dataset=tiny, **common)
    assert cfg.test_evaluator.metric == ["bbox", "segm"]
    box_only = SimpleNamespace(**{**vars(tiny), "stats": {"categories": tiny.stats["categories"]}})
    assert build_evaluate_config(model, dataset=box_only, **common).test_evaluator.metric == [
        "bbox"
    ]


def test_a_mask_rcnn_job_on_a_box_only_dataset_is_a_422_saying_why(client, shapes, tmp_path):
    folder = Path(factories.dataset_files(shapes)["train_ann"]).parent
    for split in ("train", "val"):
        data = json.loads((folder / f"{split}.json").read_text())
        for annotation in data["annotations"]:
            annotation.pop("segmentation", None)
        (folder / f"{split}.json").write_text(json.dumps(data))
    body = {
        "name": "boxes-only",
        "train_ann": str(folder / "train.json"),
        "val_ann": str(folder / "val.json"),
        "train_images": str(shapes.train_images),
        "val_images": str(shapes.val_images),
    }
    created = client.post("/datasets", json=body)
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    refused = client.post(
        "/jobs", json={**TINY, "dataset_id": dataset_id, "detector": "mask_rcnn", "iterations": 20}
    )
    assert refused.status_code == 422, refused.text
    message = refused.json()["detail"]["message"]
    assert "mask_rcnn" in message and "has a segmentation" in message and "faster_rcnn" in message
    boxes = client.post(
        "/jobs",
        json={**TINY, "dataset_id": dataset_id, "detector": "faster_rcnn", "iterations": 20},
    )
    assert boxes.status_code == 201, boxes.text


@pytest.fixture(scope="module")
def mask_dataset_id(api, shapes):
    response = api.post(
        "/datasets", json={"name": "shapes-mask-rcnn", **factories.dataset_files(shapes)}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_a_tiny_mask_rcnn_job_stores_mask_ap_equal_to_cocoeval_and_ranks_by_it(
    api, worker, wait_job, mask_dataset_id
):
    spec = {
        **TINY,
        "dataset_id": mask_dataset_id,
        "detector": "mask_rcnn",
        "iterations": 20,
        "eval_interval": 20,
        "name": "tiny-mask-r18",
    }
    created = api.post("/jobs", json=spec)
    assert created.status_code == 201, created.text
    job = wait_job(created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    keys = {s["key"] for s in api.get(f"/jobs/{job['id']}/metrics").json()["series"]}
    assert {"train/loss_mask", "val/segm_mAP", "val/bbox_mAP"} <= keys

    evaluation = api.get(f"/jobs/{job['id']}/evaluation").json()
    masks_file = Path(evaluation["record"]["masks"]["predictions_path"])
    results = json.loads(masks_file.read_text())
    assert results and evaluation["record"]["masks"]["predictions"] == len(results)
    dataset = api.get(f"/datasets/{mask_dataset_id}").json()
    reference = _segm_cocoeval(dataset["val_ann"], results)
    for metric in MASK_METRICS:
        expected = None if reference[metric.stat] < 0 else reference[metric.stat]
        assert evaluation[metric.key] == pytest.approx(expected, abs=1e-12), metric.key
    assert set(evaluation["per_class_mask_ap"]) == set(evaluation["per_class_ap"])
    assert "segm_mAP" in evaluation["intervals"]["metrics"]
    assert evaluation["bbox_mAP"] is not None

    board = api.get(
        "/leaderboard", params={"dataset": mask_dataset_id, "metric": "segm_mAP"}
    ).json()
    row = next(r for r in board["items"] if r["job_id"] == job["id"])
    assert row["detector"] == "mask_rcnn" and row["segm_mAP"] == evaluation["segm_mAP"]
    assert board["metric"] == "segm_mAP"
