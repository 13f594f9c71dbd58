"""Checkpoints in each supported layout become mmdet ResNet weights; bad files are refused."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from mmdet.models.backbones import ResNet

from backend.weights.convert import ARCHITECTURES, WeightsFileError, load_backbone

# tensors compared with the source after conversion: stem, a BN statistic, a shortcut, the end
PROBES = (
    "conv1.weight",
    "bn1.running_var",
    "layer3.0.downsample.1.running_mean",
    "layer4.2.conv3.weight",
)


def _torchvision_state(depth: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(depth)
    model = getattr(torchvision.models, f"resnet{depth}")()
    state = model.state_dict()
    for key, value in state.items():  # fresh BN statistics are 0 and 1: make them telling
        if key.endswith(("running_mean", "running_var")):
            state[key] = torch.rand_like(value) + 0.5
    return state


@pytest.fixture(scope="module")
def resnet50() -> dict[str, torch.Tensor]:
    return _torchvision_state(50)


@pytest.fixture(scope="module")
def resnet18() -> dict[str, torch.Tensor]:
    return _torchvision_state(18)


def _detectron2_name(key: str) -> str:
    """The renaming of detectron2's tools/convert-torchvision-to-d2.py."""
    if "layer" not in key:
        key = "stem." + key
    for t in (1, 2, 3, 4):
        key = key.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        key = key.replace(f"bn{t}", f"conv{t}.norm")
    return key.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def _assert_mmdet_resnet50(converted, source: dict[str, torch.Tensor]) -> None:
    model = ResNet(depth=50)
    missing, unexpected = model.load_state_dict(converted.state_dict, strict=False)
    assert unexpected == []
    assert all(key.endswith("num_batches_tracked") for key in missing), missing
    loaded = model.state_dict()
    for key in PROBES:
        assert torch.equal(loaded[key], source[key]), key


def test_moco_v2_checkpoint(tmp_path, resnet50):
    state = {f"module.encoder_q.{k}": v for k, v in resnet50.items() if not k.startswith("fc.")}
    head = {
        "fc.0.weight": torch.randn(16, 2048),
        "fc.0.bias": torch.randn(16),
        "fc.2.weight": torch.randn(8, 16),
        "fc.2.bias": torch.randn(8),
    }
    state.update({f"module.encoder_q.{k}": v for k, v in head.items()})
    key_encoder = {k.replace("encoder_q", "encoder_k"): v.clone() for k, v in state.items()}
    state.update(key_encoder)
    state["module.queue"] = torch.randn(8, 32)
    state["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    path = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    # the official MoCo files predate torch's zip format
    torch.save(
        {"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": {"state": {}}},
        path,
        _use_new_zipfile_serialization=False,
    )

    converted = load_backbone(path, architecture="resnet50")

    assert converted.source_format == "moco"
    assert converted.dropped == {
        "encoder_k": len(key_encoder),
        "fc": 4,
        "queue": 1,
        "queue_ptr": 1,
    }
    _assert_mmdet_resnet50(converted, resnet50)


def test_openselfsup_checkpoint_with_numpy_metadata(tmp_path, resnet50):
    state = {f"backbone.{k}": v for k, v in resnet50.items() if not k.startswith("fc.")}
    state.update(
        {
            "neck.mlp.0.weight": torch.randn(16, 2048),
            "neck.mlp.0.bias": torch.randn(16),
            "neck.mlp.2.weight": torch.randn(8, 16),
            "neck.mlp.2.bias": torch.randn(8),
            "head.predictor.weight": torch.randn(8, 8),
            "momentum_encoder.module.0.conv1.weight": resnet50["conv1.weight"].clone(),
        }
    )
    path = tmp_path / "detco_200ep.pth"
    meta = {"epoch": 200, "config": "model = dict(type='DetCo')", "seed": np.int64(3)}
    torch.save({"meta": meta, "state_dict": state}, path)

    converted = load_backbone(path, architecture="resnet50")

    assert converted.source_format == "openmmlab"
    assert converted.dropped == {"head": 1, "momentum_encoder": 1, "neck": 4}
    _assert_mmdet_resnet50(converted, resnet50)


def test_torchvision_state_dict(tmp_path, resnet50):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50, path)

    converted = load_backbone(path, architecture="resnet50")

    assert converted.source_format == "torchvision"
    assert converted.dropped == {"fc": 2}
    assert len(converted.state_dict) == len(resnet50) - 2
    _assert_mmdet_resnet50(converted, resnet50)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_detectron2_pkl(tmp_path, resnet50, protocol):
    model = {_detectron2_name(k): v.numpy() for k, v in resnet50.items()}
    assert "res2.0.shortcut.norm.running_var" in model and "stem.conv1.norm.bias" in model
    path = tmp_path / "R-50.pkl"
    with path.open("wb") as handle:
        payload = {"model": model, "__author__": "torchvision", "matching_heuristics": True}
        pickle.dump(payload, handle, protocol=protocol)

    converted = load_backbone(path, architecture="resnet50")

    assert converted.source_format == "detectron2"
    assert converted.dropped == {"fc": 2}
    _assert_mmdet_resnet50(converted, resnet50)


