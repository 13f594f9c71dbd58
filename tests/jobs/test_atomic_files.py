"""Files under the shared artifact root are written whole (backend/artifacts_io.py): a reader on
another host sees the old file or the new one, never part of one, and nothing is left behind.

Two observations tell a rename from an in-place write: every os.replace is recorded (`renames`),
and a "witness", a hard link to the file before it is rewritten, keeps the old content only when
the new one arrived under a new inode. No service is needed.
"""

from __future__ import annotations

import io
import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import dump, get_file_backend
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset

from backend.artifacts_io import atomic_path, copy_atomic, write_bytes_atomic, write_text_atomic
from backend.runs.service import TooLarge, _save
from worker.atomic_checkpoints import (
    BACKEND,
    AtomicCheckpointHook,
    AtomicLocalBackend,
    apply_atomic_checkpoints,
)
from worker.coco_metric import EngineCocoMetric

OLD = b"old content\n"


@pytest.fixture
def renames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path]]:
    """Every os.replace the test makes, as (source, target)."""
    done: list[tuple[Path, Path]] = []
    real = os.replace

    def replace(src, dst, **kwargs):
        done.append((Path(src), Path(dst)))
        real(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return done


def arrived_whole(renames: list[tuple[Path, Path]], target: Path) -> bool:
    """Whether `target` was renamed into place from a temporary sibling (artifacts_io's name)."""
    name = re.compile(rf"\.{re.escape(target.name)}\.tmp-[0-9a-f]{{16}}")
    return any(
        dst == target and src.parent == target.parent and name.fullmatch(src.name)
        for src, dst in renames
    )


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp-" in p.name]


def with_witness(path: Path, content: bytes = OLD) -> Path:
    """`path` holding `content`, and a hard link to it that an in-place write would change."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    witness = path.with_name(path.name + ".witness")
    os.link(path, witness)
    return witness


# -- the helpers -------------------------------------------------------------------------------


def test_atomic_path_writes_a_hidden_sibling_and_renames_it(tmp_path, renames):
    target = tmp_path / "predictions.bbox.json"
    witness = with_witness(target)
    with atomic_path(target) as partial:
        assert partial.parent == tmp_path
        assert re.fullmatch(r"\.predictions\.bbox\.json\.tmp-[0-9a-f]{16}", partial.name)
        partial.write_bytes(b"new")
        assert target.read_bytes() == OLD  # nothing shows before the block ends
    assert target.read_bytes() == b"new"
    assert witness.read_bytes() == OLD
    assert arrived_whole(renames, target)
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize(
    "write",
    [
        lambda path: write_bytes_atomic(path, b"new"),
        lambda path: write_text_atomic(path, "new"),
    ],
    ids=["bytes", "text"],
)
def test_writes_replace_the_file_whole(tmp_path, renames, write):
    target = tmp_path / "config.py"
    witness = with_witness(target)
    write(target)
    assert target.read_bytes() == b"new"
    assert witness.read_bytes() == OLD
    assert arrived_whole(renames, target)
    assert temporaries(tmp_path) == []


def test_copy_atomic_copies_whole(tmp_path, renames):
    source = tmp_path / "source.pth"
    source.write_bytes(os.urandom(1 << 20))
    target = tmp_path / "out" / "backbone.pth"
    witness = with_witness(target)
    copy_atomic(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert witness.read_bytes() == OLD
    assert arrived_whole(renames, target)
    assert temporaries(tmp_path) == []


class Midway(RuntimeError):
    pass


def _fails_midway(path: Path) -> None:
    with atomic_path(path) as partial, partial.open("wb") as out:
        out.write(b"half of the new")
        raise Midway


@pytest.mark.parametrize(
    ("write", "error"),
    [
        (_fails_midway, Midway),
        # a lone surrogate cannot be encoded: the text fails after a megabyte is written
        (lambda path: write_text_atomic(path, "x" * (1 << 20) + "\ud800"), UnicodeEncodeError),
        (lambda path: copy_atomic(path.with_name("missing"), path), FileNotFoundError),
    ],
    ids=["atomic_path", "write_text_atomic", "copy_atomic"],
)
def test_a_write_that_fails_keeps_the_old_file_and_leaves_nothing(tmp_path, write, error):
    target = tmp_path / "last_checkpoint"
    target.write_bytes(OLD)
    with pytest.raises(error):
        write(target)
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint"]


def test_a_write_that_fails_creates_no_file(tmp_path):
    with pytest.raises(Midway):
        _fails_midway(tmp_path / "predictions.bbox.json")
    assert list(tmp_path.iterdir()) == []


def test_a_reader_sees_the_old_file_until_the_whole_new_one_is_there(tmp_path):
    target = tmp_path / "iter_2.pth"
    target.write_bytes(OLD)
    block = b"n" * (1 << 20)
    with atomic_path(target) as partial, partial.open("wb") as out:
        for _ in range(8):
            out.write(block)
            out.flush()
            assert target.read_bytes() == OLD
    assert target.read_bytes() == block * 8


def test_a_polling_reader_never_sees_part_of_a_file(tmp_path):
    """A reader polling while large files are written sees nothing, or one of them whole."""
    target = tmp_path / "iter_4.pth"
    versions = [bytes([65 + i]) * (16 << 20) for i in range(4)]
    seen: set[int] = set()
    partial: list[int] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                data = target.read_bytes()
            except FileNotFoundError:
                continue
            if data in versions:
                seen.add(versions.index(data))
            else:
                partial.append(len(data))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for data in versions:
            write_bytes_atomic(target, data)
    finally:
        done.set()
        reader.join()
    assert partial == []
    assert seen  # the reader did read
    assert target.read_bytes() == versions[-1]
    assert temporaries(tmp_path) == []


# -- callers -----------------------------------------------------------------------------------


def test_an_upload_arrives_whole_and_one_too_large_leaves_nothing(tmp_path, renames):
    target = tmp_path / "predictions.bbox.json"
    assert _save(io.BytesIO(b"[]"), target, limit=1024) == 2
    assert arrived_whole(renames, target)
    with pytest.raises(TooLarge):
        _save(io.BytesIO(b"x" * 4096), tmp_path / "big.json", limit=1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.bbox.json"]


def test_the_coco_metric_writes_its_results_file_whole(tmp_path, renames):
    ann = tmp_path / "val.json"
    ann.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
                "annotations": [],
                "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
            }
        )
    )
    prefix = tmp_path / "job" / "predictions"
    target = tmp_path / "job" / "predictions.bbox.json"
    metric = EngineCocoMetric(ann_file=str(ann), metric="bbox", outfile_prefix=str(prefix))
    metric.cat_ids = [1, 2]
    result = dict(
        img_id=1,
        labels=np.array([1]),
        bboxes=np.array([[1.0, 2.0, 11.0, 22.0]]),
        scores=np.array([0.5]),
    )
    files = metric.results2json([result], str(prefix))
    assert files == {"bbox": str(target), "proposal": str(target)}
    assert json.loads(target.read_text()) == [
        {"image_id": 1, "bbox": [1.0, 2.0, 10.0, 20.0], "score": 0.5, "category_id": 2}
    ]
    assert arrived_whole(renames, target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["predictions.bbox.json"]


# -- mmengine: the file backend and the checkpoint hook ----------------------------------------


def test_the_backend_writes_mmengine_files_whole(tmp_path, renames):
    backend = get_file_backend(backend_args=dict(backend=BACKEND))
    assert isinstance(backend, AtomicLocalBackend)
    target = tmp_path / "new" / "scores.json"
    dump({"bbox_mAP": 0.5}, str(target), backend_args=dict(backend=BACKEND))
    assert json.loads(target.read_text()) == {"bbox_mAP": 0.5}
    assert arrived_whole(renames, target)
    weights = tmp_path / "weights.pth"
    witness = with_witness(weights)
    backend.put(b"new", weights)
    assert weights.read_bytes() == b"new"
    assert witness.read_bytes() == OLD
    assert arrived_whole(renames, weights)


class ToyModel(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, labels=None, mode="tensor"):
        out = self.linear(inputs).squeeze(-1)
        if mode == "loss":
            return {"loss": ((out - labels) ** 2).mean()}
        return out


class ToyDataset(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"inputs": torch.tensor([float(index), 1.0]), "labels": torch.tensor(index / 8)}


def checkpoint_config() -> Config:
    """The checkpoint hook as the config builders write it."""
    hook = dict(type="CheckpointHook", interval=2, by_epoch=False, max_keep_ckpts=2, save_last=True)
    return Config(
        dict(
            default_hooks=dict(checkpoint=hook),
            custom_imports=dict(imports=["worker.coco_metric"], allow_failed_imports=False),
        )
    )


def test_apply_keeps_the_configs_imports_and_the_saved_config_builds_the_hook(tmp_path):
    cfg = checkpoint_config()
    apply_atomic_checkpoints(cfg)
    apply_atomic_checkpoints(cfg)  # a second call changes nothing
    assert cfg.custom_imports == dict(
        imports=["worker.coco_metric", "worker.atomic_checkpoints"], allow_failed_imports=False
    )
    assert cfg.default_hooks.checkpoint.backend_args == dict(backend=BACKEND)
    # the saved config, as mmdet's own tools read it
    cfg.dump(str(tmp_path / "config.py"))
    saved = Config.fromfile(str(tmp_path / "config.py"))
    hook = HOOKS.build(saved.default_hooks.checkpoint)
    assert isinstance(hook, AtomicCheckpointHook)
    assert hook.backend_args == dict(backend=BACKEND)


def test_a_run_writes_its_checkpoints_and_last_checkpoint_whole(tmp_path, renames):
    work_dir = tmp_path / "work"
    # files already there, hard-linked: an in-place write would change their witnesses
    first = work_dir / "iter_2.pth"
    checkpoint_witness = with_witness(first)
    pointer_witness = with_witness(work_dir / "last_checkpoint")
    cfg = checkpoint_config()
    apply_atomic_checkpoints(cfg)
    runner = Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f"atomic-{tmp_path.name}",
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type="InfiniteSampler", shuffle=False),
            collate_fn=dict(type="default_collate"),
            batch_size=2,
            num_workers=0,
        ),
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=4),
        optim_wrapper=dict(optimizer=dict(type="SGD", lr=0.01)),
        default_hooks=cfg.default_hooks,
        log_processor=dict(by_epoch=False),
        log_level="WARNING",
    )
    runner.train()

    hook = next(h for h in runner.hooks if isinstance(h, AtomicCheckpointHook))
    assert isinstance(hook.file_backend, AtomicLocalBackend)
    last = work_dir / "iter_4.pth"
    for path in (first, last, work_dir / "last_checkpoint"):
        assert arrived_whole(renames, path), path
    pointer_writes = [dst for _, dst in renames if dst == work_dir / "last_checkpoint"]
    assert len(pointer_writes) == 2  # once per checkpoint
    assert checkpoint_witness.read_bytes() == OLD
    assert pointer_witness.read_bytes() == OLD
    assert (work_dir / "last_checkpoint").read_text() == str(last)
    for path in (first, last):
        loaded = torch.load(path, map_location="cpu", weights_only=False)
        assert set(loaded["state_dict"]) == {"linear.weight", "linear.bias"}
    assert torch.load(last, weights_only=False)["meta"]["iter"] == 4
    assert temporaries(tmp_path) == []
