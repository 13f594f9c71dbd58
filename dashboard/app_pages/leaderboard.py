"""Leaderboard: the finished fine-tune runs of one dataset, best first, with their spec's axes.

Every metric carries its bootstrap interval over the val images, and the best runs can be
tested against the top one (tied with it, or worse). Replicate groups (one spec trained with
several seeds) can be shown as one row each: the mean over the seeds, its t-interval and the
standard deviation between seeds. Filters, a chart of the best rows with their intervals, a bar
chart of the ranking metric grouped by backbone or init, and a row selection that opens the run.
A run whose reproducibility record differs from the other runs' (another library version or
GPU, a changed annotation file) is marked in a "record" column naming the fields.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import cached, views
from dashboard.client import ApiError, describe_detail

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
# The metrics shown as columns unless every one is asked for (the API's first ones: mAP, mAP50,
# mAP75), and how many differing spec axes get a column each before they share one: with
# every figure's interval, more would not fit a 1440 px wide window.
SHOWN_METRICS = 3
# shown too when a row has it: the mask figure of Mask R-CNN runs
MASK_COLUMN = "segm_mAP"
SPEC_COLUMNS = 3
# The spec's axes the table can show, in its order.
AXES = (
    "detector",
    "backbone",
    "init",
    "neck",
    "image scale",
    "schedule",
    "lr",
    "seed",
    "batch_size",
    "data_fraction",
)
# The API tests at most this many rows against the leader per request (each test resamples both
# runs' val images: about a second a row on 5,000 images).
TESTED_ROWS = 50
CHARTED_RUNS = 30
# the run column's pixels: a job id of up to six digits (Streamlit's "small" is 75)
RUN_WIDTH = 56
# A figure's text is padded to the width of "100.0" with figure spaces (as wide as a digit), so
# that the text column lines up and sorts as the numbers do ("  9.5" before " 37.6").
FIGURE_SPACE = "\u2007"
VERDICT_COLOURS = {
    "leader": "#1f77b4",
    "tied": "#2ca02c",
    "worse": "#d62728",
    "better": "#9467bd",
    "not tested": "#7f7f7f",
}


def interval_column(label: str, *, grouped: bool = False) -> str:
    """The table column of the ranking metric with its interval: "mAP [95% CI]", or for
    replicate groups "mAP mean [95% CI]"."""
    return f"{label}{' mean' if grouped else ''} [{views.interval_level()} CI]"


def std_column(label: str) -> str:
    """The column of the standard deviation between a group's seeds: "mAP std"."""
    return f"{label} std"


def with_interval(estimate: Any, interval: dict[str, Any] | None) -> str:
    """ "37.6 [36.9, 38.3]" (points), padded to sort as numbers; EMPTY without a value."""
    points = views.ap_points(estimate)
    if points is None:
        return views.EMPTY
    bounds = views.format_interval((interval or {}).get("low"), (interval or {}).get("high"))
    return f"{points:.1f}".rjust(5, FIGURE_SPACE) + (f" {bounds}" if bounds else "")


def verdict(vs_leader: dict[str, Any] | None) -> str:
    """A row against the leader: "leader", "tied", "worse" (or "better"), or "not tested"."""
    if not vs_leader:
        return "not tested"
    if vs_leader["leader"]:
        return "leader"
    if vs_leader.get("p_holm") is None:  # the metric is undefined for one of the two
        return "not tested"
    if vs_leader["tied_with_leader"]:
        return "tied"
    return "worse" if vs_leader["difference"] < 0 else "better"


def verdict_text(vs_leader: dict[str, Any] | None) -> str:
    """The "vs leader" cell: "leader", "tied (p = 0.41)", "worse (p = 0.003)", ..."""
    found = verdict(vs_leader)
    if vs_leader is None or found in ("leader", "not tested"):
        return found
    return f"{found} ({views.format_p(vs_leader['p_holm'])})"


def record_cell(differs: list[str] | None) -> str:
    """The "record" cell: "⚠ differs: mmdet, val_ann_sha256", empty when the run's record
    agrees with the other runs'."""
    return f"⚠ differs: {', '.join(differs)}" if differs else ""


