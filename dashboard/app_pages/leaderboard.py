"""Leaderboard: the finished fine-tune runs of one dataset, best first, with their spec's axes.

Filters, a bar chart of the ranking metric grouped by backbone or init, and a row selection
that opens the run.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached, views

# The API returns up to 10,000 rows a call; the table, its filters and the chart work on the
# best ones by the ranking metric.
ROW_LIMIT = 10_000
FILTERS = {
    "detector": "Detector",
    "backbone": "Backbone",
    "init": "Init",
    "neck": "Neck",
    "image scale": "Image scale",
    "schedule": "Schedule",
    "lr": "Learning rate",
    "seed": "Seed",
}
GROUPINGS = {"backbone": "Backbone", "init": "Init"}


def leaderboard_frame(items: list[dict], labels: dict[str, str]) -> pd.DataFrame:
    """One row per run: a link, its AP figures in points (under their `labels`) and its spec's
    axes."""
    rows = pd.DataFrame(items)
    frame = pd.DataFrame({"run": "run?job=" + rows["job_id"].astype(str)})
    frame["job_id"] = rows["job_id"]
    frame["name"] = rows["name"].fillna("")
    for metric, label in labels.items():
        values = pd.to_numeric(rows[metric], errors="coerce")
        frame[label] = (100 * values.where(values >= 0)).round(1)
    for axis in ("detector", "backbone", "init", "neck"):
        frame[axis] = rows[axis]
    frame["image scale"] = rows["image_scale"].map(lambda s: f"{s[0]}×{s[1]}")
    frame["epochs"] = rows["epochs"].astype("Int64")
    frame["iterations"] = rows["iterations"].astype("Int64")
    frame["schedule"] = [
        f"{e} epochs" if pd.notna(e) else f"{i} iterations"
        for e, i in zip(rows["epochs"], rows["iterations"], strict=True)
    ]
    for axis in ("lr", "seed", "batch_size", "data_fraction"):
        frame[axis] = rows[axis]
    frame["finished"] = pd.to_datetime(rows["finished_at"], utc=True)
    return frame


def filter_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Multiselects over the spec's axes; an empty selection keeps every value."""
    keep = pd.Series(True, index=frame.index)
    columns = st.columns(len(FILTERS))
    for column, (axis, label) in zip(columns, FILTERS.items(), strict=True):
        choices = sorted(frame[axis].dropna().unique().tolist())
        chosen = column.multiselect(
            label, choices, key=f"leaderboard-filter-{axis}", placeholder="all"
        )
        if chosen:
            keep &= frame[axis].isin(chosen)
    return frame[keep]


def metric_by_group(frame: pd.DataFrame, *, metric: str, group: str) -> go.Figure:
    """Mean of the metric per group with its spread across runs, hovering the best run."""
    stats = (
        frame.dropna(subset=[metric])
        .groupby(group)[metric]
        .agg(["mean", "std", "max", "count"])
        .sort_values("mean", ascending=False)
    )
    figure = go.Figure(
        go.Bar(
            x=stats.index.astype(str),
            y=stats["mean"].round(2),
            error_y={"type": "data", "array": stats["std"].fillna(0).round(2)},
            text=[f"n={n}" for n in stats["count"]],
            customdata=stats[["max", "count"]].to_numpy(),
            hovertemplate=f"%{{x}}<br>mean {metric} %{{y:.1f}}<br>best %{{customdata[0]:.1f}}"
            "<br>%{customdata[1]} runs<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{metric} by {group} (mean ± std over runs)",
        xaxis_title=group,
        yaxis_title=f"{metric} (AP points)",
        height=380,
        margin={"t": 50, "b": 40},
    )
    return figure


st.title("Leaderboard")
dataset = views.pick_dataset(cached.datasets(), key="leaderboard-dataset")
if dataset is None:
    st.stop()

labels = views.metric_labels()
metric = st.selectbox("Rank by", list(labels), format_func=labels.get, key="leaderboard-metric")
board = cached.leaderboard(dataset=dataset["id"], metric=metric, limit=ROW_LIMIT)
if not board["items"]:
    st.info(
        f"No fine-tune job on {dataset['name']} has finished yet. Submit one on the Jobs "
        "page; it appears here when it succeeds."
    )
    st.page_link("app_pages/jobs.py", label="Go to Jobs", icon=":material/manufacturing:")
    st.stop()

runs = filter_rows(leaderboard_frame(board["items"], labels))
label = labels[metric]
shown = f"{len(runs):,} of {board['total']:,} finished runs"
if board["total"] > len(board["items"]):
    shown += f" (the best {len(board['items']):,} by {label} are loaded)"
st.caption(
    f"{shown} on **{dataset['name']}**. Click a column to sort; select a row to open the run."
)

selection = st.dataframe(
    runs,
    hide_index=True,
    width="stretch",
    height=min(600, 38 + 35 * max(len(runs), 1)),
    column_order=[
        "run",
        "name",
        *labels.values(),
        "detector",
        "backbone",
        "init",
        "neck",
        "image scale",
        "epochs",
        "iterations",
        "lr",
        "seed",
        "batch_size",
        "data_fraction",
        "finished",
    ],
    column_config={
        "run": st.column_config.LinkColumn("Run", display_text=r"job=(\d+)", width="small"),
        **{name: st.column_config.NumberColumn(name, format="%.1f") for name in labels.values()},
        "lr": st.column_config.NumberColumn("lr", format="%g"),
        "finished": st.column_config.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm"),
    },
    on_select="rerun",
    selection_mode="single-row",
    key="leaderboard-table",
)
picked = selection.selection.rows if selection else []
if picked:
    st.switch_page("app_pages/run.py", query_params={"job": str(runs.iloc[picked[0]]["job_id"])})

group = (
    st.segmented_control(
        "Group the chart by",
        list(GROUPINGS),
        format_func=GROUPINGS.get,
        default="backbone",
        key="leaderboard-group",
    )
    or "backbone"
)
if runs.empty:
    st.info("No run matches these filters.")
else:
    st.plotly_chart(metric_by_group(runs, metric=label, group=group), width="stretch")
