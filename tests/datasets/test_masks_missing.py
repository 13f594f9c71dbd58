"""masks_missing: why a registered dataset's stats rule out a mask model, in words."""

from __future__ import annotations

import pytest

from backend.datasets.service import masks_missing

CATEGORIES = [{"id": 1, "name": "square"}]


def _stats(train: dict, val: dict) -> dict:
    return {"categories": CATEGORIES, "train": train, "val": val}


def _split(boxes: int, masks: int | None) -> dict:
    counts = {"images": 4, "boxes": boxes, "crowd_boxes": 2, "per_class": {"square": boxes}}
    return counts if masks is None else {**counts, "masks": masks}


def test_a_segmentation_on_every_box_is_enough() -> None:
    assert masks_missing(_stats(_split(340, 340), _split(80, 80))) is None


@pytest.mark.parametrize(
    ("train", "val", "reason"),
    [
        (
            _split(340, 328),
            _split(80, 0),
            "train: 12 of 340 boxes have no segmentation; "
            "val: none of its 80 boxes has a segmentation",
        ),
        (_split(340, 340), _split(80, 79), "val: 1 of 80 boxes has no segmentation"),
        (
            _split(340, 0),
            _split(80, 0),
            "train: none of its 340 boxes has a segmentation; "
            "val: none of its 80 boxes has a segmentation",
        ),
        (_split(0, 0), _split(80, 80), "train: it has no boxes"),
    ],
    ids=["partial-and-none", "one-missing", "box-only", "no-boxes"],
)
def test_missing_masks_are_counted_per_split(train: dict, val: dict, reason: str) -> None:
    assert masks_missing(_stats(train, val)) == reason


@pytest.mark.parametrize(
    "stats",
    [
        _stats(_split(340, None), _split(80, None)),
        _stats(_split(340, 340), _split(80, None)),
        {},
    ],
    ids=["both-splits", "one-split", "no-stats"],
)
def test_stats_from_before_masks_were_recorded_ask_to_register_again(stats: dict) -> None:
    assert masks_missing(stats) == (
        "it was registered before DetLab recorded masks; register it again"
    )
