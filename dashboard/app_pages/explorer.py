"""Predictions explorer: one run's val images as overlays, worst first, filtered by class and
error type, redrawn at the chosen score threshold; a click enlarges one with its boxes.

The job comes from the `job` query parameter and the enlarged image from `image`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import cached, views
from dashboard.client import ApiError

PAGE_SIZE = 24
SORTS = {"worst": "worst first", "best": "best first", "image_id": "by image id"}


def image_caption(item: dict[str, Any]) -> str:
    errors = sum(item[kind] for kind in views.error_types(side="prediction"))
    return f"{item['file_name']} · {item['tp']} TP · {errors} errors · {item['missed']} missed"


def open_image(image_id: int) -> None:
    st.query_params["image"] = str(image_id)


def first_page() -> None:
    st.session_state["explorer-page"] = 1


def counting_threshold(evaluation: dict[str, Any]) -> float:
    """The score from which the analysis counted predictions (its per-image error counts)."""
    return float(evaluation["analysis"]["score_thr"])


def error_filter_changed(counted_from: float) -> None:
    """Picking an error type lowers the drawing threshold to the one its counts use, so the
    errors the listing counts are the ones drawn (a weak model's mistakes often score below
    the default); clearing it restores the default."""
    first_page()
    chosen = st.session_state.get("explorer-error")
    st.session_state["explorer-thr"] = counted_from if chosen else views.default_score_thr()


def close_image() -> None:
    st.query_params.pop("image", None)


@st.dialog("Image", width="large", on_dismiss=close_image)
def enlarged(job_id: int, image_id: int, *, score_thr: float, show: str) -> None:
    """The overlay at full size, its box list and the legend of the colours."""
    try:
        found = cached.detections(job_id, image_id)
        png = cached.overlay(job_id, image_id, score_thr=score_thr, show=show)
    except ApiError as err:
        views.show_api_error(err, doing=f"load image {image_id}")
        return
    st.markdown(f"**{found['file_name']}** · {found['width']}×{found['height']} px")
    # small images are enlarged to a readable size, large ones fit the dialog
    st.image(png, width=max(found["width"], 640), output_format="PNG")
    views.outcome_legend()
    outcomes = drawn_outcomes(show)
    boxes = [
        d for d in found["detections"] if d["score"] >= score_thr and d["error_type"] in outcomes
    ]
    st.markdown(f"**Predictions with score ≥ {score_thr:.2f}** ({len(boxes)})")
    if boxes:
        st.table(box_table(boxes).hide(axis="index"))
    missed = [g for g in found["ground_truth"] if g.get("missed")]
    st.caption(
        f"{len(found['ground_truth'])} ground-truth boxes, {len(missed)} missed"
        + (f": {', '.join(g['category'] for g in missed)}" if missed else "")
    )
    if st.button("Close"):
        close_image()
        st.rerun()


def drawn_outcomes(show: str) -> set[str]:
    """The prediction outcomes an overlay's `show` draws ("errors" is every error type)."""
    groups = views.show_groups()
    outcomes: set[str] = set()
    for part in show.split(","):
        outcomes |= set(groups[part][1]) if part in groups else {part}
    return outcomes


def box_table(detections: list[dict[str, Any]]):
    frame = pd.DataFrame(
        {
            "class": [d["category"] for d in detections],
            "score": [d["score"] for d in detections],
            "IoU": [d.get("iou") for d in detections],
            "outcome": [d["error_type"] for d in detections],
            "GT class": [d.get("gt_category") or "" for d in detections],
            "box (x, y, w, h)": [", ".join(f"{v:.0f}" for v in d["bbox"]) for d in detections],
        }
    )

    colours = views.box_colours()

    def colour(outcome: str) -> str:
        rgb = colours.get(outcome)
        return f"background-color: rgba{(*rgb, 0.35)}" if rgb else ""

    return frame.style.map(colour, subset=["outcome"]).format(
        {"score": "{:.3f}", "IoU": "{:.2f}"}, na_rep="–"
    )


