"""Pieces of screen more than one page shows: API errors, job labels and pickers, AP figures,
the analysis' vocabulary as the API serves it (metric labels, outcome colours) and its legend."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import streamlit as st

from dashboard import cached
from dashboard.client import ApiError

__all__ = [
    "EMPTY",
    "ap_points",
    "box_colours",
    "busiest_dataset",
    "counting_score_thr",
    "default_score_thr",
    "error_types",
    "figure_cell",
    "format_ap",
    "format_duration",
    "format_interval",
    "format_p",
    "init_label",
    "interval_level",
    "interval_whiskers",
    "job_label",
    "metric_labels",
    "outcome_legend",
    "pick_dataset",
    "pick_job",
    "query_int",
    "show_api_error",
    "weights_names",
]

# What every table and figure shows where there is no value.
EMPTY = "–"


def metric_labels() -> dict[str, str]:
    """The COCO figures the pages show: key -> short label ("bbox_mAP" -> "mAP"), in order."""
    return {metric["key"]: metric["label"] for metric in cached.legend()["metrics"]}


def scored_metric_labels(rows: list[dict[str, Any]]) -> dict[str, str]:
    """The figures some rows show: the box ones always, the mask ones (segm_) where a row has
    them (a mask model's)."""
    return {
        key: label
        for key, label in metric_labels().items()
        if not key.startswith("segm_") or any(row.get(key) is not None for row in rows)
    }


def box_colours() -> dict[str, tuple[int, int, int]]:
    """The colour of each kind of box in the API's overlays: "gt", then the outcomes drawn."""
    legend = cached.legend()
    return {
        "gt": tuple(legend["gt_colour"]),
        **{o["name"]: tuple(o["colour"]) for o in legend["outcomes"] if o["colour"]},
    }


def error_types(*, side: str | None = None) -> list[str]:
    """The outcomes that are errors, of one side ("prediction", "ground_truth") or both."""
    return [
        o["name"] for o in cached.legend()["outcomes"] if o["error"] and side in (None, o["side"])
    ]


def show_groups() -> dict[str, tuple[str, list[str]]]:
    """What an overlay can be asked to draw: group name -> (label, the box kinds in it)."""
    return {g["name"]: (g["label"], g["members"]) for g in cached.legend()["show_groups"]}


def interval_level() -> str:
    """The level of the API's bootstrap intervals, as a label: "95%"."""
    return f"{100 * cached.legend()['defaults']['level']:g}%"


def default_score_thr() -> float:
    """The score from which the API draws predictions unless told otherwise."""
    return float(cached.legend()["defaults"]["draw_score_thr"])


def counting_score_thr() -> float:
    """The score from which the API's analysis counts predictions unless told otherwise."""
    return float(cached.legend()["defaults"]["count_score_thr"])


def show_api_error(err: ApiError, *, doing: str) -> None:
    """A plain statement of what failed, where, and why; never a traceback."""
    if err.unreachable:
        st.error(
            f"Could not {doing}: the DetLab API at `{cached.api_url()}` did not answer.\n\n"
            f"URL tried: `{err.url}`  \nReason: {err.message}\n\n"
            "Check that the API is running; the dashboard reads its address from "
            "`DETLAB_API_URL`."
        )
    else:
        st.error(
            f"Could not {doing}: the API answered with an error.\n\n"
            f"URL tried: `{err.url}`  \n{err.message}"
        )


def query_int(name: str) -> int | None:
    """An integer query parameter, or None when absent or not a number."""
    value = st.query_params.get(name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def weights_names() -> dict[int, str]:
    """Registered weights as "name (method)" by id, or the name alone where it says the method
    (a pretrain job's weights: "mocov2-resnet18-job3"), as the leaderboard labels them."""
    return {
        w["id"]: w["name"]
        if w["method"].lower() in w["name"].lower()
        else f"{w['name']} ({w['method']})"
        for w in cached.weights()
    }


def init_label(init: Any) -> str:
    """A spec's backbone init as the leaderboard labels it (registered weights by name)."""
    if isinstance(init, str):
        return init
    if isinstance(init, dict) and "weights_id" in init:
        return f"weights:{weights_names().get(init['weights_id'], init['weights_id'])}"
    if isinstance(init, dict) and "checkpoint" in init:
        return f"checkpoint:{str(init['checkpoint']).rsplit('/', 1)[-1]}"
    return str(init)


def job_label(job: dict[str, Any]) -> str:
    spec = job.get("spec") or {}
    parts = [f"#{job['id']}", job.get("name") or spec.get("kind", job.get("kind", ""))]
    if spec.get("backbone"):
        how = init_label(spec["init"]) if "init" in spec else spec.get("method") or spec["kind"]
        parts.append(f"{spec['backbone']} · {how}")
    if job.get("status"):
        parts.append(job["status"])
    return " · ".join(str(p) for p in parts if p)


def ap_points(value: float | None) -> float | None:
    """COCO AP (0..1, -1 when the split has no such objects) as points 0..100, or None."""
    if value is None or value < 0 or math.isnan(value):
        return None
    return round(100 * value, 1)


def format_ap(value: float | None) -> str:
    points = ap_points(value)
    return EMPTY if points is None else f"{points:.1f}"


def figure_cell(value: float | None, spec: str = ".1f") -> str:
    """A number as a table cell: formatted text, EMPTY where there is none (None or NaN).

    `st.dataframe` writes a missing number "None" whatever a Styler says, so the tables that
    may miss a figure show text cells, all with the same mark for "no value"."""
    if value is None or math.isnan(value):
        return EMPTY
    return format(value, spec)


def format_interval(low: float | None, high: float | None) -> str:
    """An interval of a figure (0..1) in points: "[36.9, 38.3]"; "" when a bound is unknown."""
    if low is None or high is None:
        return ""
    return f"[{100 * low:.1f}, {100 * high:.1f}]"


def format_p(p_value: float) -> str:
    """A p-value as the API's sentences write it: "p = 0.41", "p = 0.003", "p < 0.001"."""
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.2g}"


def interval_whiskers(
    values: Sequence[float], lows: Sequence[float | None], highs: Sequence[float | None]
) -> dict[str, Any]:
    """Plotly error bars from each value to its interval's bounds (all in points); none where
    a bound is unknown. A basic bootstrap interval need not contain its estimate: a whisker
    then has no length on that side rather than pointing the wrong way."""

    def reach(ends: Sequence[float | None], sign: int) -> list[float | None]:
        return [
            None if end is None or math.isnan(end) else max(0.0, round(sign * (end - value), 2))
            for value, end in zip(values, ends, strict=True)
        ]

    return {
        "type": "data",
        "symmetric": False,
        "array": reach(highs, 1),
        "arrayminus": reach(lows, -1),
    }


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return EMPTY
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def busiest_dataset(datasets: Sequence[dict[str, Any]]) -> int | None:
    """The id of the dataset with the most finished fine-tune runs (the first listed of those
    tied); None when there is no dataset."""
    if not datasets:
        return None
    runs = {d["id"]: cached.finished_runs(d["id"]) for d in datasets}
    return max(runs, key=lambda i: runs[i])  # max keeps the first of equals


def pick_dataset(
    datasets: Sequence[dict[str, Any]], *, key: str, preferred: int | None = None
) -> dict[str, Any] | None:
    """A dataset selectbox kept in the `dataset` query parameter, else on `preferred`; None
    when there is none."""
    if not datasets:
        st.info("No dataset is registered yet. Register one with `POST /datasets`.")
        return None
    by_id = {d["id"]: d for d in datasets}
    wanted = query_int("dataset")
    if wanted not in by_id:
        wanted = preferred
    ids = list(by_id)
    chosen = st.selectbox(
        "Dataset",
        ids,
        index=ids.index(wanted) if wanted in by_id else 0,
        format_func=lambda i: f"{by_id[i]['name']} (#{i})",
        key=key,
    )
    st.query_params["dataset"] = str(chosen)
    return by_id[chosen]


def pick_job(
    jobs: Sequence[dict[str, Any]], *, key: str, label: str = "Run"
) -> dict[str, Any] | None:
    """A job selectbox kept in the `job` query parameter; None when there is none to pick.

    A job named by the URL but not among `jobs` (e.g. an older one) is read and offered too.
    """
    by_id = {job["id"]: job for job in jobs}
    wanted = query_int("job")
    if wanted is not None and wanted not in by_id:
        try:
            by_id = {wanted: cached.job(wanted), **by_id}
        except ApiError as err:
            if err.status != 404:
                raise
            st.warning(f"Job #{wanted} does not exist; pick another one.")
    if not by_id:
        return None
    ids = list(by_id)
    chosen = st.selectbox(
        label,
        ids,
        index=ids.index(wanted) if wanted in by_id else 0,
        format_func=lambda i: job_label(by_id[i]),
        key=key,
    )
    st.query_params["job"] = str(chosen)
    return by_id[chosen]


def outcome_legend() -> None:
    """One line of swatches in the overlays' colours naming each kind of box; hovering one
    says what the outcome means."""
    descriptions = {o["name"]: o["description"] for o in cached.legend()["outcomes"]}
    swatches = " ".join(
        f"<span style='display:inline-block;margin-right:0.8em' "
        f"title='{html.escape(descriptions.get(name, 'a ground-truth box'), quote=True)}'>"
        f"<span style='display:inline-block;width:0.9em;height:0.9em;border:2px solid "
        f"rgb{colour};margin-right:0.3em;vertical-align:middle'></span>"
        f"{'ground truth' if name == 'gt' else name}</span>"
        for name, colour in box_colours().items()
    )
    st.markdown(swatches, unsafe_allow_html=True)