def leaderboard_frame(
    items: list[dict],
    labels: dict[str, str],
    *,
    metric: str,
    ties: dict[int, dict[str, Any]] | None = None,
    grouped: bool = False,
) -> pd.DataFrame:
    """One row per run (`grouped`: per replicate group, its first run's link): a link, its AP
    figures in points (under their `labels`), the ranking `metric` with its interval as text
    and its bounds, its verdict against the leader (`ties`: job id -> the API's vs_leader, when
    tested), its spec's axes and the fields in which its reproducibility record differs from the
    other rows'; a group's row also has n, the std between its seeds and the seeds in place of
    the seed."""
    rows = pd.DataFrame(items)
    frame = pd.DataFrame({"run": "run?job=" + rows["job_id"].astype(str)})
    frame["job_id"] = rows["job_id"]
    frame["name"] = rows["name"].fillna("")
    for key, label in labels.items():
        values = pd.to_numeric(rows[key], errors="coerce")
        frame[label] = (100 * values.where(values >= 0)).round(1)
    # every figure with its interval, as text that sorts as numbers; the ranked one's bounds
    # also as numbers for the chart
    every = [row_intervals or {} for row_intervals in rows["intervals"]]
    for key, key_label in labels.items():
        frame[interval_column(key_label, grouped=grouped)] = [
            with_interval(estimate, found.get(key))
            for estimate, found in zip(rows[key], every, strict=True)
        ]
    intervals = [interval or {} for interval in rows["interval"]]
    for bound in ("low", "high"):
        values = pd.to_numeric(pd.Series([i.get(bound) for i in intervals]), errors="coerce")
        frame[f"interval {bound}"] = (100 * values).round(1)
    if ties is not None:
        tested = [ties.get(job_id) for job_id in rows["job_id"]]
        frame["verdict"] = [verdict(found) for found in tested]
        frame["vs leader"] = [verdict_text(found) for found in tested]
    # an imported run's training is unknown (null): its cells read as every empty cell
    for axis in ("detector", "backbone", "init", "neck"):
        frame[axis] = rows[axis].fillna(views.EMPTY)
    frame["image scale"] = rows["image_scale"].map(
        lambda s: f"{s[0]}×{s[1]}" if isinstance(s, list | tuple) else views.EMPTY
    )
    frame["epochs"] = rows["epochs"].astype("Int64")
    frame["iterations"] = rows["iterations"].astype("Int64")
    frame["schedule"] = [
        f"{e} epochs" if pd.notna(e) else f"{i} iterations" if pd.notna(i) else views.EMPTY
        for e, i in zip(rows["epochs"], rows["iterations"], strict=True)
    ]
    for axis in ("lr", "seed", "batch_size", "data_fraction"):
        values = rows[axis]
        missing = values.isna()
        frame[axis] = (
            [views.EMPTY if gone else f"{v:g}" for v, gone in zip(values, missing, strict=True)]
            if missing.any()
            else values
        )
    # as text (ISO order sorts as time does), so that a missing time reads as every empty cell;
    # without the year when every run finished this year, so that the column fits the page
    finished = pd.to_datetime(rows["finished_at"], utc=True)
    year = pd.Timestamp.now(tz="UTC").year
    stamp = (
        "%m-%d %H:%M" if all(pd.isna(w) or w.year == year for w in finished) else "%Y-%m-%d %H:%M"
    )
    frame["finished"] = [
        views.EMPTY if pd.isna(when) else when.strftime(stamp) for when in finished
    ]
    frame["record"] = [record_cell(fields) for fields in rows["record_differs"]]
    if grouped:
        replicates = list(rows["replicates"])
        frame["n"] = [found["n"] for found in replicates]
        frame[std_column(labels[metric])] = [
            views.EMPTY if found["std"] is None else f"{100 * found['std']:.1f}"
            for found in replicates
        ]
        frame["seed"] = [", ".join(str(seed) for seed in found["seeds"]) for found in replicates]
    return frame


