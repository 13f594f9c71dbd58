"""The weights registry over the API: imports become mmdet backbones; bad imports say why."""

from __future__ import annotations

import hashlib
import os
import pickle
import uuid
from pathlib import Path

import factories
import pytest
import torch
import torchvision

from backend.jobs.models import JobKind, JobStatus


@pytest.fixture
def api(client):
    """The shared client, with the weights routes added while backend.main lacks them."""
    from backend.weights.router import router

    if not any(getattr(route, "path", None) == "/weights" for route in client.app.routes):
        client.app.include_router(router)
    return client


@pytest.fixture(scope="module")
def resnet18_file(data_root: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A torchvision ResNet-18 checkpoint under the allowed data root."""
    torch.manual_seed(18)
    state = torchvision.models.resnet18().state_dict()
    path = data_root / f"weights-{uuid.uuid4().hex[:8]}" / "resnet18.pth"
    path.parent.mkdir()
    torch.save(state, path)
    return path, state


def _payload(path: Path, name: str = "r18-imagenet", **changes) -> dict:
    body = {"name": name, "path": str(path), "architecture": "resnet18", "method": "imagenet"}
    return {**body, **changes}


def _refusal(response) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else str(detail)


def test_import_becomes_an_mmdet_backbone_and_is_listed(api, resnet18_file, lab_env):
    from mmdet.models.backbones import ResNet

    path, state = resnet18_file
    response = api.post("/weights", json=_payload(path))
    assert response.status_code == 201, response.text
    weights = response.json()
    assert weights["architecture"] == "resnet18" and weights["method"] == "imagenet"
    assert weights["source"] == "torchvision" and weights["producing_job_id"] is None
    assert weights["report"] == {
        "source_format": "torchvision",
        "dropped": {"fc": 2},
        "kept_keys": len(state) - 2,
        "source_path": str(path.resolve()),
    }
    saved = Path(weights["path"])
    assert saved.parent == Path(lab_env["DETLAB_ARTIFACT_ROOT"]).resolve() / "weights"
    assert saved.name == f"{weights['sha256']}.pth"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == weights["sha256"]

    # exactly how a fine-tune job's backbone loads it
    backbone = ResNet(depth=18, init_cfg=dict(type="Pretrained", checkpoint=str(saved)))
    backbone.init_weights()
    assert torch.equal(backbone.conv1.weight.detach(), state["conv1.weight"])
    assert torch.equal(backbone.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    meta = torch.load(saved, map_location="cpu", weights_only=True)["meta"]
    assert meta == {"architecture": "resnet18", "source_format": "torchvision"}

    listed = api.get("/weights").json()
    assert listed["items"][0]["id"] == weights["id"]  # newest first
    detail = api.get(f"/weights/{weights['id']}").json()
    assert detail["finetune_jobs"] == [] and detail["sha256"] == weights["sha256"]

    again = api.post("/weights", json=_payload(path))
    assert again.status_code == 409 and "choose another name" in again.text


def test_detail_lists_the_finetune_jobs_that_used_the_weights(api, db, resnet18_file):
    weights = api.post("/weights", json=_payload(resnet18_file[0])).json()
    used = factories.job(db, name="from r18", weights_id=weights["id"])
    factories.job(db, name="scratch", status=JobStatus.succeeded)

    detail = api.get(f"/weights/{weights['id']}").json()

    assert detail["finetune_jobs"] == [{"id": used.id, "name": "from r18", "status": "queued"}]


def test_a_pretrain_jobs_backbone_is_registered_once_per_job(api, db, tmp_path):
    from backend.errors import Conflict
    from backend.weights import service

    job, other = (factories.job(db, kind=JobKind.pretrain, name=n) for n in ("moco", "detco"))
    produced = dict(
        session=db,
        name=f"mocov2-resnet18-job{job.id}",
        architecture="resnet18",
        method="mocov2",
        report={"iterations": 20},
    )

    first = service.register_produced(
        path=tmp_path / "a.pth", sha256="a" * 64, job_id=job.id, **produced
    )
    rerun = service.register_produced(
        path=tmp_path / "b.pth", sha256="b" * 64, job_id=job.id, **produced
    )

    assert rerun.id == first.id
    entry = api.get(f"/weights/{first.id}").json()
    assert entry["producing_job_id"] == job.id and entry["source"] == "pretrain_job"
    assert entry["path"] == str(tmp_path / "b.pth") and entry["sha256"] == "b" * 64
    with pytest.raises(Conflict, match="choose another name"):
        service.register_produced(
            path=tmp_path / "c.pth", sha256="c" * 64, job_id=other.id, **produced
        )


def test_imports_outside_the_roots_or_not_files_are_refused(api, data_root, tmp_path):
    before = api.get("/weights").json()["total"]
    outside = tmp_path / "outside.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, outside)
    assert "outside the allowed data roots" in _refusal(
        api.post("/weights", json=_payload(outside))
    )
    link = data_root / f"link-{uuid.uuid4().hex[:8]}.pth"
    link.symlink_to(outside)
    assert "outside the allowed data roots" in _refusal(api.post("/weights", json=_payload(link)))
    missing = data_root / "no-such-file.pth"
    assert "is not a file" in _refusal(api.post("/weights", json=_payload(missing)))
    assert api.get("/weights").json()["total"] == before


def test_wrong_architecture_is_refused_with_keys_and_shapes(api, resnet18_file):
    response = api.post("/weights", json=_payload(resnet18_file[0], architecture="resnet50"))
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "requested architecture resnet50" in detail["message"]
    assert "the weights fit resnet18" in detail["message"]
    assert {
        "key": "layer1.0.conv1.weight",
        "problem": "expected [64, 64, 1, 1], found [64, 64, 3, 3]",
    } in detail["problems"]


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused(api, data_root, tmp_path):
    marker = tmp_path / "pwned"
    folder = data_root / f"evil-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    for name in ("evil.pth", "evil.pkl"):
        (folder / name).write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))
        message = _refusal(api.post("/weights", json=_payload(folder / name)))
        assert "is refused" in message and "system" in message and "could run code" in message
    assert not marker.exists()


@pytest.mark.parametrize(
    "change, accepted",
    [
        ({"architecture": "resnet34"}, "resnet18"),
        ({"method": "MoCo v2!"}, "[a-z0-9_"),
        ({"checkpoint": "x"}, "Extra inputs are not permitted"),
        ({"name": ""}, "at least 1 character"),
    ],
)
def test_invalid_bodies_say_what_is_accepted(api, resnet18_file, change, accepted):
    assert accepted in _refusal(api.post("/weights", json=_payload(resnet18_file[0], **change)))


def test_unknown_weights_is_404(api):
    response = api.get("/weights/999999")
    assert response.status_code == 404 and "see GET /weights" in response.text
