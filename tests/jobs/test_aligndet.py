"""AlignDet box-domain pretraining: the whole detector trains on proposals (finite losses,
every part changes), its export starts a fine-tune with backbone, neck and heads loaded (the
class-specific layers skipped), through the API and a real worker too."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import factories
import numpy as np
import pytest
import torch
from mmengine.config import Config

from backend.jobs.paths import JobPaths
from backend.jobs.spec import FinetuneSpec, PretrainSpec
from worker.aligndet import export_detector
from worker.detector_init import load_detector_weights
from worker.mmdet_config import build_box_pretrain_config, build_finetune_config
from worker.pretrain import proposals_coco

TINY = factories.TINY_TRAINING


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    dataset = factories.tiny_dataset(tmp_path_factory.mktemp("shapes"), seed=2)
    train = json.loads(Path(dataset.train_ann).read_text())
    # the ground-truth boxes stand in for proposals here (tests/jobs/test_proposals.py covers
    # the unsupervised ones)
    names = {image["id"]: image["file_name"] for image in train["images"]}
    boxes: dict[str, list[list[float]]] = {name: [] for name in names.values()}
    for ann in train["annotations"]:
        x, y, w, h = ann["bbox"]
        boxes[names[ann["image_id"]]].append([x, y, x + w, y + h])
    proposals = {name: np.array(found, dtype=np.float32) for name, found in boxes.items()}
    return SimpleNamespace(names=sorted(names.values()), proposals=proposals, dataset=dataset)


def _runner(cfg, work_dir: Path):
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner

    import worker.aligndet  # noqa: F401 - registers AlignDet
    import worker.detector_init  # noqa: F401 - registers DetectorInitHook

    register_all_modules(init_default_scope=True)
    cfg.dump(str(work_dir / "config.py"))
    saved = Config.fromfile(str(work_dir / "config.py"))
    saved.work_dir = str(work_dir / "work")
    saved.default_hooks.logger.interval = 1
    return Runner.from_cfg(saved)


# the layers a part of each detector is judged by: trained (pretraining), loaded (fine-tune), and
# a class-specific layer left fresh
LAYERS = {
    "faster_rcnn": (
        ("backbone.", "neck.", "rpn_head.", "roi_head.bbox_head.shared_fcs"),
        ("roi_head.bbox_head.shared_fcs.0.weight", "rpn_head.rpn_conv.weight"),
        "roi_head.bbox_head.fc_cls.weight",
    ),
    "mask_rcnn": (
        ("backbone.", "neck.", "rpn_head.", "roi_head.bbox_head.shared_fcs", "roi_head.mask_head"),
        ("roi_head.bbox_head.shared_fcs.0.weight", "roi_head.mask_head.convs.0.conv.weight"),
        "roi_head.mask_head.conv_logits.weight",
    ),
    "retinanet": (
        ("backbone.", "neck.", "bbox_head.cls_convs", "bbox_head.reg_convs"),
        ("bbox_head.cls_convs.0.conv.weight", "bbox_head.retina_reg.weight"),
        "bbox_head.retina_cls.weight",
    ),
}


@pytest.mark.parametrize("detector", list(LAYERS))
def test_aligndet_trains_the_whole_detector_and_its_export_starts_a_finetune(
    tiny, tmp_path, detector
):
    coco = proposals_coco(
        tiny.dataset.train_images, tiny.names, tiny.proposals, with_masks=detector == "mask_rcnn"
    )
    ann = tmp_path / "proposals.json"
    ann.write_text(json.dumps(coco))
    spec = PretrainSpec(
        kind="pretrain",
        method="aligndet",
        detector=detector,
        backbone="resnet18",
        image_folder=tiny.dataset.train_images,
        iterations=3,
        batch_size=2,
        image_size=96,
        queue_length=64,
        num_workers=0,
        lr=0.01,
    )
    cfg = build_box_pretrain_config(
        spec,
        proposals_ann=str(ann),
        image_folder=tiny.dataset.train_images,
        paths=JobPaths(tmp_path),
    )
    assert cfg.model.type == "AlignDet"
    runner = _runner(cfg, tmp_path)
    model = runner.model
    before = {k: v.detach().clone() for k, v in model.detector.state_dict().items()}
    losses: list[dict[str, float]] = []

    class Record:
        def __call__(self, *_args, outputs=None, **_kwargs):
            losses.append({k: float(v.detach()) for k, v in (outputs or {}).items()})

    from mmengine.hooks import Hook

    recorder = Hook()
    recorder.after_train_iter = Record()  # type: ignore[method-assign]
    runner.register_hook(recorder)
    runner.train()
    assert runner.iter == 3 and len(losses) == 3
    for step in losses:
        assert math.isfinite(step["loss"]), step
        assert "loss_box_contrast" in step and "loss_bbox" in step and "loss_cls" in step
        assert step["loss_box_contrast"] > 0
    after = model.detector.state_dict()
    trained, loaded_layers, fresh = LAYERS[detector]
    for part in trained:
        assert any(k.startswith(part) and not torch.equal(before[k], after[k]) for k in before), (
            f"{part} did not train"
        )

    out = tmp_path / "detector.pth"
    export_detector(model, out, meta={"kind": "detector"})
    saved = torch.load(out, weights_only=True)["state_dict"]

    finetune = FinetuneSpec(
        dataset_id=1,
        detector=detector,
        backbone="resnet18",
        init={"weights_id": 1},
        image_scale=(96, 96),
        iterations=1,
        batch_size=2,
        num_workers=0,
        warmup_iters=1,
    )
    tuned = build_finetune_config(
        finetune,
        dataset=tiny.dataset,
        paths=JobPaths(tmp_path / "ft"),
        weights_path=str(out),
        weights_kind="detector",
    )
    assert tuned.model.backbone.init_cfg is None
    assert tuned.custom_hooks == [dict(type="DetectorInitHook", checkpoint=str(out))]
    (tmp_path / "ft").mkdir()
    ft_runner = _runner(tuned, tmp_path / "ft")
    ft_model = ft_runner.model
    state = ft_model.state_dict()
    assert not any(torch.equal(state[key], saved[key]) for key in loaded_layers)
    report = load_detector_weights(ft_model, str(out))
    # before the first step: neck and head tensors are the pretrained ones
    state = ft_model.state_dict()
    for key in (*loaded_layers, "neck.fpn_convs.0.conv.weight", "backbone.conv1.weight"):
        assert torch.equal(state[key], saved[key]), key
    parts = report["parts"]
    heads = [part for part in ("rpn_head", "roi_head", "bbox_head") if part in parts]
    for part in ("backbone", "neck"):
        assert parts[part]["loaded"] == parts[part]["of"] > 0, (part, parts[part])
    # the classes' layers differ in shape (6 classes vs "object"): fresh, and listed
    assert fresh in report["skipped"] and not torch.equal(state[fresh], saved[fresh])
    for part in heads:
        assert parts[part]["loaded"] > 0, (part, parts[part])


def test_box_domain_settings_are_refused_where_they_do_not_apply(client, db, dataset_id):
    base = {"kind": "pretrain", "dataset_id": dataset_id, "iterations": 4, "batch_size": 2}

    def message(body: dict) -> str:
        found = client.post("/jobs", json=body)
        assert found.status_code == 422, found.text
        detail = found.json()["detail"]
        return detail["message"] if isinstance(detail, dict) else detail[0]["msg"]

    assert "box-domain" in message({**base, "method": "mocov2", "init": "imagenet"})
    assert "accepted: faster_rcnn, mask_rcnn, retinanet" in message(
        {**base, "method": "aligndet", "detector": "cascade_rcnn"}
    )
    backbone = factories.weights(db, architecture="resnet50")
    assert "backbone weights of resnet18" in message(
        {**base, "method": "aligndet", "backbone": "resnet18", "init": {"weights_id": backbone.id}}
    )
    whole = factories.weights(db, architecture="resnet18", method="aligndet")
    whole.kind, whole.detector = "detector", "faster_rcnn"
    db.commit()
    finetune = {
        **TINY,
        "dataset_id": dataset_id,
        "iterations": 20,
        "init": {"weights_id": whole.id},
    }
    refused = message({**finetune, "detector": "cascade_rcnn"})
    assert "whole faster_rcnn on resnet18" in refused and "set detector 'faster_rcnn'" in refused
    # the whole detector's neck and heads are 256 wide: another width would fail at load
    narrow = message({**finetune, "detector": "faster_rcnn", "feature_channels": 128})
    assert narrow.startswith("feature_channels:") and "(got 128)" in narrow and "256" in narrow
    accepted = client.post(
        "/jobs", json={**finetune, "detector": "faster_rcnn", "feature_channels": 256}
    )
    assert accepted.status_code == 201, accepted.text
    accepted = client.post("/jobs", json={**finetune, "detector": "faster_rcnn"})
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["weights_id"] == whole.id


@pytest.fixture(scope="module")
def e2e_dataset_id(api, shapes):
    response = api.post(
        "/datasets", json={"name": "shapes-aligndet", **factories.dataset_files(shapes)}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_image_domain_vs_image_and_box_domain_weights_through_the_api(
    api, worker, wait_job, e2e_dataset_id, lab_env
):
    pretrain = {
        "kind": "pretrain",
        "method": "aligndet",
        "backbone": "resnet18",
        "dataset_id": e2e_dataset_id,
        "iterations": 4,
        "batch_size": 2,
        "image_size": 128,
        "queue_length": 64,
        "proposals_per_image": 16,
        "num_workers": 0,
        "name": "aligndet-tiny",
    }
    created = api.post("/jobs", json=pretrain)
    assert created.status_code == 201, created.text
    job = wait_job(created.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["spec"]["detector"] == "faster_rcnn"
    assert job["record"]["proposals"]["boxes"] > 0 and job["record"]["proposals"]["method"]
    weights = next(
        w for w in api.get("/weights").json()["items"] if w["producing_job_id"] == job["id"]
    )
    assert (weights["kind"], weights["detector"], weights["method"]) == (
        "detector",
        "faster_rcnn",
        "aligndet",
    )
    losses = api.get(f"/jobs/{job['id']}/metrics", params={"key": "train/loss_box_contrast"}).json()
    values = losses["series"][0]["values"]
    assert len(values) == 4 and all(math.isfinite(v) for v in values)

    # the proposals were computed once for these images: a second pretraining reads the cache
    cache = Path(lab_env["DETLAB_ARTIFACT_ROOT"]) / "proposals"
    cached = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    again = api.post("/jobs", json={**pretrain, "iterations": 1, "name": "aligndet-again"})
    again = wait_job(again.json()["id"])
    assert again["status"] == "succeeded", again["error"]
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == cached

    finetunes = {}
    for label, init in (("scratch", "scratch"), ("box", {"weights_id": weights["id"]})):
        spec = {
            **TINY,
            "dataset_id": e2e_dataset_id,
            "iterations": 10,
            "eval_interval": 10,
            "init": init,
            "name": f"ft-{label}",
        }
        finetunes[label] = api.post("/jobs", json=spec).json()["id"]
    for label, job_id in finetunes.items():
        finished = wait_job(job_id)
        assert finished["status"] == "succeeded", (label, finished["error"])
    tuned = api.get(f"/jobs/{finetunes['box']}").json()
    loaded = tuned["record"]["init_loaded"]
    for part in ("backbone", "neck", "rpn_head"):
        assert loaded["parts"][part]["loaded"] == loaded["parts"][part]["of"] > 0
    assert "roi_head.bbox_head.fc_cls.weight" in loaded["skipped"]
    assert tuned["record"]["init_weights_sha256"] == weights["sha256"]
    board = api.get("/leaderboard", params={"dataset": e2e_dataset_id}).json()["items"]
    inits = {row["job_id"]: row["init"] for row in board}
    assert inits[finetunes["scratch"]] == "scratch"
    assert inits[finetunes["box"]] == f"weights:{weights['name']}"  # it says aligndet


def test_a_pretrain_method_that_is_not_a_name_is_a_422(client, dataset_id):
    """The detector's default reads the method before the field is validated: an object there
    (as the fuzzer sent) must reach the field's own 422, not a 500."""
    body = {"kind": "pretrain", "dataset_id": dataset_id, "iterations": 1, "method": {}}
    response = client.post("/jobs", json=body)
    assert response.status_code == 422 and "method" in response.text
