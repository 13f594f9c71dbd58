"""Seeds the demo once the API is up: the shapes dataset, two short self-supervised
pretrainings (MoCo v2, DetCo) and identical fine-tunes from scratch, MoCo v2 and DetCo."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from backend.config import get_settings
from backend.datasets.shapes import generate_shapes

PRETRAIN = {
    "kind": "pretrain",
    "backbone": "resnet18",
    "iterations": 100,
    "batch_size": 16,
    "queue_length": 256,
    "image_size": 64,
    "num_workers": 1,
    "lr": 0.03,
    "momentum_coefficient": 0.01,
    "feature_dim": 64,
    "seed": 0,
}
# small enough that each fine-tune takes a few minutes on a 2-core CPU
FINETUNE = {
    "detector": "faster_rcnn",
    "backbone": "resnet18",
    "neck": "fpn",
    "norm": "bn",
    "image_scale": [128, 128],
    "iterations": 200,
    "eval_interval": 100,
    "batch_size": 2,
    "lr": 0.01,
    "warmup_iters": 50,
    "num_workers": 1,
    "roi_samples_per_image": 64,
    "test_proposals_per_image": 100,
    "seed": 0,
}


def _wait_for_api(api: httpx.Client) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            api.get("/health").raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                sys.exit(f"the API at {api.base_url} did not come up; see var/logs/api.log")
            time.sleep(0.5)


def _submit(api: httpx.Client, spec: dict) -> int:
    response = api.post("/jobs", json=spec)
    if response.status_code != 201:
        sys.exit(f"submitting {spec.get('name')} failed: {response.text}")
    job_id = response.json()["id"]
    print(f"submitted job {job_id}: {spec.get('name')}", flush=True)
    return job_id


def _dataset(api: httpx.Client) -> int:
    existing = {d["name"]: d for d in api.get("/datasets").json()["items"]}
    if "shapes" in existing:
        return existing["shapes"]["id"]
    root = get_settings().data_roots[0] / "shapes"
    if not (root / "annotations" / "val.json").is_file():
        generate_shapes(
            Path(root), seed=0, num_train=200, num_val=50, image_size=(128, 128), num_classes=4
        )
    response = api.post(
        "/datasets",
        json={
            "name": "shapes",
            "train_ann": str(root / "annotations/train.json"),
            "val_ann": str(root / "annotations/val.json"),
            "train_images": str(root / "train"),
            "val_images": str(root / "val"),
        },
    )
    if response.status_code != 201:
        sys.exit(f"registering the shapes dataset failed: {response.text}")
    return response.json()["id"]


def main() -> int:
    api = httpx.Client(
        base_url=os.environ.get("DETLAB_API_URL", "http://127.0.0.1:8000"), timeout=30
    )
    _wait_for_api(api)
    dataset_id = _dataset(api)
    print(f"dataset 'shapes' is id {dataset_id}", flush=True)
    if api.get("/jobs", params={"dataset": dataset_id}).json()["total"]:
        return 0  # seeded by an earlier run
    pretrain = {
        method: _submit(
            api,
            {
                **PRETRAIN,
                "method": method,
                "dataset_id": dataset_id,
                "name": f"demo {method} pretrain",
            },
        )
        for method in ("mocov2", "detco")
    }
    _submit(api, {**FINETUNE, "dataset_id": dataset_id, "init": "scratch", "name": "demo scratch"})
    # a fine-tune names its weights entry, which exists once its pretraining has finished
    for method, job_id in pretrain.items():
        while (job := api.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            time.sleep(3)
        if job["status"] != "succeeded":
            sys.exit(f"the {method} pretraining ended {job['status']}: {job['error']}")
        weights = [
            w for w in api.get("/weights").json()["items"] if w["producing_job_id"] == job_id
        ]
        _submit(
            api,
            {
                **FINETUNE,
                "dataset_id": dataset_id,
                "name": f"demo {method} init",
                "init": {"weights_id": weights[0]["id"]},
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
