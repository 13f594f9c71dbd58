"""Predictions explorer: one run's val images as overlays, filtered by class and error type or
by a cell of the confusion matrix, the images with the most of it first; the filter decides
which boxes are counted, drawn and listed. A click enlarges one image with its box list.

The job comes from the `job` query parameter, the filters from `class`, `error_type` or
`gt_class` and `predicted_class` (a confusion cell, as the run page links to it), and the
enlarged image from `image`. A run whose predictions have masks (a mask model's) offers a
"Masks" toggle that fills the drawn boxes' masks.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import cached, views
from dashboard.client import ApiError

PAGE_SIZE = 24
COLUMNS = 3
SORTS = {"worst": "worst first", "best": "best first", "image_id": "by image id"}
FILTERED_SORTS = {
    "worst": "most matching boxes first",
    "best": "fewest matching boxes first",
    "image_id": "by image id",
}
# query parameter -> (widget key, filter), so that a link can open the page filtered
URL_FILTERS = {
    "class": ("explorer-class", "category"),
    "error_type": ("explorer-error", "error_type"),
}


def open_image(image_id: int) -> None:
    st.query_params["image"] = str(image_id)


def close_image() -> None:
    st.query_params.pop("image", None)


def clear_cell() -> None:
    for name in ("gt_class", "predicted_class"):
        st.query_params.pop(name, None)


def confusion_cell() -> tuple[str, str] | None:
    """The confusion-matrix cell the URL names (ground truth, predicted), if any."""
    gt_class, predicted = st.query_params.get("gt_class"), st.query_params.get("predicted_class")
    return (gt_class, predicted) if gt_class and predicted else None


def image_caption(item: dict[str, Any], listing: dict[str, Any]) -> str:
    """The file, how many boxes of what the page is filtered by, then its overall counts."""
    errors = sum(item[kind] for kind in views.error_types(side="prediction"))
    parts = [item["file_name"]]
    if item.get("selected") is not None:
        parts.append(f"{listing['selected_label']}: {item['selected']}")
    parts += [f"{item['tp']} TP", f"{errors} errors", f"{item['missed']} missed"]
    return " · ".join(parts)


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
            "GT class": [d.get("gt_category") for d in detections],
            "box (x, y, w, h)": [", ".join(f"{v:.0f}" for v in d["bbox"]) for d in detections],
        }
    )

    colours = views.box_colours()

    def colour(outcome: str) -> str:
        rgb = colours.get(outcome)
        return f"background-color: rgba{(*rgb, 0.35)}" if rgb else ""

    return frame.style.map(colour, subset=["outcome"]).format(
        {"score": "{:.3f}", "IoU": "{:.2f}"}, na_rep=views.EMPTY
    )


def with_masks(filters: cached.Filters, *, masks: bool) -> cached.Filters:
    """An overlay's parameters: the filters, and masks=true when the masks are drawn."""
    return cached.as_filters(**dict(filters), masks="true" if masks else None)


@st.dialog("Image", width="large", on_dismiss=close_image)
def enlarged(
    job_id: int,
    image_id: int,
    *,
    score_thr: float,
    show: str,
    filters: cached.Filters,
    masks: bool,
) -> None:
    """The overlay at full size, the list of the boxes it draws and the legend of the
    colours."""
    try:
        found = cached.detections(job_id, image_id, score_thr=score_thr, show=show, filters=filters)
        png = cached.overlay(
            job_id,
            image_id,
            score_thr=score_thr,
            show=show,
            filters=with_masks(filters, masks=masks),
        )
    except ApiError as err:
        views.show_api_error(err, doing=f"load image {image_id}")
        return
    st.markdown(f"**{found['file_name']}** · {found['width']}×{found['height']} px")
    # small images are enlarged to a readable size, large ones fit the dialog
    st.image(png, width=max(found["width"], 640), output_format="PNG")
    views.outcome_legend()
    boxes = found["detections"]
    st.markdown(f"**Predictions drawn, score ≥ {score_thr:.2f}** ({len(boxes)})")
    if boxes:
        st.table(box_table(boxes).hide(axis="index"))
    missed = [g for g in found["ground_truth"] if g.get("missed")]
    st.caption(
        f"{len(found['ground_truth'])} ground-truth boxes drawn, {len(missed)} missed"
        + (f": {', '.join(g['category'] for g in missed)}" if missed else "")
    )
    if st.button("Close"):
        close_image()
        st.rerun()


