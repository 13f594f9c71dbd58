"""Experiments: grids of jobs started as one request, and what they found.

The list of experiments with their progress; for the one chosen, the progress of its whole grid
(jobs by status), its result matrix (each cell's mean of a metric with its 95% interval and n)
as a table and as a heatmap per slice, the metric against data fraction (one line per value of
the other axes, the intervals as bands) when data fraction is an axis, the jobs behind each cell,
the report to download, and a Cancel for its owner or an admin. Members and admins start one
from a template (a study the API offers: base spec, axes, seeds).

The experiment shown is the `experiment` query parameter (`experiments?experiment=4`).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pandas as pd
import plotly.colors
import plotly.graph_objects as go
import streamlit as st

from dashboard import access, cached, views
from dashboard.client import ApiError, describe_detail

LIST_PAGE = 50
# a job in one of these is still to finish; every other status is an end
OPEN_STATUSES = ("queued", "running")
DATA_FRACTION = "data_fraction"
# how often the progress of a grid with open jobs is read again (its cached answer lasts 15 s)
PROGRESS_REFRESH_S = 15
BAND_OPACITY = 0.18
RECORD_MARK = "⚠"
PICK_KEY = "experiments-pick"


def value_label(axis: str, value: Any) -> str:
    """An axis value as the tables name it: an init as the leaderboard does, a size as
    1333x800."""
    if axis == "init":
        return views.init_label(value)
    if isinstance(value, list):
        return "x".join(str(part) for part in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def cell_name(values: dict[str, Any]) -> str:
    """`init=imagenet, data_fraction=0.1`."""
    return ", ".join(f"{axis}={value_label(axis, value)}" for axis, value in values.items())


def finished(counts: dict[str, int]) -> int:
    return sum(n for status, n in counts.items() if status not in OPEN_STATUSES)


def progress_text(experiment: dict[str, Any]) -> str:
    text = f"{finished(experiment['status_counts'])} of {experiment['jobs']} finished"
    return f"{text} · cancelled" if experiment["cancelled_at"] else text


def status_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "no jobs"


def cell_text(cell: dict[str, Any]) -> str:
    """A cell in the matrix: "32.0 [28.1, 35.9] (3)", in AP points, with the record fields in
    which its runs differ from the rest after a mark."""
    points = views.ap_points(cell["mean"])
    text = views.EMPTY
    if points is not None:
        interval = views.format_interval(cell["low"], cell["high"])
        text = " ".join(part for part in (f"{points:.1f}", interval, f"({cell['n']})") if part)
    if cell["record_differs"]:
        text += f" {RECORD_MARK} {', '.join(cell['record_differs'])}"
    return text


def cell_hover(cell: dict[str, Any], label: str) -> str:
    """What hovering a cell in a chart says: its value, interval and n."""
    lines = [cell_name(cell["values"])]
    points = views.ap_points(cell["mean"])
    runs = len(cell["job_ids"])
    if points is None:
        lines.append(f"no scored run yet ({status_text(cell['status_counts'])})")
    else:
        lines.append(f"{label} {points:.1f}")
        interval = views.format_interval(cell["low"], cell["high"])
        if interval:
            lines.append(f"{views.interval_level()} interval {interval} over {cell['interval']}")
        else:
            lines.append("no interval")
        lines.append(f"n = {cell['n']} of {runs} runs")
    if cell["record_differs"]:
        lines.append(f"{RECORD_MARK} record differs: {', '.join(cell['record_differs'])}")
    return "<br>".join(lines)


def about(experiment: dict[str, Any]) -> str:
    """One line on what the grid is and who started it."""
    axes = experiment["axes"]
    cells = 1
    for values in axes.values():
        cells *= len(values)
    shape = " × ".join(f"{len(values)} {axis}" for axis, values in axes.items())
    created = datetime.fromisoformat(experiment["created_at"])
    parts = [
        f"{experiment['kind']}: {cells} cells ({shape}) × {experiment['repeats']} seeds = "
        f"{experiment['jobs']} jobs",
        f"by {experiment['owner'] or 'nobody'}",
        f"created {created:%Y-%m-%d %H:%M} UTC",
    ]
    if experiment["template"]:
        parts.append(f"from the template {experiment['template']}")
    return " · ".join(parts)


# -- the list --------------------------------------------------------------------------------


def experiment_list(items: list[dict[str, Any]], total: int) -> None:
    frame = pd.DataFrame(
        {
            "experiment": [f"#{e['id']}" for e in items],
            "name": [e["name"] for e in items],
            "owner": [e["owner"] or "" for e in items],
            "axes": [" × ".join(e["axes"]) for e in items],
            "progress": [progress_text(e) for e in items],
            "created": pd.to_datetime([e["created_at"] for e in items], utc=True),
        }
    )
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={
            "experiment": st.column_config.TextColumn("experiment", width="small"),
            "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
        },
    )
    pages = -(-total // LIST_PAGE)
    st.caption(f"{total:,} experiments, newest first.")
    if pages > 1:
        st.pagination(pages, key="experiments-page")


def pick_experiment(items: list[dict[str, Any]], *, metric: str) -> dict[str, Any] | None:
    """An experiment selectbox kept in the `experiment` query parameter; one the URL names but
    not listed on this page (an older one) is read and offered too."""
    by_id = {e["id"]: e for e in items}
    wanted = views.query_int("experiment")
    if wanted is not None and wanted not in by_id:
        try:
            by_id = {wanted: cached.experiment(wanted, metric=metric), **by_id}
        except ApiError as err:
            if err.status != 404:
                raise
            st.warning(f"Experiment #{wanted} does not exist; pick another one.")
    if not by_id:
        return None
    ids = list(by_id)
    chosen = st.selectbox(
        "Experiment",
        ids,
        index=ids.index(wanted) if wanted in by_id else 0,
        format_func=lambda i: f"#{i} {by_id[i]['name']}",
        key=PICK_KEY,
    )
    st.query_params["experiment"] = str(chosen)
    return by_id[chosen]


# -- one experiment --------------------------------------------------------------------------


def grid_progress(experiment: dict[str, Any], **layout: Any) -> None:
    """The grid's progress; while jobs are open it is read again every PROGRESS_REFRESH_S, and
    the whole page is drawn again when a job's status changed."""
    still_open = any(experiment["status_counts"].get(s) for s in OPEN_STATUSES)
    draw = st.fragment(progress_now, run_every=PROGRESS_REFRESH_S if still_open else None)
    draw(experiment["id"], drawn=experiment["status_counts"], **layout)


