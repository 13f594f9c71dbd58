"""Run detail: one job's reproducibility record (versions, hardware, hashes of its data and
config), training curves, final metrics and per-class AP with their intervals and how they were
scored, its replicate group (the other seeds' runs, mean, spread and where the spread comes
from), error breakdown, confusion matrix, and downloads of its mmdet config, evaluation and
predictions.

The job comes from the `job` query parameter (`run?job=12`); a running job's part of the
page refreshes on its own.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard import access, cached, views
from dashboard.client import ApiError, describe_detail

ACTIVE = ("queued", "running")
# The largest confusions linked straight under the matrix (any cell can be picked below them).
CELL_LINKS = 4
# The API's interval of a group's mean over its seeds is a 95% t-interval (its `method` says so).
GROUP_LEVEL = "95%"
# sha256 values (and the git commit) in the reproducibility record's table: their first characters
HASH_CHARS = 12


def line_figure(
    series: list[dict[str, Any]],
    *,
    title: str,
    x_title: str,
    y_title: str,
    by_epoch: bool = False,
    scale: float = 1.0,
) -> go.Figure:
    figure = go.Figure()
    for line in series:
        x = line["epochs"] if by_epoch else line["steps"]
        points = [(a, scale * v) for a, v in zip(x, line["values"], strict=True) if v >= 0]
        figure.add_trace(
            go.Scatter(
                x=[a for a, _ in points],
                y=[v for _, v in points],
                name=line["key"].split("/")[-1],
                mode="lines+markers" if len(points) < 30 else "lines",
            )
        )
    figure.update_layout(
        title=title,
        xaxis_title=x_title,
        yaxis_title=y_title,
        height=360,
        # the legend between the title and the plot: under it, it would sit on the axis title
        margin={"t": 80, "b": 40},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
    )
    return figure


def training_curves(job: dict[str, Any]) -> None:
    """Loss components and lr over iterations, validation AP over epochs."""
    finished = job["status"] not in ACTIVE
    series = cached.metrics(job["id"], finished=finished)
    if not series:
        st.caption("No metric reported yet; the worker writes them as it trains.")
        return
    losses = [s for s in series if s["key"].startswith("train/loss")]
    lr = [s for s in series if s["key"] == "train/lr"]
    val = [s for s in series if s["key"].startswith("val/bbox_mAP")]
    loss_col, lr_col = st.columns(2)
    if losses:
        loss_col.plotly_chart(
            line_figure(losses, title="Losses", x_title="iteration", y_title="loss"),
            width="stretch",
        )
    if lr:
        lr_col.plotly_chart(
            line_figure(lr, title="Learning rate", x_title="iteration", y_title="lr"),
            width="stretch",
        )
    if val:
        by_epoch = all(e is not None for s in val for e in s["epochs"])
        st.plotly_chart(
            line_figure(
                val,
                title="Validation AP",
                by_epoch=by_epoch,
                scale=100,
                x_title="epoch" if by_epoch else "iteration",
                y_title="AP (points)",
            ),
            width="stretch",
        )
    if any(s["downsampled"] for s in series):
        st.caption("Long series are averaged down to 1,000 points.")


def progress_section(job_id: int) -> None:
    """Status, progress and curves; reruns every 5 s while the job is queued or running."""
    try:
        job = cached.job(job_id, live=True)
        show_progress(job)
    except ApiError as err:  # a fragment's rerun is not under app.py's error handling
        views.show_api_error(err, doing=f"refresh job #{job_id}")
        return
    if job["status"] not in ACTIVE and st.session_state.get("run-was-active") == job_id:
        st.session_state.pop("run-was-active")
        st.rerun(scope="app")  # it just finished: show its evaluation


def show_progress(job: dict[str, Any]) -> None:
    if job["status"] == "running" and job["progress_total"]:
        eta = views.format_duration(job["eta_seconds"])
        st.progress(
            job["progress"] or 0.0,
            text=f"iteration {job['progress_iter']:,} / {job['progress_total']:,} · ETA {eta}",
        )
    elif job["status"] == "queued":
        st.info("Queued: waiting for a worker.")
    training_curves(job)


def final_metrics(evaluation: dict[str, Any]) -> None:
    """Each COCO figure, its interval under it: the box figures, then a mask model's mask
    figures in a row of their own."""
    labels = views.scored_metric_labels([evaluation])
    intervals = (evaluation["intervals"] or {}).get("metrics", {})
    level = views.interval_level()
    for prefix in ("bbox_", "segm_"):
        row = {key: label for key, label in labels.items() if key.startswith(prefix)}
        if not row:
            continue
        for column, (metric, label) in zip(st.columns(len(row)), row.items(), strict=True):
            column.metric(label, views.format_ap(evaluation[metric]))
            interval = intervals.get(metric) or {}
            bounds = views.format_interval(interval.get("low"), interval.get("high"))
            if bounds and views.ap_points(evaluation[metric]) is not None:
                column.caption(f"{level} CI {bounds}")


def scoring_record(job: dict[str, Any], evaluation: dict[str, Any]) -> None:
    """One line on what produced the figures (engine, predictions, the bootstrap's draws), and
    a way to compute the intervals where the evaluation has none (for its owner or an admin)."""
    job_id = job["id"]
    record, intervals = evaluation["record"], evaluation["intervals"]
    parts = []
    if record:
        parts += [
            f"scored by {record['engine']}",
            f"{record['predictions']:,} predictions ({record['degenerate_predictions']:,} "
            "zero-size)",
            f"predictions sha256 `{record['predictions_sha256'][:12]}`",
        ]
    if intervals:
        parts.append(
            f"intervals: {intervals['resamples']:,} resamples, seed {intervals['seed']} "
            f"({intervals['method']})"
        )
    if parts:
        st.caption(" · ".join(parts))
    if record and intervals:
        return
    missing = " and ".join(
        what
        for what, kept in (("its scoring record", record), ("intervals", intervals))
        if not kept
    )
    stored_before = f"This evaluation was stored before {missing} were kept."
    if not access.can_change(job):
        st.info(
            f"{stored_before} Scoring the predictions again (`POST /jobs/{job_id}/analysis`, "
            "for the job's owner or an admin) computes them."
        )
        return
    note, button = st.columns([4, 1], vertical_alignment="center")
    note.info(
        f"{stored_before} Scoring the predictions again (`POST /jobs/{job_id}/analysis`) "
        "computes them."
    )
    if button.button("Score again", icon=":material/refresh:", key="run-rescore"):
        try:
            with st.spinner("Scoring the predictions again…"):
                cached.rescore(job_id)
        except ApiError as err:
            views.show_api_error(err, doing=f"score job #{job_id} again")
            return
        st.rerun()


def per_class_ap(evaluation: dict[str, Any]) -> None:
    """A bar per class at its AP, whiskers to its interval's bounds where known."""
    points = {name: views.ap_points(ap) for name, ap in evaluation["per_class_ap"].items()}
    scored = sorted(((ap, name) for name, ap in points.items() if ap is not None))
    if not scored:
        st.caption("No class has an AP (the val split has no boxes of any class).")
        return
    intervals = (evaluation["intervals"] or {}).get("per_class", {})
    bounds = [intervals.get(name) or {} for _, name in scored]
    figure = go.Figure(
        go.Bar(
            x=[ap for ap, _ in scored],
            y=[name for _, name in scored],
            orientation="h",
            text=[f"{ap:.1f}" for ap, _ in scored],
            error_x=views.interval_whiskers(
                [ap for ap, _ in scored],
                [None if b.get("low") is None else 100 * b["low"] for b in bounds],
                [None if b.get("high") is None else 100 * b["high"] for b in bounds],
            ),
        )
    )
    figure.update_layout(
        title=f"AP per class ({views.interval_level()} intervals)" if intervals else "AP per class",
        xaxis_title="AP (points)",
        height=max(260, 60 + 24 * len(scored)),
        margin={"t": 50, "b": 40},
    )
    st.plotly_chart(figure, width="stretch")
    unscored = [name for name, ap in points.items() if ap is None]
    if unscored:
        st.caption(f"No AP (no ground truth in val): {', '.join(sorted(unscored))}")


def replicates_sentence(summary: dict[str, Any], *, label: str, runs: int) -> str:
    """One figure of a replicate group in words: its mean ± std and interval over the seeds,
    and how much of one run's variance comes from the seed and from the val images."""
    scored = summary["n"]
    if scored == 0:
        return f"None of the group's {runs} runs is scored yet (queued, running or not succeeded)."
    mean = views.ap_points(summary["mean"])
    if mean is None:
        return f"{label} is undefined on this val split (it has no objects of that kind)."
    if scored == 1:
        return (
            f"One of the group's {runs} runs is scored so far: {label} {mean:.1f}; the spread "
            "over seeds needs two."
        )
    text = (
        f"Over {scored} seeds, {label} is {mean:.1f} ± {100 * summary['std']:.1f} "
        f"({GROUP_LEVEL} CI {100 * summary['low']:.1f} to {100 * summary['high']:.1f})"
    )
    share = summary["seed_share"]
    if share is None:
        text += (
            "; how much of that spread comes from the seed needs the runs' intervals over the "
            "val images (their run pages compute them)."
        )
    else:
        from_seed = round(100 * share)
        text += (
            f"; {from_seed}% of one run's variance comes from the seed, {100 - from_seed}% from "
            "the choice of val images."
        )
    if scored < runs:
        text += (
            f" ({runs - scored} of its {runs} runs not scored: queued, running or not succeeded.)"
        )
    return text


def group_figures(metrics: dict[str, dict[str, Any]], labels: dict[str, str]) -> pd.DataFrame:
    """One row per figure (under its label) of a group's `metrics` as the API gives them: n,
    mean, std, the interval over the seeds in points and the seed's share in percent."""
    rows = {}
    for key, label in labels.items():
        found = metrics[key]
        defined = views.ap_points(found["mean"]) is not None  # -1: no such objects in val

        def points(value: float | None, *, defined: bool = defined) -> float | None:
            return round(100 * value, 1) if defined and value is not None else None

        share = found["seed_share"]
        rows[label] = {
            "n": found["n"],
            "mean": views.figure_cell(points(found["mean"])),
            "std": views.figure_cell(points(found["std"])),
            f"{GROUP_LEVEL} CI": (
                views.format_interval(found["low"], found["high"]) if defined else ""
            )
            or views.EMPTY,
            "from the seed": views.EMPTY
            if share is None or not defined
            else f"{round(100 * share)}%",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def replicates(job: dict[str, Any]) -> None:
    """The job's replicate group: each run (seed, status, figures, a link), then each figure's
    mean ± std and interval over the seeds, and the share of one run's variance from the seed."""
    group = cached.group(job["group_id"])
    runs = group["runs"]
    labels = views.scored_metric_labels(runs)
    first = next(iter(labels))
    st.markdown(replicates_sentence(group["metrics"][first], label=labels[first], runs=len(runs)))
    st.dataframe(
        pd.DataFrame(
            {
                "run": [f"run?job={run['job_id']}" for run in runs],
                "seed": [run["seed"] for run in runs],
                "status": [run["status"] for run in runs],
                **{
                    label: [views.format_ap(run[key]) for run in runs]
                    for key, label in labels.items()
                },
            }
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "run": st.column_config.LinkColumn("Run", display_text=r"job=(\d+)", width="small"),
        },
    )
    st.dataframe(
        group_figures(group["metrics"], labels),
        width="stretch",
        column_config={
            "from the seed": st.column_config.TextColumn(
                "from the seed", help="share of one run's variance due to the seed"
            ),
        },
    )
    st.caption(
        f"Replicate group #{group['group_id']}: one spec trained with seeds "
        f"{', '.join(str(run['seed']) for run in runs)}; figures in AP points over its scored "
        f"runs. std: the standard deviation between the seeds' runs; {GROUP_LEVEL} CI: the "
        "t-interval of the mean over the seeds; from the seed: the share of one run's variance "
        "that comes from the seed, the rest from the choice of val images (measured by each "
        f"run's bootstrap interval). The API's method: {group['method']}."
    )


def error_breakdown(job_id: int, analysis: dict[str, Any]) -> None:
    """dAP per error type (AP50 gained by fixing it) and how many of each there are, each
    type a link to its images in the explorer."""
    dap = sorted(analysis.get("dAP", {}).items(), key=lambda item: -item[1])
    counts = analysis.get("counts", {})
    colours = views.box_colours()
    left, right = st.columns([3, 2])
    figure = go.Figure(
        go.Bar(
            x=[kind for kind, _ in dap],
            y=[value for _, value in dap],
            marker_color=[f"rgb{colours.get(kind, (128, 128, 128))}" for kind, _ in dap],
            text=[f"{value:.2f}" for _, value in dap],
        )
    )
    figure.update_layout(
        title="dAP50 per error type (AP50 points gained by fixing it)",
        yaxis_title="dAP50",
        height=340,
        margin={"t": 50, "b": 40},
    )
    left.plotly_chart(figure, width="stretch")
    right.dataframe(
        pd.DataFrame({"outcome": list(counts), "count": list(counts.values())}),
        hide_index=True,
        width="stretch",
    )
    right.caption(f"Predictions with score ≥ {analysis.get('score_thr', '?')}.")
    kinds = [kind for kind in views.error_types() if counts.get(kind)]
    if kinds:
        st.caption("Open the images of an error type, most of it first:")
        for column, kind in zip(st.columns(len(kinds)), kinds, strict=True):
            column.page_link(
                "app_pages/explorer.py",
                label=f"{kind} ({counts[kind]:,})",
                icon=":material/image_search:",
                query_params={"job": str(job_id), "error_type": kind},
            )
    per_class = analysis.get("per_class")
    if per_class:
        with st.expander("Errors per class"):
            st.dataframe(pd.DataFrame(per_class).T.fillna(0).astype(int), width="stretch")


def confusion_cells(confusion: dict[str, Any]) -> list[tuple[str, str, int]]:
    """The non-empty cells (ground truth, predicted, count): the confusions first (off the
    diagonal), each part by falling count."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    cells = [
        (gt, predicted, matrix[row][col])
        for row, gt in enumerate(labels)
        for col, predicted in enumerate(labels)
        if matrix[row][col]
    ]
    return sorted(cells, key=lambda c: (c[0] == c[1], -c[2], c[0], c[1]))


def cell_text(gt: str, predicted: str, count: int) -> str:
    return f"{gt} → {predicted} ({count:,})"


def confusion_heatmap(job_id: int, confusion: dict[str, Any]) -> None:
    """The matrix as a heatmap, then links that open the images behind its cells."""
    labels, matrix = confusion["labels"], confusion["matrix"]
    figure = go.Figure(
        go.Heatmap(
            z=matrix,
            x=labels,
            y=labels,
            colorscale="Blues",
            texttemplate="%{z}",
            hovertemplate="ground truth %{y}<br>predicted %{x}<br>%{z}<extra></extra>",
        )
    )
    figure.update_layout(
        title=f"Confusion matrix (score ≥ {confusion.get('score_thr')}, "
        f"IoU ≥ {confusion.get('iou_thr')})",
        xaxis_title="predicted",
        yaxis_title="ground truth",
        yaxis_autorange="reversed",
        height=max(360, 120 + 40 * len(labels)),
        margin={"t": 50, "b": 40},
    )
    st.plotly_chart(figure, width="stretch")
    cells = confusion_cells(confusion)
    if not cells:
        return
    st.caption(
        "Open the images behind a cell (ground truth → predicted), the images with the most "
        "of it first:"
    )
    confusions = [c for c in cells if c[0] != c[1]][:CELL_LINKS]
    for column, (gt, predicted, count) in zip(st.columns(CELL_LINKS), confusions, strict=False):
        column.page_link(
            "app_pages/explorer.py",
            label=cell_text(gt, predicted, count),
            icon=":material/grid_on:",
            query_params={"job": str(job_id), "gt_class": gt, "predicted_class": predicted},
        )
    pick, link = st.columns([3, 2], vertical_alignment="bottom")
    gt, predicted, count = pick.selectbox(
        "Any cell", cells, format_func=lambda c: cell_text(*c), key="run-cell"
    )
    link.page_link(
        "app_pages/explorer.py",
        label=f"Open {gt} → {predicted} in the explorer",
        icon=":material/image_search:",
        query_params={"job": str(job_id), "gt_class": gt, "predicted_class": predicted},
    )


def downloads(job: dict[str, Any], evaluation: dict[str, Any] | None) -> None:
    config_col, evaluation_col, predictions_col = st.columns(3)
    try:
        config_col.download_button(
            "mmdet config",
            cached.config(job["id"]),
            file_name=f"job_{job['id']}_config.py",
            mime="text/x-python",
            icon=":material/download:",
        )
    except ApiError as err:
        if err.status != 404:
            raise
        config_col.caption(describe_detail(err.detail))
    if evaluation is not None:
        evaluation_col.download_button(
            "evaluation (JSON)",
            json.dumps(evaluation, indent=2),
            file_name=f"job_{job['id']}_evaluation.json",
            mime="application/json",
            icon=":material/download:",
        )
        predictions_col.download_button(
            "predictions (COCO results JSON)",
            functools.partial(cached.client().predictions, job["id"]),
            file_name=f"job_{job['id']}_predictions.bbox.json",
            mime="application/json",
            icon=":material/download:",
        )


def loaded_parts(report: dict[str, Any]) -> str:
    """What a whole detector's weights gave the model: each part's loaded share, and the
    layers left fresh (their shapes differ: the classes')."""
    parts = ", ".join(
        f"{part} {counts['loaded']}/{counts['of']}" for part, counts in report["parts"].items()
    )
    skipped = ", ".join(name.rsplit(".", 2)[-2] for name in report.get("skipped", []))
    return f"{parts}" + (f"; fresh (shape differs): {skipped}" if skipped else "")


def record_value(field: str, value: Any) -> str:
    """A record's value as the table shows it: a sha256 as its first HASH_CHARS characters,
    a whole detector's init as the share of each part it loaded, a missing value as the empty
    mark."""
    if value is None:
        return views.EMPTY
    if field == "init_loaded" and isinstance(value, dict) and "parts" in value:
        return loaded_parts(value).replace("|", "\\|")
    if field.endswith("sha256") or field == "git_commit":
        return f"`{str(value)[:HASH_CHARS]}`"
    # a "|" would end the table's cell
    return f"`{value}`".replace("|", "\\|") if isinstance(value, str) else str(value)


def reproducibility_record(job: dict[str, Any]) -> None:
    """What produced the run: code and library versions, hardware, and the sha256 of its data,
    init weights and config (shortened; the whole record, to copy, under the table)."""
    record = job.get("record")
    if not record:
        st.caption(
            "No record: a worker captures it when the job starts (not yet for a queued job), "
            "and an imported run's predictions were made elsewhere."
        )
        return
    lines = ["| field | value |", "| --- | --- |"]
    lines += [f"| {field} | {record_value(field, value)} |" for field, value in record.items()]
    st.markdown("\n".join(lines))
    st.caption(f"sha256 values shortened to their first {HASH_CHARS} characters; the whole record:")
    st.code(json.dumps(record, indent=2), language="json")


def rerun_section(job: dict[str, Any]) -> None:
    """A re-run says whether it reproduced its original; a finished run can be run again."""
    if job.get("rerun_of_id"):
        original = job["rerun_of_id"]
        st.page_link(
            "app_pages/run.py",
            label=f"A re-run of job #{original}: open the original",
            icon=":material/history:",
            query_params={"job": original},
        )
        try:
            checked = cached.reproduction(job["id"])
        except ApiError as err:
            views.show_api_error(err, doing=f"check whether job #{job['id']} reproduced")
            return
        shown = {True: st.success, False: st.warning}.get(checked["inside"], st.info)
        shown(checked["verdict"] + ".")
        if checked["config_same"] is False:
            st.warning("Its config differs from the original's (config_sha256).")
        differs = [f for f in checked["record_differs"] if f != "config_sha256"]
        if differs:
            st.caption("Its record differs from the original's in: " + ", ".join(differs))
    finished = job["status"] in ("succeeded", "failed", "cancelled")
    if finished and job["kind"] != "import" and access.can_change(job):
        if st.button("Run again (same spec and seed)", icon=":material/replay:", key="run-rerun"):
            try:
                again = cached.rerun_job(job["id"])
            except ApiError as err:
                views.show_api_error(err, doing=f"run job #{job['id']} again")
                return
            # shown next: the picker takes it before it is drawn again
            st.session_state["run-open-next"] = again["id"]
            st.rerun()


def read_evaluation(job: dict[str, Any]) -> dict[str, Any] | None:
    if job["status"] != "succeeded" or job["kind"] != "finetune":
        return None
    try:
        return cached.evaluation(job["id"])
    except ApiError as err:
        if err.status != 404:
            raise
        st.info(describe_detail(err.detail))
        return None


st.title("Run detail")
if "run-open-next" in st.session_state:  # a re-run just queued: open it
    opened = st.session_state.pop("run-open-next")
    st.session_state["run-job"] = opened
    st.query_params["job"] = str(opened)
job = views.pick_job(cached.jobs(limit=200)["items"], key="run-job")
if job is None:
    st.info("No job submitted yet. Submit one on the Jobs page.")
    st.stop()
job = cached.job(job["id"], live=job["status"] in ACTIVE)
spec = job["spec"]

st.header(views.job_label(job))
st.caption(
    f"{job['kind']} · status **{job['status']}** · dataset #{job['dataset_id']} · created "
    f"{job['created_at'][:19].replace('T', ' ')}"
    + (f" · owner {job['owner']}" if job.get("owner") else "")
    + (f" · worker {job['worker_host']}" if job["worker_host"] else "")
)
if job["error"]:
    (st.error if job["status"] == "failed" else st.warning)(job["error"])
with st.expander("Spec"):
    st.json(spec)
with st.expander("Reproducibility record"):
    reproducibility_record(job)
rerun_section(job)

if job["kind"] == "finetune":
    links = st.columns(3)
    links[0].page_link(
        "app_pages/explorer.py",
        label="Explore its predictions",
        icon=":material/image_search:",
        query_params={"job": job["id"]},
    )
    links[1].page_link(
        "app_pages/compare.py",
        label="Compare with other runs",
        icon=":material/compare:",
        query_params={"jobs": str(job["id"]), "dataset": str(job["dataset_id"])},
    )

active = job["status"] in ACTIVE
if active:
    st.session_state["run-was-active"] = job["id"]
st.subheader("Training")
st.fragment(progress_section, run_every=5 if active else None)(job["id"])

evaluation = read_evaluation(job)
if evaluation is not None:
    st.subheader("Final metrics (val)")
    final_metrics(evaluation)
    scoring_record(job, evaluation)
    per_class_ap(evaluation)
if job["group_id"] is not None:
    st.subheader("Replicates")
    replicates(job)
if evaluation is not None:
    st.subheader("Error breakdown")
    analysis = evaluation.get("analysis")
    if not analysis:
        st.info("The error analysis is not available yet for this run.")
    else:
        error_breakdown(job["id"], analysis)
        if analysis.get("confusion"):
            confusion_heatmap(job["id"], analysis["confusion"])
st.subheader("Downloads")
downloads(job, evaluation)
