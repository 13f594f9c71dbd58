"""Captures a job's reproducibility record when it starts: code and library versions, the
hardware, and the sha256 of its data, init weights and config (backend/jobs/records.py says
what each field means).

Files are hashed in blocks. A hash is cached by the file's path, device, inode, size and
modification time, in the process and in a folder on the worker's disk (each job runs in a
child process of its own, so only the folder outlives a job): a large annotation file is read
once per worker host, not once per job. A file modified within the last RACY_S seconds is
never cached, since a second change within the filesystem's clock tick would keep that time
and its size (git's "racy" files); it is hashed again each time until it settles.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from backend.artifacts_io import write_text_atomic
from backend.jobs.records import FIELDS

__all__ = [
    "CACHE_FOLDER",
    "JOB_DIR",
    "capture",
    "config_facts",
    "config_sha256",
    "file_sha256",
    "git_commit",
    "names_sha256",
]

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "mmcv", "mmengine", "mmdet", "mmpretrain")
BUILT_FOR_A_DEVICE = ("torch", "torchvision")
# what the job's own folder reads as in the hashed config: a re-run of the same spec, in a
# folder of its own, hashes the same
JOB_DIR = "{job_dir}"
# under the worker's home (DETLAB_HOME): the hashes kept from one job to the next
CACHE_FOLDER = Path("cache") / "sha256"
BLOCK = 1 << 20
RACY_S = 2.0
REPOSITORY = Path(__file__).resolve().parent.parent

_memory: dict[tuple[Any, ...], dict[str, str]] = {}


def capture(
    *,
    config_text: str,
    job_dir: Path,
    train_ann: Path | None = None,
    val_ann: Path | None = None,
    train_image_names: Iterable[str] | None = None,
    init_checkpoint: str | None = None,
    seed: int | None = None,
    deterministic: bool | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The record of a job whose saved config is config_text and whose files are in job_dir.

    ``train_ann``/``val_ann``: the dataset's annotation files (their image lists are hashed
    too); ``train_image_names``: a pretraining folder's images, relative to it;
    ``init_checkpoint``: the path or mmengine name (``torchvision://...``, a URL) of the
    weights the model starts from; ``cache_dir``: where hashes are kept between jobs."""
    train = _annotation(train_ann, cache_dir) if train_ann else {}
    val = _annotation(val_ann, cache_dir) if val_ann else {}
    if train_image_names is not None:
        train = {"images_sha256": names_sha256(train_image_names)}
    init_weights, init_file = _init_source(init_checkpoint)
    record = {
        "detlab_version": _version("detlab"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        **{package: _version(package) for package in PACKAGES},
        **_hardware(),
        "train_ann_sha256": train.get("sha256"),
        "val_ann_sha256": val.get("sha256"),
        "train_images_sha256": train.get("images_sha256"),
        "val_images_sha256": val.get("images_sha256"),
        "init_weights": init_weights,
        "init_weights_sha256": file_sha256(init_file, cache_dir=cache_dir) if init_file else None,
        "seed": seed,
        "deterministic": deterministic,
        "config_sha256": config_sha256(config_text, job_dir),
    }
    assert list(record) == list(FIELDS), "the record's fields are backend/jobs/records.py's"
    return record


def config_facts(cfg: Any) -> dict[str, Any]:
    """What the record takes from an mmengine config: the checkpoint the model starts from
    (load_from, else a whole detector's weights (DetectorInitHook), else the backbone's
    Pretrained init, also inside a box-domain pretraining's wrapped detector), the seed and the
    deterministic flag."""
    model = cfg.get("model") or {}
    backbone = model.get("backbone") or (model.get("detector") or {}).get("backbone") or {}
    init = backbone.get("init_cfg")
    whole = [
        hook.get("checkpoint")
        for hook in cfg.get("custom_hooks") or []
        if hook.get("type") == "DetectorInitHook"
    ]
    randomness = cfg.get("randomness") or {}
    return {
        # a list of inits (an mmdet config's own) names no one checkpoint
        "init_checkpoint": cfg.get("load_from")
        or (whole[0] if whole else None)
        or (init.get("checkpoint") if isinstance(init, dict) else None),
        "seed": randomness.get("seed"),
        "deterministic": randomness.get("deterministic"),
    }


def config_sha256(config_text: str, job_dir: Path) -> str:
    """sha256 of a config with the job's own folder read as JOB_DIR."""
    text = config_text.replace(f"{job_dir}{os.sep}", f"{JOB_DIR}{os.sep}")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def names_sha256(names: Iterable[str]) -> str:
    """sha256 of file names sorted, one a line."""
    return hashlib.sha256("\n".join(sorted(names)).encode("utf-8")).hexdigest()


def file_sha256(path: Path, *, cache_dir: Path | None = None) -> str:
    """sha256 of a file's bytes, read in blocks (cached while the file stays unchanged)."""

    def compute() -> dict[str, str]:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(BLOCK):
                digest.update(block)
        return {"sha256": digest.hexdigest()}

    return _cached(path, "file", compute, cache_dir)["sha256"]


def _annotation(path: Path, cache_dir: Path | None) -> dict[str, str]:
    """sha256 of a COCO annotation file and of the sorted file names of the images it lists."""

    def compute() -> dict[str, str]:
        import orjson

        # parsing needs the whole file in memory: hash those same bytes rather than read twice
        data = path.read_bytes()
        images = orjson.loads(data).get("images") or []
        return {
            "sha256": hashlib.sha256(data).hexdigest(),
            "images_sha256": names_sha256(str(image["file_name"]) for image in images),
        }

    return _cached(path, "coco", compute, cache_dir)


def _cached(
    path: Path, what: str, compute: Callable[[], dict[str, str]], cache_dir: Path | None
) -> dict[str, str]:
    stat = path.stat()
    key = (what, str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key in _memory:
        return dict(_memory[key])
    name = hashlib.sha256(repr(key).encode()).hexdigest() + ".json"
    stored = cache_dir / name if cache_dir else None
    if stored is not None and stored.is_file():
        try:
            found = json.loads(stored.read_text(encoding="utf-8"))
            _memory[key] = found
            return dict(found)
        except (OSError, ValueError):
            pass  # unreadable: computed again and rewritten below
    found = compute()
    if time.time() - stat.st_mtime_ns / 1e9 < RACY_S:
        return found
    _memory[key] = found
    if stored is not None:
        _store(stored, found)
    return dict(found)


def _store(path: Path, value: dict[str, str]) -> None:
    """Write a cache entry whole (a temporary file renamed), so a reader never sees half."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(value))
    except OSError as exc:  # a cache that cannot be written only costs time
        log.warning("the hash cache %s could not be written: %s", path.parent, exc)


def _version(package: str) -> str | None:
    """The installed version; torch's and torchvision's as they report it, which names their
    build (2.14.1+cu130 and 2.14.1+cpu compute differently where the metadata says 2.14.1)."""
    try:
        if package in BUILT_FOR_A_DEVICE:
            return str(importlib.import_module(package).__version__)
        return metadata.version(package)
    except (ImportError, metadata.PackageNotFoundError):
        return None


@functools.cache
def git_commit() -> str | None:
    """The commit of DetLab's checkout, else DETLAB_GIT_COMMIT, else None; never raises.

    Read once per process: the code running is what was imported when it started, whatever
    the checkout holds later."""
    if (REPOSITORY / ".git").exists():
        try:
            found = subprocess.run(
                ["git", "-C", str(REPOSITORY), "rev-parse", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            found = None
        if found is not None and found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    return os.environ.get("DETLAB_GIT_COMMIT") or None


def _hardware() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device": "cuda" if cuda else "cpu",
        "gpu_model": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
    }


def _init_source(checkpoint: str | None) -> tuple[str | None, Path | None]:
    """Where mmengine loads a checkpoint from (a path, or the URL an mmengine name stands
    for), and the file on this worker's disk if there is one. Never raises: a name that cannot
    be resolved is kept as it is."""
    if not checkpoint:
        return None, None
    source = checkpoint
    try:
        from mmengine.runner import checkpoint as loader

        if checkpoint.startswith(("torchvision://", "modelzoo://")):
            source = loader.get_torchvision_models()[checkpoint.split("://", 1)[1]]
        elif checkpoint.startswith(("open-mmlab://", "openmmlab://")):
            name = checkpoint.split("://", 1)[1]
            name = loader.get_deprecated_model_names().get(name, name)
            source = loader.get_external_models()[name]
            if not source.startswith(("http://", "https://")):
                source = os.path.join(loader._get_mmengine_home(), source)
    except Exception as exc:  # noqa: BLE001 - the record must not fail the job
        log.warning("init weights %s: not resolved (%s)", checkpoint, exc)
        return checkpoint, None
    if source.startswith(("http://", "https://")):
        import torch

        # where torch's hub keeps what mmengine downloads (there once a job has fetched it)
        local = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(source).path)
    else:
        local = Path(source)
    return source, local if local.is_file() else None