def progress_now(experiment_id: int, *, drawn: dict[str, int], **layout: Any) -> None:
    experiment = cached.experiment(experiment_id, **layout)
    counts = experiment["status_counts"]
    if counts != drawn:  # the matrix below is out of date
        st.rerun(scope="app")
    done, total = finished(counts), experiment["jobs"]
    st.progress(done / total if total else 0.0, text=f"{done} of {total} jobs finished")
    statuses = cached.job_options()["status"]
    for column, status in zip(st.columns(len(statuses)), statuses, strict=True):
        column.metric(status, counts.get(status, 0))


def cancel_control(experiment: dict[str, Any]) -> None:
    """Cancel for the owner or an admin while jobs are open; whom to ask for anyone else."""
    open_jobs = sum(experiment["status_counts"].get(s, 0) for s in OPEN_STATUSES)
    if experiment["cancelled_at"]:
        cancelled = datetime.fromisoformat(experiment["cancelled_at"])
        st.caption(f"Cancelled {cancelled:%Y-%m-%d %H:%M} UTC; the runs that had finished stay.")
        return
    if not open_jobs:
        return
    if not access.can_change(experiment):
        if experiment["owner"]:
            st.caption(f"Started by {experiment['owner']}: they or an admin can cancel it.")
        return
    if st.button(
        "Cancel experiment",
        key=f"experiments-cancel-{experiment['id']}",
        icon=":material/cancel:",
        help=f"Cancel its {open_jobs} queued or running jobs; finished runs stay.",
    ):
        try:
            cached.cancel_experiment(experiment["id"])
        except ApiError as err:
            st.warning(
                f"Experiment #{experiment['id']} was not cancelled: {describe_detail(err.detail)}"
            )
            return
        st.toast(f"Experiment #{experiment['id']} cancelled")
        st.rerun()