def test_detectron2_detector_checkpoint_keeps_the_bottom_up_backbone(tmp_path, resnet18):
    model = {f"backbone.bottom_up.{_detectron2_name(k)}": v.numpy() for k, v in resnet18.items()}
    model["backbone.fpn_lateral2.weight"] = np.zeros((256, 64, 1, 1), np.float32)
    model["proposal_generator.rpn_head.conv.weight"] = np.zeros((256, 256, 3, 3), np.float32)
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}))

    converted = load_backbone(path, architecture="resnet18")

    assert converted.dropped == {"backbone.fpn_lateral2": 1, "fc": 2, "proposal_generator": 1}
    assert torch.equal(converted.state_dict["layer2.0.bn2.weight"], resnet18["layer2.0.bn2.weight"])


def test_wrong_architecture_names_keys_shapes_and_the_fitting_one(tmp_path, resnet18):
    path = tmp_path / "resnet18.pth"
    torch.save(resnet18, path)

    with pytest.raises(WeightsFileError) as refused:
        load_backbone(path, architecture="resnet50")

    message = str(refused.value)
    assert "requested architecture resnet50" in message
    assert "layer1.0.conv1.weight: expected [64, 64, 1, 1], found [64, 64, 3, 3]" in message
    assert "missing keys (layer1.0.conv3.weight" in message
    assert "the weights fit resnet18" in message
    assert {"key": "layer1.0.conv3.weight", "problem": "missing"} in refused.value.problems


def test_deeper_resnet_is_not_cut_down_silently(tmp_path):
    path = tmp_path / "resnet101.pth"
    torch.save(_torchvision_state(101), path)

    with pytest.raises(WeightsFileError, match=r"unexpected keys \(layer3\.6\.conv1\.weight"):
        load_backbone(path, architecture="resnet50")
    assert load_backbone(path, architecture="resnet101").source_format == "torchvision"


@pytest.mark.parametrize(
    "name, content",
    [
        *((f"random{seed}.pth", random.Random(seed).randbytes(4096)) for seed in range(5)),
        *((f"random{seed}.pkl", random.Random(seed).randbytes(4096)) for seed in range(5)),
        ("empty.pth.tar", b""),
        ("not_a_dict.pkl", pickle.dumps([1, 2, 3])),
    ],
)
def test_corrupt_files_are_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsFileError, match="accepted|expected a dict"):
        load_backbone(path, architecture="resnet18")


def test_truncated_checkpoint_is_refused(tmp_path, resnet18):
    whole = tmp_path / "whole.pth"
    torch.save(resnet18, whole)
    path = tmp_path / "truncated.pth"
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(
        WeightsFileError, match="truncated.pth is not a readable PyTorch checkpoint"
    ):
        load_backbone(path, architecture="resnet18")


