"""ResNet-50 in the C4 layout: built from mmdet's own C4 model file, trained a step on CPU, its
neck and detector choices checked by the API, and a checkpoint's stage 4 loaded into the RoI
head."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import factories
import pytest
import torch
from mmengine.config import Config

from backend.jobs.paths import JobPaths
from backend.jobs.spec import FinetuneSpec
from backend.registry import BACKBONES, DETECTORS, c4_backbones, c4_detectors
from backend.weights.convert import load_backbone
from worker.mmdet_config import DetLabModel, build_evaluate_config, build_finetune_config

C4 = "resnet50_c4"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return factories.tiny_dataset(tmp_path_factory.mktemp("shapes"))


def _registered() -> None:
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=True)


def test_the_registry_names_the_c4_backbone_and_its_detectors():
    assert c4_backbones() == (C4,)
    assert c4_detectors() == ("faster_rcnn", "mask_rcnn")
    assert DETECTORS["faster_rcnn"].base_model_for(BACKBONES[C4]) == "faster-rcnn_r50-caffe-c4.py"


def test_a_c4_spec_has_no_neck_and_others_default_to_fpn():
    c4 = FinetuneSpec(dataset_id=1, backbone=C4, iterations=10)
    assert (c4.neck, c4.resolved_norm) == (None, "frozen_bn")
    assert FinetuneSpec(dataset_id=1, backbone=C4, neck=None, iterations=10).neck is None
    assert FinetuneSpec(dataset_id=1, iterations=10).neck == "fpn"
    assert FinetuneSpec(dataset_id=1, neck="pafpn", iterations=10).neck == "pafpn"
    # a stored spec reads back the same
    assert FinetuneSpec.model_validate(c4.model_dump()) == c4


def test_a_c4_faster_rcnn_config_is_mmdets_c4_model_and_trains_a_step(tiny, tmp_path):
    from mmengine.runner import Runner

    spec = FinetuneSpec(
        dataset_id=1,
        backbone=C4,
        init="scratch",  # nothing to download
        image_scale=(96, 96),
        iterations=1,
        batch_size=2,
        num_workers=0,
        roi_samples_per_image=16,
        test_proposals_per_image=10,
        lr=0.001,
    )
    cfg = build_finetune_config(spec, dataset=tiny, paths=JobPaths(tmp_path))
    # the saved file, as mmdet's tools read it
    cfg.dump(str(tmp_path / "config.py"))
    saved = Config.fromfile(str(tmp_path / "config.py"))

    model = saved.model
    assert "neck" not in model
    assert (model.backbone.num_stages, model.backbone.out_indices) == (3, (2,))
    assert model.backbone.style == model.roi_head.shared_head.style == "pytorch"
    assert model.backbone.norm_cfg == model.roi_head.shared_head.norm_cfg
    assert model.backbone.init_cfg is None and model.roi_head.shared_head.init_cfg is None
    assert model.rpn_head.anchor_generator.strides == [16]
    assert model.roi_head.bbox_head.num_classes == len(tiny.stats["categories"])
    assert model.train_cfg.rcnn.sampler.num == 16
    assert model.test_cfg.rpn.max_per_img == model.test_cfg.rpn.nms_pre == 10
    assert model.data_preprocessor.bgr_to_rgb is True

    saved.work_dir = str(tmp_path / "work")
    saved.default_hooks.logger.interval = 1
    runner = Runner.from_cfg(saved)
    head = runner.model.roi_head
    assert type(head.shared_head).__name__ == "ResLayer"
    assert (
        type(runner.model.backbone).__name__ == "ResNet"
        and len(runner.model.backbone.res_layers) == 3
    )
    before = head.shared_head.layer4[0].conv1.weight.detach().clone()
    runner.train()  # one iteration, then the val split scored

    assert runner.iter == 1
    assert not torch.equal(before, head.shared_head.layer4[0].conv1.weight)  # stage 4 trained
    assert (tmp_path / "work" / "iter_1.pth").is_file()


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"neck": "pafpn"}, "neck 'pafpn' does not apply to resnet50_c4"),
        ({"neck": "fpn"}, "leave neck unset"),
        (
            {"detector": "cascade_rcnn"},
            "resnet50_c4 (the C4 layout) works with faster_rcnn, mask_rcnn",
        ),
        ({"detector": "retinanet"}, "mmdet has no C4 model for retinanet"),
    ],
)
def test_the_api_refuses_a_neck_or_a_detector_that_c4_does_not_take(
    client, dataset_id, settings, why
):
    body = {"dataset_id": dataset_id, "backbone": C4, "iterations": 10, **settings}
    refused = client.post("/jobs", json=body)
    assert refused.status_code == 422, refused.text
    assert why in refused.text


def test_the_api_takes_a_c4_job_and_stores_it_without_a_neck(client, dataset_id):
    created = client.post(
        "/jobs", json={"dataset_id": dataset_id, "backbone": C4, "iterations": 10}
    )
    assert created.status_code in (200, 201), created.text
    spec = created.json()["spec"]
    assert spec["neck"] is None and spec["backbone"] == C4
    defaults = client.get("/jobs/options").json()
    assert C4 in defaults["backbone"] and defaults["defaults"]["neck"] is None


def _detectron2_c4_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, object]:
    """An mmdet ResNet-50 state dict under detectron2's R50-C4 detector names: stem and
    res2-res4 under backbone., res5 in the RoI heads."""

    def renamed(key: str) -> str:
        if not key.startswith("layer"):
            key = "stem." + key.replace("bn1", "conv1.norm")
        for stage in (1, 2, 3, 4):
            key = key.replace(f"layer{stage}", f"res{stage + 1}")
        for conv in (1, 2, 3):
            key = key.replace(f"bn{conv}", f"conv{conv}.norm")
        key = key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
        return ("roi_heads." if key.startswith("res5.") else "backbone.") + key

    model = {renamed(k): v.numpy() for k, v in state.items() if "num_batches" not in k}
    model["roi_heads.box_predictor.cls_score.weight"] = torch.zeros(4, 2048).numpy()
    model["proposal_generator.rpn_head.conv.weight"] = torch.zeros(1024, 1024, 3, 3).numpy()
    return {"model": model, "__author__": "Detectron2 Model Zoo"}


def test_a_detectron2_c4_pkl_is_imported_and_loads_into_the_c4_model(tiny, tmp_path):
    from mmdet.models.backbones import ResNet
    from mmdet.registry import MODELS

    torch.manual_seed(0)
    source = ResNet(depth=50).state_dict()
    for key, value in source.items():  # fresh BN statistics are 0 and 1: make them telling
        if key.endswith(("running_mean", "running_var")):
            source[key] = torch.rand_like(value) + 0.5
    pkl = tmp_path / "model_final_r50_c4.pkl"
    payload = _detectron2_c4_checkpoint(source)
    pkl.write_bytes(pickle.dumps(payload, protocol=2))

    converted = load_backbone(pkl, architecture=C4)

    assert converted.source_format == "detectron2"
    assert converted.dropped == {"proposal_generator": 1, "roi_heads": 1}
    kept = {k for k in source if "num_batches" not in k}
    assert set(converted.state_dict) == kept  # every backbone and res5 key mapped

    weights = tmp_path / "r50_c4.pth"
    torch.save({"state_dict": converted.state_dict}, weights)
    spec = FinetuneSpec(dataset_id=1, backbone=C4, init={"weights_id": 1}, norm="bn", iterations=10)
    cfg = build_finetune_config(
        spec, dataset=tiny, paths=JobPaths(tmp_path), weights_path=str(weights)
    )
    _registered()
    model = MODELS.build(cfg.model)
    model.init_weights()

    loaded = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    loaded.update({f"roi_heads.{k}": v for k, v in model.roi_head.shared_head.state_dict().items()})
    file_tensors = payload["model"]
    assert isinstance(file_tensors, dict)
    checked = 0
    for name, mmdet_key in _mmdet_names(file_tensors).items():
        assert torch.equal(loaded[mmdet_key], torch.from_numpy(file_tensors[name])), name
        checked += 1
    assert checked == len(kept)


def _mmdet_names(model: dict[str, object]) -> dict[str, str]:
    """detectron2 name -> the C4 model's key (backbone.* or roi_heads.layer4.*) for every
    backbone tensor, by detectron2's renaming read backwards."""
    names = {}
    for name in model:
        if not name.startswith(("backbone.", "roi_heads.res5.")):
            continue
        part, _, key = name.partition(".")
        key = key.replace("stem.conv1.norm.", "bn1.").replace("stem.", "")
        for stage in (2, 3, 4, 5):
            key = key.replace(f"res{stage}.", f"layer{stage - 1}.")
        key = key.replace("shortcut.norm.", "downsample.1.").replace("shortcut.", "downsample.0.")
        for conv in (1, 2, 3):
            key = key.replace(f"conv{conv}.norm.", f"bn{conv}.")
        names[name] = f"{part}.{key}"
    return names


