"""The reproducibility record: what the worker captures (worker/record.py) on files the tests
write, which fields a comparison flags (backend/jobs/records.py), the claim-checked write, and
the leaderboard's flag on a row whose environment or data differs from the others'."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import factories
import pytest
import torch
import torchvision

from backend.jobs import records
from backend.jobs import service as job_service
from backend.jobs.models import Job, JobKind, JobStatus
from backend.jobs.paths import JobPaths
from backend.jobs.spec import FinetuneSpec
from worker import record as capturing
from worker.mmdet_config import build_finetune_config

CATEGORIES = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]
CONFIG = "model = dict(type='FasterRCNN')\nwork_dir = '{job}/work'\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def coco(path: Path, names: list[str], *, width: float = 10.0) -> Path:
    """A COCO file listing images `names`, one box each, the first `width` wide."""
    images = [
        {"id": i + 1, "file_name": name, "width": 64, "height": 64} for i, name in enumerate(names)
    ]
    annotations = [
        {
            "id": i + 1,
            "image_id": i + 1,
            "category_id": 1,
            "bbox": [1, 1, width if i == 0 else 10.0, 9],
            "area": 90,
            "iscrowd": 0,
        }
        for i in range(len(names))
    ]
    path.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES})
    )
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    """Each test starts with the process's cache of hashes empty (as a new job's process)."""
    capturing._memory.clear()
    yield
    capturing._memory.clear()


@pytest.fixture
def files(tmp_path: Path) -> SimpleNamespace:
    job_dir = tmp_path / "artifacts" / "jobs" / "7"
    weights = tmp_path / "init.pth"
    torch.save({"state_dict": {"w": torch.ones(3)}}, weights)
    return SimpleNamespace(
        train=coco(tmp_path / "train.json", ["b.png", "a.png", "c.png"]),
        val=coco(tmp_path / "val.json", ["v2.png", "v1.png"]),
        weights=weights,
        job_dir=job_dir,
        config=CONFIG.format(job=job_dir),
        cache=tmp_path / "cache",
    )


def capture(files: SimpleNamespace, **changes) -> dict:
    arguments = dict(
        config_text=files.config,
        job_dir=files.job_dir,
        train_ann=files.train,
        val_ann=files.val,
        init_checkpoint=str(files.weights),
        seed=3,
        deterministic=False,
        cache_dir=files.cache,
    )
    return capturing.capture(**{**arguments, **changes})


def test_the_record_has_every_field_filled(files):
    found = capture(files)
    assert list(found) == list(records.FIELDS)
    assert found["detlab_version"] == metadata.version("detlab")
    assert found["python"] == platform.python_version()
    # torch's own version names its build (+cu130, +cpu)
    assert found["torch"] == torch.__version__
    assert found["torchvision"] == torchvision.__version__
    for package in ("mmcv", "mmengine", "mmdet", "mmpretrain"):
        assert found[package] == metadata.version(package)
    assert found["cuda"] == torch.version.cuda and found["cudnn"] == torch.backends.cudnn.version()
    if torch.cuda.is_available():
        assert found["device"] == "cuda" and found["gpu_model"] == torch.cuda.get_device_name(0)
        assert found["gpu_count"] == torch.cuda.device_count()
    else:
        assert (found["device"], found["gpu_model"], found["gpu_count"]) == ("cpu", None, 0)
    # a git checkout: its commit (a copy without .git: DETLAB_GIT_COMMIT, else none)
    if (capturing.REPOSITORY / ".git").exists():
        assert len(found["git_commit"]) == 40
    assert found["train_ann_sha256"] == sha256(files.train)
    assert found["val_ann_sha256"] == sha256(files.val)
    assert found["train_images_sha256"] == hashlib.sha256(b"a.png\nb.png\nc.png").hexdigest()
    assert found["val_images_sha256"] == hashlib.sha256(b"v1.png\nv2.png").hexdigest()
    assert found["init_weights"] == str(files.weights)
    assert found["init_weights_sha256"] == sha256(files.weights)
    assert (found["seed"], found["deterministic"]) == (3, False)
    # the job's own folder reads as {job_dir}
    expected = CONFIG.format(job="{job_dir}").encode()
    assert found["config_sha256"] == hashlib.sha256(expected).hexdigest()
    json.dumps(found)  # stored in a JSON column as it is


def test_the_dataset_hash_changes_when_one_annotation_changes(files):
    before = capture(files)
    coco(files.val, ["v2.png", "v1.png"], width=11.0)  # one box one pixel wider
    after = capture(files)
    assert after["val_ann_sha256"] != before["val_ann_sha256"]
    assert after["val_images_sha256"] == before["val_images_sha256"]  # the same images
    assert after["train_ann_sha256"] == before["train_ann_sha256"]
    assert records.differences([before, before, after]) == [[], [], ["val_ann_sha256"]]


def test_the_image_list_hash_changes_when_an_image_name_changes(files):
    before = capture(files)
    coco(files.train, ["b.png", "a.png", "d.png"])
    after = capture(files)
    assert after["train_images_sha256"] != before["train_images_sha256"]
    assert after["train_ann_sha256"] != before["train_ann_sha256"]
    # listed in another order: the same images
    coco(files.train, ["d.png", "b.png", "a.png"])
    assert capture(files)["train_images_sha256"] == after["train_images_sha256"]


def test_the_cache_never_returns_the_hash_of_a_changed_file(files):
    first = capture(files)["val_ann_sha256"]
    # changed at once, to the same size: a fresh file is never cached, so it is read again
    text = files.val.read_text()
    files.val.write_text(text.replace('"v1.png"', '"v3.png"'))
    assert capture(files)["val_ann_sha256"] == sha256(files.val) != first

    # a settled file is cached, in the process and on disk for the next job's process
    settled = time.time() - 3600
    os.utime(files.val, (settled, settled))
    kept = capture(files)["val_ann_sha256"]
    assert kept == sha256(files.val) and len(list(files.cache.iterdir())) >= 1
    capturing._memory.clear()
    # a changed modification time misses the cache, on disk as in memory
    files.val.write_text(text.replace('"v1.png"', '"v4.png"'))
    os.utime(files.val, (settled + 1, settled + 1))
    assert capture(files)["val_ann_sha256"] == sha256(files.val) != kept


def test_an_unchanged_file_is_not_read_again(files):
    settled = time.time() - 3600
    os.utime(files.val, (settled, settled))
    kept = capture(files)["val_ann_sha256"]
    # a rewrite that keeps size and time (which no editor does) shows the cache was used
    files.val.write_text(files.val.read_text().replace('"v1.png"', '"v9.png"'))
    os.utime(files.val, (settled, settled))
    assert capture(files)["val_ann_sha256"] == kept
    capturing._memory.clear()  # the next job's process: the disk cache answers
    assert capture(files)["val_ann_sha256"] == kept


def test_a_rerun_has_the_same_config_hash(tmp_path, files):
    dataset = SimpleNamespace(
        train_ann=str(files.train),
        val_ann=str(files.val),
        train_images=str(tmp_path),
        val_images=str(tmp_path),
        stats={"categories": CATEGORIES},
    )
    spec = FinetuneSpec(dataset_id=1, backbone="resnet18", iterations=10, data_fraction=0.5)

    def saved(job_id: int, one: FinetuneSpec) -> tuple[str, Path]:
        """The config text a job of this id saves, and its folder."""
        paths = JobPaths.for_job(tmp_path / "artifacts", job_id)
        paths.root.mkdir(parents=True)
        build_finetune_config(one, dataset=dataset, paths=paths).dump(str(paths.config))
        return paths.config.read_text(), paths.root

    text, job_dir = saved(1, spec)
    again, again_dir = saved(2, spec.model_copy(update={"name": "re-run of 1"}))
    assert text != again  # each names its own folder (work dir, predictions, train subset)
    original = capture(files, config_text=text, job_dir=job_dir)
    rerun = capture(files, config_text=again, job_dir=again_dir)
    assert rerun["config_sha256"] == original["config_sha256"]
    assert records.differences([original, rerun]) == [[], []]

    other, other_dir = saved(3, spec.model_copy(update={"lr": 0.01}))
    assert (
        capture(files, config_text=other, job_dir=other_dir)["config_sha256"]
        != (original["config_sha256"])
    )


def test_what_the_config_says_of_init_seed_and_determinism(tmp_path, files, monkeypatch):
    dataset = SimpleNamespace(
        train_ann=str(files.train),
        val_ann=str(files.val),
        train_images=str(tmp_path),
        val_images=str(tmp_path),
        stats={"categories": CATEGORIES},
    )
    spec = FinetuneSpec(dataset_id=1, backbone="resnet18", iterations=10, seed=11)
    cfg = build_finetune_config(spec, dataset=dataset, paths=JobPaths(tmp_path / "job"))
    facts = capturing.config_facts(cfg)
    assert facts == {
        "init_checkpoint": "torchvision://resnet18",
        "seed": 11,
        "deterministic": False,
    }
    scratch = build_finetune_config(
        spec.model_copy(update={"init": "scratch"}), dataset=dataset, paths=JobPaths(tmp_path)
    )
    assert capturing.config_facts(scratch)["init_checkpoint"] is None

    # an ImageNet init: the URL mmengine downloads, and the file's hash once it is downloaded
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    found = capture(files, init_checkpoint="torchvision://resnet18")
    assert found["init_weights"].startswith("https://download.pytorch.org/models/resnet18-")
    assert found["init_weights_sha256"] is None
    downloaded = (
        tmp_path / "torch" / "hub" / "checkpoints" / found["init_weights"].rsplit("/", 1)[1]
    )
    downloaded.parent.mkdir(parents=True)
    downloaded.write_bytes(b"weights")
    found = capture(files, init_checkpoint="torchvision://resnet18")
    assert found["init_weights_sha256"] == hashlib.sha256(b"weights").hexdigest()
    scratch_record = capture(files, init_checkpoint=None)
    assert scratch_record["init_weights"] is None and scratch_record["init_weights_sha256"] is None


def test_a_pretraining_folder_hashes_its_image_names(files):
    found = capture(files, train_ann=None, val_ann=None, train_image_names=["x/2.jpg", "x/1.jpg"])
    assert found["train_images_sha256"] == hashlib.sha256(b"x/1.jpg\nx/2.jpg").hexdigest()
    assert found["train_ann_sha256"] is None and found["val_ann_sha256"] is None


def test_the_commit_comes_from_git_else_the_environment_else_none(tmp_path, monkeypatch):
    monkeypatch.setattr(capturing, "REPOSITORY", tmp_path)  # not a git checkout
    capturing.git_commit.cache_clear()
    try:
        monkeypatch.setenv("DETLAB_GIT_COMMIT", "abc123")
        assert capturing.git_commit() == "abc123"
        capturing.git_commit.cache_clear()
        monkeypatch.delenv("DETLAB_GIT_COMMIT")
        assert capturing.git_commit() is None
        capturing.git_commit.cache_clear()
        (tmp_path / ".git").mkdir()  # looks like a checkout but is none: git fails, no raise
        assert capturing.git_commit() is None
    finally:
        capturing.git_commit.cache_clear()


BASE = {
    **dict.fromkeys(records.FIELDS, None),
    "mmdet": "3.3.0",
    "torch": "2.14.1",
    "gpu_model": "NVIDIA H100",
    "val_ann_sha256": "a" * 64,
    "deterministic": False,
}


def test_differences_flag_environment_and_data_never_the_varied_fields():
    odd_mmdet = {**BASE, "mmdet": "3.2.0"}
    odd_val = {**BASE, "val_ann_sha256": "b" * 64}
    # the spec's own fields differ in every run: never flagged
    varied = [
        {
            **BASE,
            "seed": seed,
            "config_sha256": str(seed) * 64,
            "init_weights_sha256": str(seed),
            "init_weights": f"/w/{seed}.pth",
            "gpu_count": seed,
        }
        for seed in range(3)
    ]
    assert records.differences([*varied, odd_mmdet, odd_val]) == [
        [],
        [],
        [],
        ["mmdet"],
        ["val_ann_sha256"],
    ]
    assert set(records.VARIED) == {
        "seed",
        "config_sha256",
        "init_weights",
        "init_weights_sha256",
        "gpu_count",
    }
    assert set(records.COMPARED) | set(records.VARIED) == set(records.FIELDS)
    both = {**BASE, "mmdet": "3.2.0", "gpu_model": "NVIDIA A100"}
    assert records.differences([BASE, BASE, both]) == [[], [], ["mmdet", "gpu_model"]]


def test_differences_leave_unknowns_alone_and_flag_a_tie_on_both_sides():
    # no record (an import), or a field unknown (an evaluate job has no train annotations)
    no_train = {**BASE, "train_ann_sha256": None}
    with_train = {**BASE, "train_ann_sha256": "c" * 64}
    assert records.differences([None, no_train, with_train, with_train]) == [[], [], [], []]
    assert records.differences([]) == []
    assert records.differences([None, None]) == [[], []]
    # two runs that disagree: neither is the odd one, both are flagged
    assert records.differences([BASE, {**BASE, "torch": "2.13.0"}]) == [["torch"], ["torch"]]
    assert records.differences([BASE]) == [[]]


def test_the_record_is_written_only_by_the_attempt_holding_the_job(db, dataset_id):
    job = factories.job(db, dataset_id=dataset_id, queue="records")
    old = job_service.claim(session=db, queue="records", host="gpu-1")
    job_service.requeue(session=db, job_id=job.id, stale_s=0)
    new = job_service.claim(session=db, queue="records", host="gpu-2")
    with pytest.raises(job_service.ClaimLost):
        job_service.save_record(session=db, job_id=job.id, record={"mmdet": "old"}, token=old.token)
    job_service.save_record(session=db, job_id=job.id, record=BASE, token=new.token)
    db.refresh(job)
    assert job.record == BASE


def test_the_job_and_the_leaderboard_show_the_record_and_flag_the_odd_row(client, db, dataset_id):
    def run(mAP: float, record: dict | None, **columns) -> int:
        return factories.finished_job(
            db, dataset_id=dataset_id, metrics={"bbox_mAP": mAP}, record=record, **columns
        ).id

    same = [run(0.3 + i / 100, {**BASE, "seed": i}) for i in range(3)]
    other_mmdet = run(0.5, {**BASE, "mmdet": "3.2.0"})
    changed_val = run(0.4, {**BASE, "val_ann_sha256": "b" * 64})
    imported = run(
        0.2,
        None,
        kind=JobKind.imported,
        spec={"kind": "import", "dataset_id": dataset_id, "source": {}},
    )

    assert client.get(f"/jobs/{other_mmdet}").json()["record"] == {**BASE, "mmdet": "3.2.0"}
    assert client.get(f"/jobs/{imported}").json()["record"] is None
    rows = client.get("/leaderboard", params={"dataset": dataset_id}).json()["items"]
    flags = {row["job_id"]: row["record_differs"] for row in rows}
    assert flags == {
        **{job_id: [] for job_id in same},
        other_mmdet: ["mmdet"],
        changed_val: ["val_ann_sha256"],
        imported: [],
    }
    # the comparison is the rows returned: the best two alone disagree on both fields, and
    # neither is the odd one
    top = client.get("/leaderboard", params={"dataset": dataset_id, "limit": 2}).json()["items"]
    assert [row["job_id"] for row in top] == [other_mmdet, changed_val]
    assert [row["record_differs"] for row in top] == [["mmdet", "val_ann_sha256"]] * 2


def test_a_replicate_group_is_flagged_when_one_of_its_runs_differs(client, db, dataset_id):
    def run(mAP: float, record: dict, group_id: int | None = None) -> int:
        return factories.finished_job(
            db,
            dataset_id=dataset_id,
            metrics={"bbox_mAP": mAP},
            record=record,
            group_id=group_id,
            status=JobStatus.succeeded,
        ).id

    lone = [run(0.3, BASE), run(0.31, BASE)]
    first = run(0.4, BASE)
    db.get(Job, first).group_id = first
    db.commit()
    run(0.41, {**BASE, "torch": "2.13.0"}, group_id=first)
    rows = client.get("/leaderboard", params={"dataset": dataset_id, "group": True}).json()["items"]
    flags = {row["job_id"]: row["record_differs"] for row in rows}
    assert flags == {first: ["torch"], lone[0]: [], lone[1]: []}