def filters(job: dict[str, Any], evaluation: dict[str, Any]) -> dict[str, Any]:
    """The filter widgets (a confusion cell from the URL replaces class and error type), the
    threshold boxes are drawn from, what to draw, and whether to draw masks (offered only when
    the run's predictions have them)."""
    classes = [c["name"] for c in cached.dataset(job["dataset_id"])["stats"]["categories"]]
    for param, (key, _) in URL_FILTERS.items():
        if key not in st.session_state and st.query_params.get(param):
            st.session_state[key] = st.query_params[param]
    cell = confusion_cell()
    if cell is not None:
        note, button = st.columns([5, 1], vertical_alignment="center")
        matrix = confusion_thresholds(evaluation)
        note.info(
            f"Confusion-matrix cell: ground truth **{cell[0]}**, predicted **{cell[1]}** "
            f"(score ≥ {matrix['score_thr']}, IoU ≥ {matrix['iou_thr']}).",
            icon=":material/grid_on:",
        )
        button.button("Clear", on_click=clear_cell, icon=":material/close:")
    class_col, error_col, sort_col, thr_col = st.columns([2, 2, 2, 3])
    chosen: dict[str, Any] = {
        "category": class_col.selectbox(
            "Class",
            [None, *classes],
            format_func=lambda c: c or "all classes",
            key="explorer-class",
            disabled=cell is not None,
        ),
        "error_type": error_col.selectbox(
            "Error type",
            [None, *views.error_types()],
            format_func=lambda e: e or "any outcome",
            key="explorer-error",
            disabled=cell is not None,
        ),
    }
    if cell is not None:
        chosen = {"category": None, "error_type": None}
    for param, (_, name) in URL_FILTERS.items():
        value = chosen[name]
        if value:
            st.query_params[param] = value
        else:
            st.query_params.pop(param, None)
    chosen["gt_class"], chosen["predicted_class"] = cell or (None, None)
    filtered = any(chosen.values())
    chosen["sort"] = sort_col.selectbox(
        "Order",
        list(SORTS),
        format_func=(FILTERED_SORTS if filtered else SORTS).get,
        key="explorer-sort",
    )

    # One threshold for what is counted and drawn: a filtered page draws from the score its
    # counts start at, so every counted box is on the tiles; an unfiltered one from the API's
    # drawing default (and says that lower-scored boxes are counted but not drawn).
    signature = (chosen["category"], chosen["error_type"], cell)
    if st.session_state.get("explorer-filtered-by") != signature:
        if "explorer-filtered-by" in st.session_state:
            st.session_state["explorer-page"] = 1
        st.session_state["explorer-filtered-by"] = signature
        st.session_state["explorer-thr"] = (
            counted_from(evaluation, cell=cell) if filtered else views.default_score_thr()
        )
    score_thr = thr_col.slider(
        "Draw boxes from score", 0.0, 1.0, step=0.05, key="explorer-thr", format="%.2f"
    )
    groups = views.show_groups()
    has_masks = bool(evaluation.get("has_masks"))
    if has_masks:
        draw_col, masks_col = st.columns([5, 1], vertical_alignment="bottom")
    else:
        draw_col, masks_col = st.container(), None
    shown = draw_col.pills(
        "Draw",
        list(groups),
        format_func=lambda name: groups[name][0],
        selection_mode="multi",
        default=list(groups),
        key="explorer-show",
    ) or list(groups)
    masks = masks_col is not None and masks_col.toggle(
        "Masks",
        key="explorer-masks",
        help="Fill the masks of the boxes drawn: the predictions' and the ground truth's "
        "(where the dataset has segmentations), in the boxes' colours",
    )
    return {**chosen, "score_thr": score_thr, "show": ",".join(shown), "masks": masks}