def layout_choices(experiment: dict[str, Any]) -> dict[str, Any]:
    """The metric, and the axes the matrix's rows and columns are laid out by."""
    labels = views.metric_labels()
    axes = list(experiment["axes"])
    metric_col, rows_col, cols_col = st.columns(3)
    metric = metric_col.selectbox(
        "Metric", list(labels), format_func=labels.get, key="experiments-metric"
    )
    rows = rows_col.selectbox("Rows", axes, key=f"experiments-{experiment['id']}-rows")
    others = [axis for axis in axes if axis != rows]
    cols = None
    if others:  # keyed by the rows: the choices differ
        cols = cols_col.selectbox(
            "Columns", others, key=f"experiments-{experiment['id']}-cols-{rows}"
        )
    return {"metric": metric, "rows": rows, "cols": cols}


def slice_title(table: dict[str, Any]) -> str:
    return cell_name(table["fixed"])


def matrix_tables(experiment: dict[str, Any], *, label: str) -> None:
    """One table per slice: a row per value of the rows' axis, a column per value of the
    columns' axis, each cell "mean [interval] (n)"."""
    matrix, cells = experiment["matrix"], experiment["cells"]
    rows, cols = matrix["rows"], matrix["cols"]
    columns = [value_label(cols, v) for v in matrix["col_values"]] if cols else [label]
    index = pd.Index(
        [value_label(rows, v) for v in matrix["row_values"]],
        name=f"{rows} \\ {cols}" if cols else rows,
    )
    for position, table in enumerate(matrix["slices"]):
        if table["fixed"]:
            st.markdown(f"**{slice_title(table)}**")
        frame = pd.DataFrame(
            [
                [cell_text(cells[i]) if i is not None else views.EMPTY for i in line]
                for line in table["cells"]
            ],
            index=index,
            columns=columns,
        )
        st.dataframe(frame, width="stretch", key=f"experiments-matrix-{position}")
    st.caption(
        f"{label} in AP points (%): mean [{views.interval_level()} interval] (n, the runs "
        "scored). The interval is over the seeds when n ≥ 2, over the val images (bootstrap) "
        f"for a single run; {views.EMPTY}: no run scored yet."
    )
    if any(cell["record_differs"] for cell in cells):
        st.caption(
            f"{RECORD_MARK} names the fields of the reproducibility record (library versions, "
            "annotation hashes, …) in which a run of that cell differs from the rest of the "
            "experiment: its numbers may not compare with the others. Each run's page shows "
            "its record."
        )


def heatmap(
    experiment: dict[str, Any], table: dict[str, Any], *, label: str, zrange: tuple[float, float]
) -> go.Figure:
    """One slice's means as colours, each cell's interval and n on hover."""
    matrix, cells = experiment["matrix"], experiment["cells"]
    rows, cols = matrix["rows"], matrix["cols"]
    x = [value_label(cols, v) for v in matrix["col_values"]] if cols else [label]
    y = [value_label(rows, v) for v in matrix["row_values"]]
    z = [
        [views.ap_points(cells[i]["mean"]) if i is not None else None for i in line]
        for line in table["cells"]
    ]
    hover = [
        [cell_hover(cells[i], label) if i is not None else "no such cell" for i in line]
        for line in table["cells"]
    ]
    figure = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            zmin=zrange[0],
            zmax=zrange[1],
            colorscale="Viridis",
            text=hover,
            texttemplate="%{z:.1f}",
            hovertemplate="%{text}<extra></extra>",
            colorbar={"title": {"text": f"{label} (%)"}},
        )
    )
    title = f"{label} (%) by {rows}" + (f" × {cols}" if cols else "")
    if table["fixed"]:
        title += f" · {slice_title(table)}"
    figure.update_layout(
        title=title,
        xaxis={"title": cols or "", "type": "category"},
        yaxis={"title": rows, "type": "category", "autorange": "reversed"},
        height=max(280, 140 + 44 * len(y)),
        margin={"t": 50, "b": 40},
    )
    return figure


