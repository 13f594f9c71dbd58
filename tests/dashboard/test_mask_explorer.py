"""The explorer's "Masks" toggle, with AppTest against the real API process: offered only for a
run whose predictions have masks (a segm file beside its bbox file), and drawing them.

Two runs of the shapes val split's own boxes, built in seconds as the replicate tests build
theirs (job rows by the factories, scored by `POST /jobs/{id}/analysis`); the mask run then
gets a segm file with each box's rectangle as its mask.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import factories
import numpy as np
import pytest
from dashboard_seed import open_page, texts
from pycocotools import mask as mask_utils
from sqlalchemy import delete
from sqlalchemy.orm import Session

from backend.jobs.models import Job

DATASET_NAME = "shapes-mask-explorer"


@pytest.fixture(autouse=True)
def dashboard_env(api, admin_token, monkeypatch):
    monkeypatch.setenv("DETLAB_API_URL", str(api.base_url))
    monkeypatch.setenv("DETLAB_API_TOKEN", admin_token)


def box_mask(box: list[float], height: int, width: int) -> dict:
    """The box's pixels as a compressed RLE, as mmdet writes masks."""
    x, y, w, h = (round(v) for v in box)
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[y : y + h, x : x + w] = 1
    encoded = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [height, width], "counts": encoded["counts"].decode()}


@pytest.fixture(scope="module")
def runs(api, pg_engine, shapes, tmp_path_factory) -> Iterator[dict[str, int]]:
    """{"masks": job id, "boxes": job id}: the same predictions, the first with masks."""
    created = api.post("/datasets", json={"name": DATASET_NAME, **factories.dataset_files(shapes)})
    assert created.status_code == 201, created.text
    dataset_id = created.json()["id"]
    val = json.loads(shapes.val_ann.read_text())
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 0.9,
        }
        for a in val["annotations"]
    ]
    folder = tmp_path_factory.mktemp("mask-explorer")
    ids = {}
    with Session(pg_engine, expire_on_commit=False) as session:
        for name in ("masks", "boxes"):
            (folder / name).mkdir()
            path = folder / name / "predictions.bbox.json"
            path.write_text(json.dumps(results))
            job = factories.finished_job(
                session, dataset_id=dataset_id, name=f"explorer-{name}", predictions_path=path
            )
            ids[name] = job.id
    for job_id in ids.values():
        scored = api.post(f"/jobs/{job_id}/analysis")
        assert scored.status_code == 200, scored.text
    sizes = {image["id"]: (image["height"], image["width"]) for image in val["images"]}
    segm = [{**r, "segmentation": box_mask(r["bbox"], *sizes[r["image_id"]])} for r in results]
    (folder / "masks" / "predictions.segm.json").write_text(json.dumps(segm))
    # scored again: the mask run's evaluation now has its mask figures too
    scored = api.post(f"/jobs/{ids['masks']}/analysis")
    assert scored.status_code == 200, scored.text
    ids["dataset"] = dataset_id
    yield ids
    with pg_engine.begin() as connection:
        jobs = [ids["masks"], ids["boxes"]]
        connection.execute(delete(Job).where(Job.id.in_(jobs)))


def masks_toggle(at):
    return next((t for t in at.toggle if t.key == "explorer-masks"), None)


def tiles(at) -> list[str]:
    """The grid's tiles (their media URLs, which name their content)."""
    return [image.value[0] for image in at.image if image.captions[0]]


def test_the_masks_toggle_is_offered_only_for_a_run_with_masks(api, runs):
    assert api.get(f"/jobs/{runs['boxes']}/evaluation").json()["has_masks"] is False
    at = open_page("explorer", job=runs["boxes"])
    assert not at.exception and not at.error, texts(at.error)
    assert tiles(at)
    assert masks_toggle(at) is None

    assert api.get(f"/jobs/{runs['masks']}/evaluation").json()["has_masks"] is True
    at = open_page("explorer", job=runs["masks"])
    assert not at.exception and not at.error, texts(at.error)
    toggle = masks_toggle(at)
    assert toggle is not None and toggle.value is False  # as the API: boxes alone
    plain = tiles(at)
    assert plain

    toggle.set_value(True).run()
    assert not at.exception and not at.error, texts(at.error)
    masked = tiles(at)
    assert len(masked) == len(plain)
    # every tile has predictions, so each is drawn again with its masks filled
    assert not set(masked) & set(plain)

    first = api.get(f"/jobs/{runs['masks']}/images", params={"limit": 1}).json()["items"][0]
    at.button(key=f"enlarge-{first['image_id']}").click().run()
    assert not at.exception and not at.error, texts(at.error)
    enlarged = [image for image in at.image if not image.captions[0]]
    assert enlarged  # the dialog's overlay, with the masks drawn too

    masks_toggle(at).set_value(False).run()
    assert tiles(at) == plain


def test_the_leaderboard_shows_mask_map_beside_box_map_when_a_run_has_masks(api, runs):
    evaluation = api.get(f"/jobs/{runs['masks']}/evaluation").json()
    # rectangles drawn as masks of polygons: imperfect, but scored
    assert evaluation["segm_mAP"] is not None and evaluation["bbox_mAP"] == 1.0
    assert evaluation["per_class_mask_ap"] and "segm_mAP" in evaluation["intervals"]["metrics"]
    at = open_page("leaderboard", dataset=runs["dataset"])
    assert not at.exception and not at.error
    shown = at.dataframe[0]
    assert "mask mAP [95% CI]" in shown.proto.column_order
    table = shown.value.set_index("job_id")
    assert (
        table.loc[runs["masks"], "mask mAP [95% CI]"]
        .strip()
        .startswith(f"{100 * evaluation['segm_mAP']:.1f} [")
    )
    boxes = api.get(f"/jobs/{runs['boxes']}/evaluation").json()
    assert boxes["segm_mAP"] is None and boxes["per_class_mask_ap"] is None