def spec_axes(frame: pd.DataFrame) -> tuple[list[str], dict[str, str]]:
    """The spec's axes (AXES) that differ between the rows, and the value of each other one."""
    varying, same = [], {}
    for axis in AXES:
        values = frame[axis].astype(str).unique()
        if len(values) > 1:
            varying.append(axis)
        elif len(values) == 1:
            same[axis] = values[0]
    return varying, same


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


def best_runs(
    frame: pd.DataFrame, *, metric: str, ranked: str, noun: str = "runs", count: int = CHARTED_RUNS
) -> go.Figure:
    """The best rows shown (runs, or replicate groups), each a point at its metric with
    whiskers to its interval's bounds (the `ranked` column), coloured by its verdict against
    the leader when tested."""
    top = frame.dropna(subset=[metric]).head(count)
    names = ("#" + top["job_id"].astype(str) + " " + top["name"]).str.strip()
    tested = "verdict" in top
    verdicts = top["verdict"] if tested else pd.Series("not tested", index=top.index)
    shown = [ranked, *(["vs leader"] if tested else [])]
    figure = go.Figure()
    for found, colour in VERDICT_COLOURS.items():
        runs = top[verdicts == found]
        if runs.empty:
            continue
        figure.add_trace(
            go.Scatter(
                x=names[runs.index],
                y=runs[metric],
                mode="markers",
                name=found,
                marker={"color": colour, "size": 9},
                error_y=views.interval_whiskers(
                    runs[metric].tolist(),
                    runs["interval low"].tolist(),
                    runs["interval high"].tolist(),
                ),
                customdata=runs[shown].to_numpy(),
                hovertemplate=f"%{{x}}<br>{metric} %{{customdata[0]}}"
                + ("<br>%{customdata[1]}" if tested else "")
                + "<extra></extra>",
            )
        )
    figure.update_layout(
        title=f"{metric} of the best {len(top)} {noun} shown, with {views.interval_level()} "
        "intervals",
        xaxis={"title": noun[:-1], "categoryorder": "array", "categoryarray": names},
        yaxis_title=f"{metric} (AP points)",
        height=380,
        margin={"t": 50, "b": 40},
        showlegend=tested,
    )
    return figure