def test_an_mmdet_c4_checkpoint_gives_stage_4_back_from_the_shared_head(tmp_path):
    from mmdet.models.backbones import ResNet

    torch.manual_seed(1)
    source = ResNet(depth=50).state_dict()
    state = {
        (f"roi_head.shared_head.{k}" if k.startswith("layer4.") else f"backbone.{k}"): v
        for k, v in source.items()
    }
    state["roi_head.bbox_head.fc_cls.weight"] = torch.zeros(4, 2048)
    path = tmp_path / "faster-rcnn_r50_c4.pth"
    torch.save({"meta": {}, "state_dict": state}, path)

    converted = load_backbone(path, architecture=C4)

    assert converted.source_format == "openmmlab"
    assert converted.dropped == {"roi_head": 1}
    assert torch.equal(
        converted.state_dict["layer4.2.conv3.weight"], source["layer4.2.conv3.weight"]
    )
    # the same file imported as a plain ResNet-50 is the same weights
    assert set(load_backbone(path, architecture="resnet50").state_dict) == set(converted.state_dict)


def test_a_c4_checkpoint_is_scored_with_the_c4_model(tiny, tmp_path):
    cfg = build_evaluate_config(
        DetLabModel(detector="faster_rcnn", backbone=C4, neck=None),
        dataset=tiny,
        paths=JobPaths(tmp_path),
        classes=("a", "b"),
        batch_size=1,
        image_scale=(96, 96),
        checkpoint=str(tmp_path / "iter_1.pth"),
    )
    _registered()
    from mmdet.registry import MODELS

    with torch.device("meta"):
        model = MODELS.build(cfg.model)
    assert model.roi_head.bbox_head.num_classes == 2
    assert not hasattr(model, "neck") or model.neck is None
    assert cfg.model.roi_head.shared_head.init_cfg is None


@pytest.mark.parametrize("kind", ["finetune", "evaluate"])
def test_a_backbone_that_is_not_a_name_is_a_422_while_the_neck_is_filled(client, dataset_id, kind):
    """The neck's default reads the backbone before the field is validated: a list there (as
    the fuzzer sent) must reach the field's own 422, not a 500."""
    body = {"kind": kind, "dataset_id": dataset_id, "backbone": [None, None], "neck": None}
    body.update({"iterations": 10} if kind == "finetune" else {"source_job_id": 1})
    response = client.post("/jobs", json=body)
    assert response.status_code == 422 and "backbone" in response.text