def filters(job: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    classes = [c["name"] for c in cached.dataset(job["dataset_id"])["stats"]["categories"]]
    class_col, error_col, sort_col, thr_col = st.columns([2, 2, 2, 3])
    chosen = {
        "category": class_col.selectbox(
            "Class",
            [None, *classes],
            format_func=lambda c: c or "all classes",
            key="explorer-class",
            on_change=first_page,
        ),
        "error_type": error_col.selectbox(
            "Error type",
            [None, *views.error_types()],
            format_func=lambda e: e or "any outcome",
            key="explorer-error",
            on_change=error_filter_changed,
            args=(counting_threshold(evaluation),),
        ),
        "sort": sort_col.selectbox(
            "Order", list(SORTS), format_func=SORTS.get, key="explorer-sort", on_change=first_page
        ),
    }
    score_thr = thr_col.slider(
        "Score threshold", 0.0, 1.0, views.default_score_thr(), 0.05, key="explorer-thr"
    )
    groups = views.show_groups()
    shown = st.pills(
        "Draw",
        list(groups),
        format_func=lambda name: groups[name][0],
        selection_mode="multi",
        default=list(groups),
        key="explorer-show",
    ) or list(groups)
    if chosen["error_type"] and "errors" in shown:
        # filtering by an error type draws that type's boxes, not every error; ground truth
        # stays whole (a GT box nothing found is drawn as "missed")
        shown = [chosen["error_type"] if s == "errors" else s for s in shown]
        if "gt" in shown and chosen["error_type"] != "missed":
            shown.append("missed")
    return {**chosen, "score_thr": score_thr, "show": ",".join(shown)}


st.title("Predictions explorer")
finished = cached.jobs(status="succeeded", kind="finetune", limit=200)["items"]
job = views.pick_job(finished, key="explorer-job")
if job is None:
    st.info("No fine-tune job has succeeded yet; its predictions appear here when one does.")
    st.stop()
evaluation = cached.evaluation(job["id"])
if not evaluation["analysis"]:
    st.info(
        f"Job #{job['id']} has no error analysis yet, so its images cannot be sorted or "
        "filtered by outcome; the API computes it when a job succeeds."
    )
    st.stop()
chosen = filters(job, evaluation)
score_thr, show = chosen.pop("score_thr"), chosen.pop("show")

page = st.session_state.get("explorer-page", 1)
listing = cached.images(job["id"], **chosen, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)

if not listing["items"]:
    if page > 1:  # past the end after a change of run: back to the first page
        first_page()
        st.rerun()
    st.info("No image matches these filters.")
    st.stop()

first = (page - 1) * PAGE_SIZE + 1
drawn = (
    f"only {chosen['error_type']} errors among the error boxes"
    if chosen["error_type"] and chosen["error_type"] in show.split(",")
    else "boxes"
)
st.caption(
    f"Images {first}–{first + len(listing['items']) - 1} of {listing['total']:,}. Counts are "
    f"of predictions with score ≥ {counting_threshold(evaluation):.2f}; drawn: {drawn}, "
    f"from score {score_thr:.2f}. Enlarge an image to see its boxes."
)
views.outcome_legend()
grid = st.grid(4, border=True, key="explorer-grid")
slots = []
for item in listing["items"]:
    with grid.cell():
        slots.append(st.skeleton(height=180))
        st.button(
            "Enlarge",
            key=f"enlarge-{item['image_id']}",
            on_click=open_image,
            args=(item["image_id"],),
            icon=":material/zoom_in:",
        )
# each tile appears as soon as the API has rendered it
for position, tile in cached.overlay_tiles(
    [(job["id"], item["image_id"]) for item in listing["items"]], score_thr=score_thr, show=show
):
    slots[position].image(tile, caption=image_caption(listing["items"][position]), width="stretch")
pages = -(-listing["total"] // PAGE_SIZE)
if pages > 1:
    st.pagination(pages, key="explorer-page")

image_id = views.query_int("image")
if image_id is not None:
    enlarged(job["id"], image_id, score_thr=score_thr, show=show)