def metric_by_group(
    frame: pd.DataFrame, *, metric: str, ranked: str, group: str, noun: str = "runs"
) -> go.Figure:
    """Mean of the metric per group with its spread across rows (runs, or replicate groups'
    means), hovering the best row and its interval (the `ranked` column)."""
    scored = frame.dropna(subset=[metric])
    stats = (
        scored.groupby(group)[metric]
        .agg(["mean", "std", "count"])
        .sort_values("mean", ascending=False)
    )
    best = scored.loc[scored.groupby(group)[metric].idxmax(), [group, ranked]]
    stats["best"] = best.set_index(group)[ranked].str.strip()
    # the number of rows of each bar goes under it, in its axis label: printed on the bar it
    # would sit under the error bar's cap
    figure = go.Figure(
        go.Bar(
            x=[f"{name}<br>n={n}" for name, n in zip(stats.index, stats["count"], strict=True)],
            y=stats["mean"].round(2),
            error_y={"type": "data", "array": stats["std"].fillna(0).round(2)},
            customdata=stats[["best", "count"]].to_numpy(),
            hovertemplate=f"%{{x}}<br>mean {metric} %{{y:.1f}}<br>best %{{customdata[0]}}"
            f"<br>%{{customdata[1]}} {noun}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"{metric} by {group} (mean ± std over {noun})",
        xaxis_title=group,
        yaxis_title=f"{metric} (AP points)",
        height=380,
        margin={"t": 50, "b": 40},
    )
    return figure


st.title("Leaderboard")
datasets = cached.datasets()
dataset = views.pick_dataset(
    datasets, key="leaderboard-dataset", preferred=views.busiest_dataset(datasets)
)
if dataset is None:
    st.stop()

labels = views.metric_labels()
metric_col, every_col, grouped_col = st.columns([5, 2, 3], vertical_alignment="bottom")
metric = metric_col.selectbox(
    "Rank by", list(labels), format_func=labels.get, key="leaderboard-metric"
)
every_metric = every_col.toggle(
    "Every metric",
    value=False,
    help=f"Besides {', '.join(list(labels.values())[:SHOWN_METRICS])} and the ranked one, the "
    "other COCO figures as columns (AP by object size).",
    key="leaderboard-every-metric",
)
grouped = grouped_col.toggle(
    "One row per replicate group",
    value=False,
    help="Runs of one spec trained with several seeds (submitted with replicates) as one row: "
    "the mean over the seeds, its interval and the spread between seeds.",
    key="leaderboard-grouped",
)
board = cached.leaderboard(dataset=dataset["id"], metric=metric, limit=ROW_LIMIT, group=grouped)
if not board["items"]:
    st.info(
        f"No fine-tune job on {dataset['name']} has finished yet. Submit one on the Jobs "
        "page; it appears here when it succeeds."
    )
    st.page_link("app_pages/jobs.py", label="Go to Jobs", icon=":material/manufacturing:")
    st.stop()

label = labels[metric]
noun = "groups" if grouped else "runs"
ties = None
ranking = tuple(row["job_id"] for row in board["items"][:TESTED_ROWS])
# The API tests single runs against the leader; replicate groups are compared with each other
# (a bootstrap over val images and seeds) on the Compare page.
test_ties = not grouped and st.checkbox(
    "Test the runs against the leader",
    # on by default only where every run can be tested in one request
    value=board["total"] <= TESTED_ROWS,
    help=f"A paired bootstrap test of each of the best {TESTED_ROWS} runs against the top one "
    f"on {label}; it takes about a second a run on a 5,000-image val split.",
    key=f"leaderboard-significance-{dataset['id']}",
)
if test_ties and len(ranking) > 1:
    try:
        with st.spinner(f"Testing the best {len(ranking)} runs against the leader…"):
            ties = cached.versus_leader(dataset=dataset["id"], metric=metric, ranking=ranking)
    except ApiError as err:
        if err.status not in (404, 422):
            raise
        st.warning(f"The runs could not be tested: {describe_detail(err.detail)}")

runs = filter_rows(
    leaderboard_frame(board["items"], labels, metric=metric, ties=ties, grouped=grouped)
)
if grouped:
    shown = (
        f"{len(runs):,} of {board['total']:,} replicate groups ({int(runs['n'].sum()):,} "
        "finished runs; a run outside any group is a group of one)"
    )
else:
    shown = f"{len(runs):,} of {board['total']:,} finished runs"
if board["total"] > len(board["items"]):
    shown += f" (the best {len(board['items']):,} by {label} are loaded)"
st.caption(
    f"{shown} on **{dataset['name']}**. Click a column to sort; select a row to open the run."
)

ranked = interval_column(label, grouped=grouped)
# The spec's axes on which the rows shown differ get a column (one column for them all when
# many differ); the others are said once under the table, so that every column fits the page.
varying, same = spec_axes(runs)
if len(varying) > SPEC_COLUMNS:
    runs = runs.assign(spec=[" · ".join(str(v) for v in row) for row in runs[varying].values])
    axes_columns = ["spec"]
else:
    axes_columns = varying
# the leading metrics (every one if asked) and the ranked one, each in its interval's column
# (a group's ranked one followed by its std)
# mask mAP beside the box figures when some row is a mask model's (Mask R-CNN)
masks_shown = any(row.get(MASK_COLUMN) is not None for row in board["items"])
metric_columns = [
    interval_column(name, grouped=grouped)
    for position, (key, name) in enumerate(labels.items())
    if every_metric
    or position < SHOWN_METRICS
    or key == metric
    or (key == MASK_COLUMN and masks_shown)
]
if grouped:
    metric_columns.insert(metric_columns.index(ranked) + 1, std_column(label))
# the record column only when some run's environment or data differs from the others'
differing = int((runs["record"] != "").sum())
selection = st.dataframe(
    runs,
    hide_index=True,
    width="stretch",
    height=min(600, 38 + 35 * max(len(runs), 1)),
    column_order=[
        "run",
        "name",
        *(["n"] if grouped else []),
        *metric_columns,
        *(["vs leader"] if ties is not None else []),
        *axes_columns,
        *(["record"] if differing else []),
        "finished",
    ],
    column_config={
        "run": st.column_config.LinkColumn("Run", display_text=r"job=(\d+)", width=RUN_WIDTH),
        **{name: st.column_config.NumberColumn(name, format="%.1f") for name in labels.values()},
        ranked: st.column_config.TextColumn(
            ranked,
            help=f"mean of {label} over the group's seeds (AP points) with its "
            f"{views.interval_level()} t-interval"
            if grouped
            else f"{label} in AP points with its {views.interval_level()} interval",
        ),
        std_column(label): st.column_config.NumberColumn(
            std_column(label), format="%.1f", help="standard deviation between the seeds' runs"
        ),
        "n": st.column_config.NumberColumn("n", help="runs (seeds) in the group", width="small"),
        "init": st.column_config.TextColumn("init"),
        "spec": st.column_config.TextColumn(
            "spec", width="large", help=f"the axes that differ: {' · '.join(varying)}"
        ),
        "seed": st.column_config.TextColumn("seeds") if grouped else "seed",
        "lr": st.column_config.NumberColumn("lr", format="%g"),
        "finished": st.column_config.TextColumn(
            "finished", help="UTC; month-day hours:minutes when every run finished this year"
        ),
        "record": st.column_config.TextColumn(
            "record",
            width="medium",
            help="the fields of the run's reproducibility record (library versions, GPU, "
            "annotation and image list hashes ...) that differ from most runs shown",
        ),
    },
    on_select="rerun",
    selection_mode="single-row",
    key="leaderboard-table",
)
picked = selection.selection.rows if selection else []
if picked:
    st.switch_page("app_pages/run.py", query_params={"job": str(runs.iloc[picked[0]]["job_id"])})

unscored = int(runs["interval low"].isna().sum())
level = views.interval_level()
if grouped:
    explained = (
        f"{ranked}: the mean of {label} over a group's runs, one per seed, with the {level} "
        "t-interval of that mean over the seeds; a lone run (n = 1) shows its own bootstrap "
        f"interval over the val images. {std_column(label)}: the standard deviation between "
        "the seeds' runs, in points. The other metric columns are means over the runs, each with "
        "its own interval. Groups "
        "are not tested against the leader: compare two groups on the Compare page (a "
        "bootstrap over both the val images and the seeds), or a group's run page says how "
        "much of its spread comes from the seeds."
    )
else:
    explained = (
        f"{ranked}: {label} with its {level} interval [low, high], a bootstrap over the val "
        "images; every other metric column carries its own interval the same way."
    )
if same:
    st.caption(
        f"The same for every {noun[:-1]} shown: "
        + " · ".join(f"{axis} {value}" for axis, value in same.items())
        + "."
    )
st.caption(
    explained
    + (
        f" {unscored:,} of these runs have no interval (scored before intervals were kept): "
        "their run page computes them."
        if unscored
        else ""
    )
)
if differing:
    st.caption(
        f"record: {differing:,} of the {noun} shown ran in another environment or on other data "
        f"than most {noun} of this dataset (another library version, GPU, or a changed "
        "annotation file: the fields named); their figures may differ for that reason and not "
        "for their spec. The run page lists the whole record."
    )
if ties is not None:
    untested = (
        f" Only the best {len(ranking)} runs are tested." if board["total"] > len(ranking) else ""
    )
    st.caption(
        "vs leader: **tied** = not significantly different from the top row (paired bootstrap "
        f"over val images, Holm-corrected over the {len(ranking)} rows tested; p is Holm's "
        f"adjusted p-value).{untested}"
    )

if runs.empty:
    st.info(f"No {noun[:-1]} matches these filters.")
    st.stop()
st.plotly_chart(best_runs(runs, metric=label, ranked=ranked, noun=noun), width="stretch")
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
st.plotly_chart(
    metric_by_group(runs, metric=label, ranked=ranked, group=group, noun=noun), width="stretch"
)