def test_other_files_are_refused_with_what_is_accepted(tmp_path):
    unknown = tmp_path / "model.safetensors"
    unknown.write_bytes(b"{}")
    with pytest.raises(WeightsFileError, match=r"accepted: \.pth, \.pth\.tar, \.pt, \.pkl"):
        load_backbone(unknown, architecture="resnet18")

    no_backbone = tmp_path / "vit.pth"
    torch.save({"state_dict": {"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, no_backbone)
    with pytest.raises(WeightsFileError, match="holds no ResNet backbone keys.*accepted layouts"):
        load_backbone(no_backbone, architecture="resnet18")

    caffe2 = tmp_path / "MSRA-R-50.pkl"
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res_conv1_bn_s": np.ones(64)}
    caffe2.write_bytes(pickle.dumps({"blobs": blobs}, protocol=2))
    with pytest.raises(WeightsFileError, match="Caffe2 names .*accepted: detectron2 files"):
        load_backbone(caffe2, architecture="resnet50")

    with pytest.raises(WeightsFileError, match="use one of resnet18, resnet50"):
        load_backbone(no_backbone, architecture="swin_t")


class _RunsCode:
    """Unpickling this runs a shell command that writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def _write_payloads(folder: Path, marker: Path) -> list[Path]:
    weights = {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32), "x": _RunsCode(marker)}
    files = {
        "plain.pth": pickle.dumps({"state_dict": _RunsCode(marker)}),
        "plain_protocol2.pth.tar": pickle.dumps(_RunsCode(marker), protocol=2),
        "detectron2.pkl": pickle.dumps({"model": weights, "__author__": "x"}),
        "protocol2.pkl": pickle.dumps({"model": weights}, protocol=2),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    torch.save(
        {"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _RunsCode(marker)},
        folder / "torch_save.pt",
    )
    return [folder / name for name in files] + [folder / "torch_save.pt"]


def test_pickles_that_would_run_code_are_refused_and_do_not_run(tmp_path):
    marker = tmp_path / "pwned"
    paths = _write_payloads(tmp_path, marker)

    for path in paths:
        with pytest.raises(WeightsFileError) as refused:
            load_backbone(path, architecture="resnet50")
        message = str(refused.value)
        assert f"{path.name} is refused" in message and "system" in message, message
        assert "could run code" in message and "accepted" in message
        assert not marker.exists(), f"{path.name} ran its payload"

    # the payload is live: an ordinary unpickler runs it
    pickle.loads((tmp_path / "detectron2.pkl").read_bytes())
    assert marker.read_text().strip() == "pwned"


def test_architectures_are_the_registry_backbones_in_the_resnet_layout(tmp_path):
    from backend.registry import BACKBONES

    resnets = {name for name, entry in BACKBONES.items() if entry.key_layout == "resnet"}
    assert set(ARCHITECTURES) == resnets and "resnet50" in resnets
    with pytest.raises(WeightsFileError, match="architecture 'swin_t' is not accepted"):
        load_backbone(tmp_path / "any.pth", architecture="swin_t")


def test_detectron2_pkl_written_under_numpy_2(tmp_path, resnet18):
    model = {_detectron2_name(k): v.numpy() for k, v in resnet18.items()}
    data = pickle.dumps({"model": model}, protocol=2)
    # numpy 2 writes its array globals from numpy._core; protocol 2 names them in plain text
    assert b"cnumpy.core.multiarray\n" in data
    path = tmp_path / "numpy2.pkl"
    path.write_bytes(data.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))

    converted = load_backbone(path, architecture="resnet18")

    assert torch.equal(
        converted.state_dict["layer1.1.conv2.weight"], resnet18["layer1.1.conv2.weight"]
    )