def confusion_thresholds(evaluation: dict[str, Any]) -> dict[str, float]:
    """The score and IoU the run's confusion matrix was counted at (the API's defaults for an
    analysis stored without one)."""
    defaults = cached.legend()["defaults"]
    stored = evaluation["analysis"].get("confusion") or {}
    return {
        "score_thr": stored.get("score_thr", defaults["draw_score_thr"]),
        "iou_thr": stored.get("iou_thr", defaults["confusion_iou_thr"]),
    }


def counted_from(evaluation: dict[str, Any], *, cell: tuple[str, str] | None) -> float:
    """The score from which the analysis counted what the filter selects: its own threshold,
    or the confusion matrix's for a cell."""
    if cell:
        return float(confusion_thresholds(evaluation)["score_thr"])
    return float(evaluation["analysis"]["score_thr"])


def what_is_drawn(chosen: dict[str, Any]) -> str:
    """Which boxes the API draws for these filters, in words."""
    if chosen["gt_class"]:
        return "only the boxes that make up this cell"
    parts = []
    if chosen["error_type"]:
        parts.append(f"of the errors only {chosen['error_type']}")
    if chosen["category"]:
        parts.append(f"only boxes involving {chosen['category']}")
    return ", ".join(parts) or "every box"


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
score_thr, show, masks = chosen.pop("score_thr"), chosen.pop("show"), chosen.pop("masks")
box_filters = cached.as_filters(
    error_type=chosen["error_type"],
    category=chosen["category"],
    gt_class=chosen["gt_class"],
    predicted_class=chosen["predicted_class"],
)

page = st.session_state.get("explorer-page", 1)
listing = cached.images(job["id"], **chosen, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)

if not listing["items"]:
    if page > 1:  # past the end after a change of run: back to the first page
        st.session_state["explorer-page"] = 1
        st.rerun()
    st.info(
        f"No image has {listing['selected_label']}."
        if listing["selected_label"]
        else "No image matches these filters."
    )
    st.stop()

first = (page - 1) * PAGE_SIZE + 1
counted = f"Counted from score {listing['score_thr']:.2f}"
if listing["selected_label"] and listing["selected_score_thr"] != listing["score_thr"]:
    counted = (
        f"{listing['selected_label'].capitalize()} counted from score "
        f"{listing['selected_score_thr']:.2f}; TP, errors and missed from "
        f"{listing['score_thr']:.2f}"
    )
drawn = f"Drawn: {what_is_drawn(chosen)}, from score {score_thr:.2f}"
floor = listing["selected_score_thr"] or listing["score_thr"]
if score_thr > floor:
    drawn += f" (boxes scored {floor:.2f} to {score_thr:.2f} are counted but not drawn)"
st.caption(
    f"Images {first}–{first + len(listing['items']) - 1} of {listing['total']:,}. {counted}. "
    f"{drawn}. Enlarge an image to list its boxes."
)
views.outcome_legend()
grid = st.grid(COLUMNS, border=True, key="explorer-grid")
slots = []
for item in listing["items"]:
    with grid.cell():
        slots.append(st.skeleton(height=cached.TILE_WIDTH))
        st.button(
            "Enlarge",
            key=f"enlarge-{item['image_id']}",
            on_click=open_image,
            args=(item["image_id"],),
            icon=":material/zoom_in:",
        )
# each tile appears as soon as the API has rendered it
for position, tile in cached.overlay_tiles(
    [(job["id"], item["image_id"]) for item in listing["items"]],
    score_thr=score_thr,
    show=show,
    filters=with_masks(box_filters, masks=masks),
):
    slots[position].image(
        tile, caption=image_caption(listing["items"][position], listing), width="stretch"
    )
pages = -(-listing["total"] // PAGE_SIZE)
if pages > 1:
    st.pagination(pages, key="explorer-page")

image_id = views.query_int("image")
if image_id is not None:
    enlarged(job["id"], image_id, score_thr=score_thr, show=show, filters=box_filters, masks=masks)
