"""Compare: two or more finished runs on one dataset side by side: their metrics and spec,
whether each run really differs from the first (the baseline) in one sentence and forest plots
of the differences with their intervals (and, when the first two runs belong to two replicate
groups, the same question asked of the groups over their seeds), the per-class AP difference to
the baseline, and, image by image, where a run does better than the baseline and where worse
(paired overlays, by a per-image count the user picks), with the confusions that changed.

The runs come from the `jobs` query parameter (`compare?jobs=3,5`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached, views
from dashboard.client import ApiError, describe_detail

MAX_RUNS = 6
PAIRS_PAGE = 6
# each overlay of a pair is asked for at about the width it is shown at (half the page)
PAIR_WIDTH = 512
CONFUSION_ROWS = 8
AXES = (
    "detector",
    "backbone",
    "neck",
    "init",
    "norm",
    "image_scale",
    "epochs",
    "iterations",
    "batch_size",
    "lr",
    "seed",
    "data_fraction",
    "amp",
)


def run_label(row: dict[str, Any]) -> str:
    group = f" · group #{row['group_id']}" if row["group_id"] is not None else ""
    return (
        f"#{row['job_id']} {row['name'] or ''} · {row['backbone']} · {row['init']} · "
        f"mAP {views.format_ap(row['bbox_mAP'])}{group}"
    )


def short_label(row: dict[str, Any]) -> str:
    return f"#{row['job_id']} {row['name'] or ''}".strip()


def pick_runs(rows: dict[int, dict[str, Any]]) -> list[int]:
    wanted = [
        int(part)
        for part in st.query_params.get("jobs", "").split(",")
        if part.strip().isdigit() and int(part) in rows
    ]
    chosen = st.multiselect(
        "Runs (the first is the baseline)",
        list(rows),
        default=wanted[:MAX_RUNS],
        format_func=lambda i: run_label(rows[i]),
        max_selections=MAX_RUNS,
        key="compare-jobs",
    )
    st.query_params["jobs"] = ",".join(str(i) for i in chosen)
    return chosen


def metrics_table(runs: list[dict[str, Any]]) -> None:
    """One column per run: AP figures (mask ones when some run has them), then the spec axes
    on which the runs differ."""
    labels = views.scored_metric_labels(runs)
    points = pd.DataFrame(
        {short_label(r): [views.ap_points(r[m]) for m in labels] for r in runs},
        index=list(labels.values()),
    )
    frame = points.map(views.figure_cell)
    baseline = points.iloc[:, 0]
    for run in points.columns[1:]:
        frame[f"Δ {run}"] = (points[run] - baseline).map(lambda d: views.figure_cell(d, "+.1f"))
    st.dataframe(frame, width="stretch", column_config=narrow(frame.columns))
    differing = [axis for axis in AXES if len({str(r[axis]) for r in runs}) > 1]
    if differing:
        st.caption("Where the specs differ")
        specs = pd.DataFrame(
            {
                short_label(r): [views.EMPTY if r[a] is None else str(r[a]) for a in differing]
                for r in runs
            },
            index=differing,
        )
        st.dataframe(specs, width="stretch", column_config=narrow(specs.columns))


def narrow(columns: Any) -> dict[str, Any]:
    """Column settings that fit MAX_RUNS runs and their differences on the page."""
    return {name: st.column_config.TextColumn(name, width="small") for name in columns}


def forest_plot(
    differences: dict[str, dict[str, Any]], *, alpha: float, title: str, level: str
) -> go.Figure:
    """One row per figure (top to bottom as given): a point at the difference in AP points,
    whiskers to its interval's bounds, coloured by whether p < alpha; a line at no difference."""
    defined = {name: d for name, d in differences.items() if d["estimate"] is not None}
    figure = go.Figure()
    for significant, name, colour in (
        (True, f"p < {alpha:g}", "#d62728"),
        (False, f"p ≥ {alpha:g}", "#7f7f7f"),
    ):
        rows = {
            label: d
            for label, d in defined.items()
            if (d["p_value"] is not None and d["p_value"] < alpha) == significant
        }
        if not rows:
            continue
        estimates = [100 * d["estimate"] for d in rows.values()]
        lows = [None if d["low"] is None else 100 * d["low"] for d in rows.values()]
        highs = [None if d["high"] is None else 100 * d["high"] for d in rows.values()]
        figure.add_trace(
            go.Scatter(
                x=[round(e, 2) for e in estimates],
                y=list(rows),
                mode="markers",
                name=name,
                marker={"color": colour, "size": 10},
                error_x=views.interval_whiskers(estimates, lows, highs),
                customdata=[
                    [
                        "–" if lo is None else f"{lo:+.1f}",
                        "–" if hi is None else f"{hi:+.1f}",
                        "–" if d["p_value"] is None else views.format_p(d["p_value"]),
                    ]
                    for lo, hi, d in zip(lows, highs, rows.values(), strict=True)
                ],
                hovertemplate=f"%{{y}}: %{{x:+.1f}} points ({level} CI %{{customdata[0]}} to "
                "%{customdata[1]}, %{customdata[2]})<extra></extra>",
            )
        )
    figure.add_vline(x=0, line_dash="dash", line_color="#444")
    figure.update_layout(
        title=title,
        xaxis_title="difference (AP points)",
        yaxis={"categoryorder": "array", "categoryarray": list(defined), "autorange": "reversed"},
        height=max(290, 120 + 32 * len(defined)),
        # the legend between the title and the plot: under it, it would sit on the axis title
        margin={"t": 80, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        showlegend=True,  # the colours' meaning, also when every row has the same
    )
    return figure


def as_sentence(text: str) -> str:
    """The API's sentence ("group 3 beats ...") capitalised and closed."""
    return text[:1].upper() + text[1:] + "."


def replicate_groups(
    rows: dict[int, dict[str, Any]], baseline: dict[str, Any], other: dict[str, Any]
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """The scored runs (job ids) of the two runs' replicate groups, when they belong to two
    different groups; None otherwise."""
    groups = (baseline["group_id"], other["group_id"])
    if None in groups or groups[0] == groups[1]:
        return None
    members = [
        tuple(sorted(job_id for job_id, row in rows.items() if row["group_id"] == group))
        for group in groups
    ]
    return members[0], members[1]


def group_significance(
    baseline: dict[str, Any],
    other: dict[str, Any],
    scored: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """Is the other run's replicate group better than the baseline's? The API's sentence on
    the groups' means, by a bootstrap over the val images and the seeds."""
    group_a, group_b = baseline["group_id"], other["group_id"]
    try:
        with st.spinner("Resampling the val images and the seeds of both groups…"):
            found = cached.compare_groups(group_a, group_b, scored=scored)
    except ApiError as err:
        if err.status not in (404, 409, 422):
            raise
        st.warning(f"Their replicate groups could not be compared: {describe_detail(err.detail)}")
        return
    st.info(as_sentence(found["sentence"]), icon=":material/stacks:")
    st.caption(
        f"Their replicate groups: group #{group_a} ({found['a']['runs']} runs) against group "
        f"#{group_b} ({found['b']['runs']} runs), their mean "
        f"{views.metric_labels().get(found['metric'], found['metric'])} "
        f"compared by a bootstrap over the val images and the seeds ({found['resamples']:,} "
        "resamples)."
    )


def significance(
    baseline: dict[str, Any],
    other: dict[str, Any],
    *,
    groups: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> None:
    """Is `other` really better or worse than the baseline? The API's sentence (beside it, the
    one on their replicate groups, `groups`: each group's scored runs), then the differences
    (other - baseline) per metric and per class with their intervals."""
    st.markdown(f"**{short_label(other)}** against **{short_label(baseline)}**")
    try:
        with st.spinner("Resampling the val images of both runs…"):
            found = cached.compare(baseline["job_id"], other["job_id"])
    except ApiError as err:
        if err.status not in (404, 422):
            raise
        st.warning(describe_detail(err.detail))
        return
    if groups is None:
        st.info(as_sentence(found["sentence"]), icon=":material/balance:")
    else:
        runs_col, groups_col = st.columns(2)
        runs_col.info(as_sentence(found["sentence"]), icon=":material/balance:")
        runs_col.caption("The two runs: a paired bootstrap over the val images.")
        with groups_col:
            group_significance(baseline, other, groups)
    level = f"{100 * found['level']:g}%"
    labels = views.metric_labels()
    # the comparison's own figures: the box ones, or a mask model's mask ones
    by_metric = {
        labels.get(key, key): found["metrics"][key] for key in labels if key in found["metrics"]
    }
    name = f"{short_label(other)} − {short_label(baseline)}"
    left, right = st.columns(2)
    left.plotly_chart(
        forest_plot(
            by_metric, alpha=found["alpha"], level=level, title=f"{name}: per metric ({level} CI)"
        ),
        width="stretch",
        key=f"compare-forest-metrics-{other['job_id']}",
    )
    right.plotly_chart(
        forest_plot(
            found["per_class"],
            alpha=found["alpha"],
            level=level,
            title=f"{name}: AP per class ({level} CI)",
        ),
        width="stretch",
        key=f"compare-forest-classes-{other['job_id']}",
    )
    undefined = [
        label
        for figures in (by_metric, found["per_class"])
        for label, d in figures.items()
        if d["estimate"] is None
    ]
    st.caption(
        f"Differences {name} in AP points: paired bootstrap over the val images both runs were "
        f"scored on ({found['resamples']:,} resamples, seed {found['seed']}); red where "
        f"p < {found['alpha']:g}, i.e. where the interval leaves out 0."
        + (f" Undefined on this val set: {', '.join(undefined)}." if undefined else "")
    )


def per_class_difference(runs: list[dict[str, Any]]) -> None:
    """AP per class of each run minus the baseline's, in AP points."""
    per_class = {
        short_label(r): {
            name: views.ap_points(ap)
            for name, ap in cached.evaluation(r["job_id"])["per_class_ap"].items()
        }
        for r in runs
    }
    frame = pd.DataFrame(per_class)
    baseline = frame.columns[0]
    figure = go.Figure()
    for run in frame.columns[1:]:
        difference = (frame[run] - frame[baseline]).round(1)
        figure.add_trace(
            go.Bar(x=frame.index, y=difference, name=f"{run} − {baseline}", text=difference)
        )
    figure.update_layout(
        title=f"AP per class, difference to {baseline}",
        barmode="group",
        yaxis_title="Δ AP (points)",
        height=360,
        margin={"t": 50, "b": 40},
    )
    left, right = st.columns([3, 2])
    left.plotly_chart(figure, width="stretch")
    shown = frame.map(views.figure_cell)
    right.dataframe(shown, width="stretch", column_config=narrow(shown.columns))


def rank_label(by: str) -> str:
    return {"errors": "errors (every type)", "tp": "true positives"}.get(by, f"{by} errors")


def paired_images(runs: list[dict[str, Any]]) -> None:
    """The images on which the baseline and another run differ most, in both directions, as
    paired overlays, and the confusions that changed between them."""
    baseline, others = runs[0], {r["job_id"]: r for r in runs[1:]}
    pair_col, by_col, thr_col = st.columns([3, 2, 2])
    other_id = pair_col.selectbox(
        "Images of the baseline against",
        list(others),
        format_func=lambda i: short_label(others[i]),
        key="compare-other",
    )
    by = by_col.selectbox(
        "Compare per image",
        ["errors", "tp", *views.error_types()],
        format_func=rank_label,
        key="compare-by",
    )
    other = others[other_id]
    names = {"a": short_label(baseline), "b": short_label(other)}
    try:
        found = cached.compare_images(baseline["job_id"], other_id, by=by, limit=1)
    except ApiError as err:
        if err.status not in (409, 422):
            raise
        st.warning(describe_detail(err.detail))
        return
    counted_from = found["score_thr"]
    # drawn from the score the counts start at by default, so every box counted is drawn
    score_thr = thr_col.slider(
        "Draw boxes from score",
        0.0,
        1.0,
        counted_from,
        0.05,
        key=f"compare-thr-{counted_from}",
        format="%.2f",
    )
    st.info(as_sentence(found["sentence"]), icon=":material/difference:")
    drawn = ",".join(["gt", "tp", "errors"] if by in ("errors", "tp") else ["gt", "tp", by])
    caption = f"Each pair: {names['a']} left, {names['b']} right; {rank_label(by)} counted "
    caption += f"from score {counted_from:.2f}, boxes drawn from {score_thr:.2f}"
    if score_thr > counted_from:
        caption += f" (boxes scored {counted_from:.2f} to {score_thr:.2f} are counted, not drawn)"
    st.caption(caption + ".")
    views.outcome_legend()
    better_a, better_b = st.tabs(
        [
            f"Better in {names['a']} ({images(found['better_in_a'])})",
            f"Better in {names['b']} ({images(found['better_in_b'])})",
        ]
    )
    for tab, side in ((better_a, "a"), (better_b, "b")):
        with tab:
            pairs_page(baseline, other, by=by, side=side, score_thr=score_thr, show=drawn)
    confusion_changes(baseline, other, found["confusion"])


def pairs_page(
    baseline: dict[str, Any],
    other: dict[str, Any],
    *,
    by: str,
    side: str,
    score_thr: float,
    show: str,
) -> None:
    """One page of the images on which `side` (a: the baseline, b: the other run) does better,
    the largest differences first, each pair of overlays side by side."""
    names = {"a": short_label(baseline), "b": short_label(other)}
    page_key = f"compare-page-{side}"
    page = st.session_state.get(page_key, 1)
    listing = cached.compare_images(
        baseline["job_id"],
        other["job_id"],
        by=by,
        better=side,
        limit=PAIRS_PAGE,
        offset=(page - 1) * PAIRS_PAGE,
    )
    if not listing["items"]:
        st.caption(f"No image on which {names[side]} has the better {rank_label(by)} count.")
        return
    slots = []
    for item in listing["items"]:
        st.markdown(
            f"**{item['file_name']}** · {names[side]} better by {item['difference']} "
            f"({names['b']} against {names['a']}: {changes_text(item['changed'])})"
        )
        for column, which in zip(st.columns(2), "ab", strict=True):
            counts = item[which]
            caption = (
                f"{names[which]}: {counts['tp']} TP · {counts['errors']} errors · "
                f"{counts['missed']} missed"
            )
            slots.append((column.skeleton(height=PAIR_WIDTH), caption))
    pairs = [
        (job_id, item["image_id"])
        for item in listing["items"]
        for job_id in (baseline["job_id"], other["job_id"])
    ]
    for position, tile in cached.overlay_tiles(
        pairs, score_thr=score_thr, show=show, width=PAIR_WIDTH
    ):
        slot, caption = slots[position]
        slot.image(tile, caption=caption, width="stretch")
    pages = -(-listing["total"] // PAIRS_PAGE)
    if pages > 1:
        st.pagination(pages, key=page_key)


def images(count: int) -> str:
    return f"{count:,} image{'' if count == 1 else 's'}"


def changes_text(changed: dict[str, int]) -> str:
    """B − A of the counts that differ: "tp −1, classification +1"."""
    return ", ".join(f"{name} {delta:+d}".replace("-", "−") for name, delta in changed.items())


def confusion_changes(
    baseline: dict[str, Any], other: dict[str, Any], confusion: dict[str, Any]
) -> None:
    """The confusion-matrix cells whose counts changed, each a link to its images in either
    run's explorer."""
    st.markdown("**Confusions that changed**")
    if confusion["changes"] is None:
        st.caption(f"Not compared: {confusion['why']}.")
        return
    thresholds = f"score ≥ {confusion['score_thr']}, IoU ≥ {confusion['iou_thr']}"
    if not confusion["changes"]:
        st.caption(f"No off-diagonal cell of the confusion matrix changed ({thresholds}).")
        return
    a, b = short_label(baseline), short_label(other)
    st.caption(f"Cells off the confusion matrix's diagonal ({thresholds}): {a} → {b}.")
    for change in confusion["changes"][:CONFUSION_ROWS]:
        text, left, right = st.columns([4, 2, 2], vertical_alignment="center")
        text.markdown(f"{change['label']}: **{change['a']} → {change['b']}**")
        for column, run in ((left, baseline), (right, other)):
            column.page_link(
                "app_pages/explorer.py",
                label=f"images in {short_label(run)}",
                icon=":material/image_search:",
                query_params={
                    "job": str(run["job_id"]),
                    "gt_class": change["gt"],
                    "predicted_class": change["predicted"],
                },
            )
    if len(confusion["changes"]) > CONFUSION_ROWS:
        st.caption(f"{len(confusion['changes']) - CONFUSION_ROWS} smaller changes not shown.")


st.title("Compare runs")
named = st.query_params.get("jobs", "").split(",")[0]
if "dataset" not in st.query_params and named.isdigit():  # e.g. a link from a run's page
    st.query_params["dataset"] = str(cached.job(int(named))["dataset_id"])
datasets = cached.datasets()
dataset = views.pick_dataset(
    datasets, key="compare-dataset", preferred=views.busiest_dataset(datasets)
)
if dataset is None:
    st.stop()
board = cached.leaderboard(dataset=dataset["id"], limit=1000)
rows = {row["job_id"]: row for row in board["items"]}
if len(rows) < 2:
    st.info(
        f"Comparing needs two finished fine-tune runs on {dataset['name']}; it has {len(rows)}."
    )
    st.stop()
chosen = pick_runs(rows)
if len(chosen) < 2:
    st.info("Pick two or more runs; the first one is the baseline the others are compared to.")
    st.stop()
runs = [rows[job_id] for job_id in chosen]

st.subheader("Metrics")
metrics_table(runs)
st.subheader("Is the difference real?")
for position, other in enumerate(runs[1:]):
    # the first pair's groups only: each group comparison resamples every run of both groups
    significance(
        runs[0], other, groups=replicate_groups(rows, runs[0], other) if position == 0 else None
    )
st.subheader("AP per class")
per_class_difference(runs)
st.subheader("Where they differ, image by image")
paired_images(runs)
