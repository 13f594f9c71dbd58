"""Seeds the demo once the API is up: the shapes dataset, registered, and a few small jobs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from backend.config import get_settings
from backend.datasets.shapes import generate_shapes

# identical schedules on two backbones, small enough for a 2-core CPU in about 10 minutes
DEMO_JOBS = [
    {"name": "demo r18 fpn", "backbone": "resnet18", "neck": "fpn"},
    {"name": "demo r18 pafpn", "backbone": "resnet18", "neck": "pafpn"},
]
COMMON = {
    "detector": "faster_rcnn",
    "init": "scratch",
    "image_scale": [128, 128],
    "iterations": 300,
    "eval_interval": 100,
    "batch_size": 4,
    "lr": 0.01,
    "warmup_iters": 50,
    "num_workers": 1,
    "roi_samples_per_image": 64,
    "test_proposals_per_image": 100,
    "seed": 0,
}


def main() -> int:
    api = httpx.Client(
        base_url=os.environ.get("DETLAB_API_URL", "http://127.0.0.1:8000"), timeout=30
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            api.get("/health").raise_for_status()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                sys.exit(f"the API at {api.base_url} did not come up; see var/logs/api.log")
            time.sleep(0.5)
    existing = {d["name"]: d for d in api.get("/datasets").json()["items"]}
    if "shapes" in existing:
        dataset_id = existing["shapes"]["id"]
    else:
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
        dataset_id = response.json()["id"]
    print(f"dataset 'shapes' is id {dataset_id}")
    if api.get("/jobs", params={"dataset": dataset_id}).json()["total"] == 0:
        for job in DEMO_JOBS:
            response = api.post("/jobs", json={**COMMON, **job, "dataset_id": dataset_id})
            if response.status_code != 201:
                sys.exit(f"submitting {job['name']} failed: {response.text}")
            print(f"submitted job {response.json()['id']}: {job['name']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