def heatmaps(experiment: dict[str, Any], *, label: str) -> None:
    """A heatmap per slice, on one colour scale so that slices compare."""
    means = [views.ap_points(cell["mean"]) for cell in experiment["cells"]]
    known = [m for m in means if m is not None]
    if not known:
        st.info(f"No cell has a scored run yet: the heatmap of {label} shows once one has.")
        return
    slices = experiment["matrix"]["slices"]
    columns = st.columns(min(2, len(slices)))
    for position, table in enumerate(slices):
        columns[position % len(columns)].plotly_chart(
            heatmap(experiment, table, label=label, zrange=(min(known), max(known))),
            width="stretch",
            key=f"experiments-heatmap-{position}",
        )


def band_colour(colour: str) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(colour)
    return f"rgba({red}, {green}, {blue}, {BAND_OPACITY})"


def data_fraction_curve(experiment: dict[str, Any], *, label: str) -> go.Figure:
    """The metric against data fraction (log x), a line per combination of the other axes'
    values, each with its intervals as a band."""
    others = [axis for axis in experiment["axes"] if axis != DATA_FRACTION]
    lines: dict[str, list[dict[str, Any]]] = {}
    for cell in experiment["cells"]:
        name = cell_name({axis: cell["values"][axis] for axis in others}) or experiment["name"]
        lines.setdefault(name, []).append(cell)
    palette = plotly.colors.qualitative.Plotly
    figure = go.Figure()
    for position, (name, members) in enumerate(lines.items()):
        colour = palette[position % len(palette)]
        scored = sorted(
            (c for c in members if views.ap_points(c["mean"]) is not None),
            key=lambda c: c["values"][DATA_FRACTION],
        )
        banded = [c for c in scored if c["low"] is not None and c["high"] is not None]
        if banded:
            fractions = [c["values"][DATA_FRACTION] for c in banded]
            figure.add_trace(
                go.Scatter(
                    x=fractions + fractions[::-1],
                    y=[round(100 * c["high"], 2) for c in banded]
                    + [round(100 * c["low"], 2) for c in banded[::-1]],
                    mode="lines",
                    fill="toself",
                    fillcolor=band_colour(colour),
                    line={"width": 0},
                    hoverinfo="skip",
                    showlegend=False,
                    legendgroup=name,
                    name=f"{name} interval",
                )
            )
        figure.add_trace(
            go.Scatter(
                x=[c["values"][DATA_FRACTION] for c in scored],
                y=[views.ap_points(c["mean"]) for c in scored],
                mode="lines+markers",
                name=name,
                legendgroup=name,
                line={"color": colour},
                text=[cell_hover(c, label) for c in scored],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fractions = experiment["axes"][DATA_FRACTION]
    per = " × ".join(others) or "experiment"
    figure.update_layout(
        title=f"{label} vs data fraction, a line per {per} "
        f"({views.interval_level()} intervals as bands)",
        xaxis={
            "title": "data fraction (share of the train split, log scale)",
            "type": "log",
            "tickvals": fractions,
            "ticktext": [f"{100 * f:g}%" for f in fractions],
        },
        yaxis_title=f"{label} (%)",
        height=420,
        margin={"t": 50, "b": 40},
    )
    return figure


def cell_members(cell: dict[str, Any]) -> list[dict[str, Any]]:
    """The cell's jobs, read in one call when they form a replicate group."""
    found: dict[int, dict[str, Any]] = {}
    if cell["group_id"] is not None:
        group = cached.jobs(group=cell["group_id"], limit=len(cell["job_ids"]))["items"]
        found = {job["id"]: job for job in group}
    return [found.get(job_id) or cached.job(job_id) for job_id in cell["job_ids"]]


def cell_jobs(experiment: dict[str, Any]) -> None:
    """A cell, then a link to the run page of each of its jobs."""
    cells = experiment["cells"]
    chosen = st.selectbox(
        "Cell",
        range(len(cells)),
        format_func=lambda i: (
            f"{cell_name(cells[i]['values'])} · {status_text(cells[i]['status_counts'])}"
        ),
        key=f"experiments-{experiment['id']}-cell",
    )
    cell = cells[chosen]
    if not cell["job_ids"]:
        st.caption("This cell has no jobs.")
        return
    for job in cell_members(cell):
        st.page_link(
            "app_pages/run.py",
            label=views.job_label(job),
            icon=":material/monitoring:",
            query_params={"job": job["id"]},
        )


def report_downloads(experiment: dict[str, Any], *, metric: str, rows: str, cols: str | None):
    """The API's report of the experiment: Markdown (cells, the matrix as laid out here, the
    record) and CSV (one row per cell)."""
    name = f"experiment_{experiment['id']}_{metric}"
    markdown_col, csv_col = st.columns(2)
    markdown_col.download_button(
        "Report (Markdown)",
        cached.experiment_report(
            experiment["id"], format="md", metric=metric, rows=rows, cols=cols
        ),
        file_name=f"{name}.md",
        mime="text/markdown",
        icon=":material/download:",
        key="experiments-report-md",
    )
    csv_col.download_button(
        "Report (CSV)",
        cached.experiment_report(experiment["id"], format="csv", metric=metric),
        file_name=f"{name}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="experiments-report-csv",
    )


def experiment_view(summary: dict[str, Any]) -> None:
    st.header(f"#{summary['id']} {summary['name']}")
    st.caption(about(summary))
    progress_area = st.container()
    cancel_control(summary)
    layout = layout_choices(summary)
    experiment = cached.experiment(summary["id"], **layout)
    label = views.metric_labels()[layout["metric"]]
    with progress_area:
        grid_progress(experiment, **layout)

    st.subheader("Result matrix")
    matrix_tables(experiment, label=label)
    heatmaps(experiment, label=label)
    if DATA_FRACTION in experiment["axes"]:
        st.plotly_chart(
            data_fraction_curve(experiment, label=label),
            width="stretch",
            key="experiments-data-fraction",
        )

    st.subheader("Jobs of a cell")
    cell_jobs(experiment)

    st.subheader("Report")
    report_downloads(experiment, **layout)


# -- starting one ----------------------------------------------------------------------------


def start_form(datasets: dict[int, str]) -> dict[str, Any] | None:
    """A template's study on a dataset, its axes and base spec editable as JSON; returns the
    body to POST when it is submitted."""
    templates = {t["name"]: t for t in cached.experiment_templates()}
    chosen = st.selectbox(
        "Template",
        list(templates),
        format_func=lambda name: templates[name]["title"],
        key="experiments-template",
    )
    template = templates[chosen]
    st.caption(template["description"])
    with st.form("start-experiment"):
        dataset_col, name_col, repeats_col = st.columns([2, 2, 1])
        dataset_id = dataset_col.selectbox(
            "Dataset", list(datasets), format_func=datasets.get, key="experiments-start-dataset"
        )
        name = name_col.text_input("Name", value=chosen, key=f"experiments-start-name-{chosen}")
        repeats = repeats_col.number_input(
            "Seeds per cell",
            min_value=1,
            value=template["repeats"],
            step=1,
            key=f"experiments-start-repeats-{chosen}",
            help="Each cell is trained once per seed (a replicate group): its interval is then "
            "over the seeds.",
        )
        axes_col, base_col = st.columns(2)
        axes_text = axes_col.text_area(
            "Axes (JSON: a spec field -> its values; a cell per combination)",
            value=json.dumps(template["axes"], indent=2),
            height=260,
            key=f"experiments-start-axes-{chosen}",
        )
        base_text = base_col.text_area(
            "Base spec (JSON: what every cell shares)",
            value=json.dumps(template["base"], indent=2),
            height=260,
            key=f"experiments-start-base-{chosen}",
        )
        if not st.form_submit_button("Start experiment", type="primary"):
            return None
    try:
        axes, base = json.loads(axes_text), json.loads(base_text)
    except json.JSONDecodeError as exc:
        st.error(f"The axes or the base spec are not valid JSON: {exc}")
        return None
    if not isinstance(axes, dict) or not all(isinstance(v, list) for v in axes.values()):
        st.error('The axes must be a JSON object of lists, e.g. {"init": ["scratch", "imagenet"]}.')
        return None
    if not isinstance(base, dict):
        st.error('The base spec must be a JSON object, e.g. {"detector": "faster_rcnn"}.')
        return None
    return {
        "name": name.strip(),
        "base": {**base, "dataset_id": dataset_id},
        "axes": axes,
        "repeats": int(repeats),
        "template": chosen,
    }


def show_refusal(detail: Any) -> None:
    """The API's reasons, each refused cell named with its problem."""
    if not isinstance(detail, dict):
        st.error(f"The API refused this experiment:\n\n{describe_detail(detail)}")
        return
    lines = [str(detail.get("message", ""))]
    for problem in detail.get("problems") or []:
        if isinstance(problem, dict) and "cell" in problem:
            lines.append(f"- **{cell_name(problem['cell'])}**: {problem['problem']}")
        else:
            lines.append(f"- {problem}")
    st.error("The API refused this experiment:\n\n" + "\n".join(lines))


def start(body: dict[str, Any]) -> None:
    """POST the experiment; once queued it is the one shown below."""
    try:
        created = cached.submit_experiment(body)
    except ApiError as err:
        if err.status in (422, 429):
            show_refusal(err.detail)
        else:
            views.show_api_error(err, doing="start the experiment")
        return
    st.success(
        f"Experiment #{created['id']} {created['name']} started: {created['jobs']} jobs in "
        f"{len(created['cells'])} cells, queued. It is shown below."
    )
    st.query_params["experiment"] = str(created["id"])
    st.session_state.pop(PICK_KEY, None)  # the picker follows the query parameter


st.title("Experiments")
st.caption(
    "An experiment is a grid of jobs started as one request: a base spec, and axes (spec "
    "fields) that each take a few values; every combination is a cell, trained once per seed."
)

if not access.can_submit():
    st.info(
        f"You are signed in as a {cached.me()['role']}: starting experiments needs the member "
        "role; ask an admin."
    )
else:
    datasets = {d["id"]: d["name"] for d in cached.datasets()}
    if not datasets:
        st.info("Register a dataset (`POST /datasets`) before starting an experiment.")
    else:
        with st.expander("Start an experiment from a template", icon=":material/add:"):
            body = start_form(datasets)
        if body is not None:
            start(body)

page = st.session_state.get("experiments-page", 1)
listing = cached.experiments(limit=LIST_PAGE, offset=(page - 1) * LIST_PAGE)
st.subheader("All experiments")
if listing["items"]:
    experiment_list(listing["items"], listing["total"])
chosen_one = pick_experiment(listing["items"], metric=next(iter(views.metric_labels())))
if chosen_one is None:
    st.info("No experiment yet: a member or an admin starts one from a template.")
else:
    experiment_view(chosen_one)
