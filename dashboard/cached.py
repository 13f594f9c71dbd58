"""Cached reads of the API, as the pages use them: one connection pool per API URL, and the
browser session's token on every call.

Each read is cached by (API URL, token, call, arguments), so pointing the dashboard at another
API never shows the first one's data, and one user's answers are never served to another
user's session. Failed calls are not cached: they raise `ApiError` again on the next run; a
refused token (401) signs the session out and reruns the app, which then shows the sign-in
form. Writes (submit, cancel, rescore) go straight to the client and clear the cached lists.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, TypeVar

import streamlit as st
from PIL import Image

from dashboard import session
from dashboard.client import DEFAULT_API_URL, ApiClient, ApiError

__all__ = [
    "Filters",
    "api_url",
    "as_filters",
    "cancel_experiment",
    "cancel_job",
    "client",
    "compare",
    "compare_groups",
    "compare_images",
    "config",
    "dataset",
    "datasets",
    "detections",
    "evaluation",
    "experiment",
    "experiment_report",
    "experiment_templates",
    "experiments",
    "finished_runs",
    "forget_lists",
    "group",
    "images",
    "import_run",
    "job",
    "job_options",
    "jobs",
    "leaderboard",
    "legend",
    "me",
    "metrics",
    "overlay",
    "overlay_tiles",
    "rescore",
    "submit_experiment",
    "submit_job",
    "versus_leader",
    "weights",
    "workers",
]

API_URL_ENV = "DETLAB_API_URL"
# Overlays are rendered by the API, one request each; this many are asked for at once.
OVERLAY_FETCHES = 8
# The pages draw the colour legend beside the overlays, so the images carry none of their own
# (on small images it would cover much of the picture).
OVERLAY_LEGEND = "none"
# The API sizes box labels to the PNG's width, so a tile is asked for at about the width it is
# shown at (small images enlarged to it, large ones shrunk): its labels then read on screen.
# The enlarged view is at least ENLARGED_MIN_WIDTH wide.
TILE_WIDTH = 288
ENLARGED_MIN_WIDTH = 768
# An overlay's filters as the API takes them (error_type, category, gt_class,
# predicted_class), as sorted (name, value) pairs so that they can key a cache.
Filters = tuple[tuple[str, str], ...]
T = TypeVar("T")


def api_url() -> str:
    return os.environ.get(API_URL_ENV, "").strip().rstrip("/") or DEFAULT_API_URL


@st.cache_resource(show_spinner=False)
def _pool(base_url: str) -> ApiClient:
    """One set of connections per API URL, shared by every browser session."""
    return ApiClient(base_url)


def _client(base_url: str, token: str | None) -> ApiClient:
    return _pool(base_url).signed_in(token)


def client() -> ApiClient:
    """The client of the API this dashboard is pointed at, with this session's token."""
    return _client(api_url(), session.token())


def _checked(call: Callable[..., T], *args: Any) -> T:
    """call(*args); a refused token (401) signs the session out and reruns the app."""
    try:
        return call(*args)
    except ApiError as err:
        if err.status == 401:
            session.refuse(err)
            st.rerun()
        raise


def _read(cache: Callable[..., T], call: str, kwargs: dict[str, Any]) -> T:
    """The cached answer of the client's `call`, keyed by this session's API and token."""
    return _checked(cache, api_url(), session.token(), call, kwargs)


# Freshness: live progress (1 s), lists that change as jobs finish (15 s), and results of
# finished jobs or the API's own vocabulary (options, legend), which do not change (10 min).
@st.cache_data(ttl=1, show_spinner=False, max_entries=200)
def _live(base_url: str, token: str | None, call: str, kwargs: dict[str, Any]) -> Any:
    return getattr(_client(base_url, token), call)(**kwargs)


@st.cache_data(ttl=15, show_spinner=False, max_entries=200)
def _recent(base_url: str, token: str | None, call: str, kwargs: dict[str, Any]) -> Any:
    return getattr(_client(base_url, token), call)(**kwargs)


@st.cache_data(ttl=600, show_spinner=False, max_entries=1000)
def _lasting(base_url: str, token: str | None, call: str, kwargs: dict[str, Any]) -> Any:
    return getattr(_client(base_url, token), call)(**kwargs)


def me() -> dict[str, Any]:
    """The signed-in user: name and role (viewer, member or admin); a role change shows within
    the cache's 15 s."""
    return _read(_recent, "me", {})


def check_token(token: str) -> dict[str, Any]:
    """The user a token belongs to, asked uncached; `ApiError` (401) when it is refused."""
    return _client(api_url(), token).me()


def datasets() -> list[dict[str, Any]]:
    return _read(_recent, "datasets", {})


def dataset(dataset_id: int) -> dict[str, Any]:
    return _read(_recent, "dataset", {"dataset_id": dataset_id})


def job_options() -> dict[str, Any]:
    """What a job may be: kinds, statuses, detectors, ... and the spec's defaults."""
    return _read(_lasting, "job_options", {})


def legend() -> dict[str, Any]:
    """The analysis' vocabulary: outcomes and their colours, metric labels, default thresholds."""
    return _read(_lasting, "legend", {})


def weights() -> list[dict[str, Any]]:
    return _read(_recent, "weights", {})


def workers(*, include_stopped: bool = False) -> dict[str, Any]:
    """The fleet: heartbeats and the jobs on each GPU change by the second."""
    return _read(_live, "workers", {"include_stopped": include_stopped})


def jobs(*, live: bool = False, **params: Any) -> dict[str, Any]:
    read = _live if live else _recent
    return _read(read, "jobs", params)


def job(job_id: int, *, live: bool = False) -> dict[str, Any]:
    read = _live if live else _recent
    return _read(read, "job", {"job_id": job_id})


def experiment_templates() -> list[dict[str, Any]]:
    """The studies to start from; their inits follow the registered weights."""
    return _read(_recent, "experiment_templates", {})


def experiments(**params: Any) -> dict[str, Any]:
    return _read(_recent, "experiments", params)


def experiment(
    experiment_id: int, *, metric: str, rows: str | None = None, cols: str | None = None
) -> dict[str, Any]:
    """An experiment's progress, cells and matrix; it changes as its jobs finish."""
    params = {"experiment_id": experiment_id, "metric": metric, "rows": rows, "cols": cols}
    return _read(_recent, "experiment", params)


def experiment_report(experiment_id: int, *, format: str, **params: Any) -> str:
    return _read(
        _recent, "experiment_report", {"experiment_id": experiment_id, "format": format, **params}
    )


def metrics(job_id: int, *, finished: bool, max_points: int = 1000) -> list[dict[str, Any]]:
    read = _lasting if finished else _live
    return _read(read, "metrics", {"job_id": job_id, "max_points": max_points})


def config(job_id: int) -> str:
    return _read(_lasting, "config", {"job_id": job_id})


def leaderboard(**params: Any) -> dict[str, Any]:
    return _read(_recent, "leaderboard", params)


def finished_runs(dataset_id: int) -> int:
    """How many fine-tune runs on a dataset have finished (the leaderboard's rows)."""
    return int(_read(_recent, "leaderboard", {"dataset": dataset_id, "limit": 1})["total"])


def versus_leader(*, dataset: int, metric: str, ranking: tuple[int, ...]) -> dict[int, Any]:
    """Job id -> `vs_leader` of the leaderboard's best rows (at most 50), each tested against
    the top row; `ranking` is their job ids, best first, as the leaderboard lists them.

    The tests resample every run's val images (about a second a row on 5,000 images), so they
    are kept as long as finished results are, for as long as the ranking they were made on
    holds: another ranking is another cache entry.
    """
    return _checked(_versus_leader, api_url(), session.token(), dataset, metric, ranking)


@st.cache_data(ttl=600, show_spinner=False, max_entries=50)
def _versus_leader(
    base_url: str, token: str | None, dataset: int, metric: str, ranking: tuple[int, ...]
) -> dict[int, Any]:
    board = _client(base_url, token).leaderboard(
        dataset=dataset, metric=metric, limit=len(ranking), significance=True
    )
    return {row["job_id"]: row["vs_leader"] for row in board["items"]}


def evaluation(job_id: int) -> dict[str, Any]:
    return _read(_lasting, "evaluation", {"job_id": job_id})


def compare(job_a: int, job_b: int, *, metric: str = "bbox_mAP") -> dict[str, Any]:
    """B - A with intervals and p-values (paired bootstrap; seconds on big val splits)."""
    return _read(_lasting, "compare", {"job_a": job_a, "job_b": job_b, "metric": metric})


def group(group_id: int) -> dict[str, Any]:
    """A replicate group's runs and figures over its seeds; it changes as its runs finish."""
    return _read(_recent, "group", {"group_id": group_id})


def compare_groups(
    group_a: int, group_b: int, *, scored: tuple[tuple[int, ...], tuple[int, ...]]
) -> dict[str, Any]:
    """Mean of B's runs - mean of A's (a two-level bootstrap: seconds on big val splits).

    `scored` is the ids of each group's scored runs: the answer is kept as long as finished
    results are, until another run of either group is scored (another cache entry)."""
    return _checked(_compare_groups, api_url(), session.token(), group_a, group_b, scored)


@st.cache_data(ttl=600, show_spinner=False, max_entries=50)
def _compare_groups(
    base_url: str,
    token: str | None,
    group_a: int,
    group_b: int,
    scored: tuple[tuple[int, ...], tuple[int, ...]],
) -> dict[str, Any]:
    return _client(base_url, token).compare_groups(group_a, group_b)


def images(job_id: int, **params: Any) -> dict[str, Any]:
    return _read(_lasting, "images", {"job_id": job_id, **params})


def as_filters(**chosen: str | None) -> Filters:
    """The filters that are set, as a cache key."""
    return tuple(sorted((name, value) for name, value in chosen.items() if value is not None))


def detections(
    job_id: int, image_id: int, *, score_thr: float, show: str, filters: Filters = ()
) -> dict[str, Any]:
    """The boxes the overlay with the same arguments draws."""
    params = {"job_id": job_id, "image_id": image_id, "score_thr": score_thr, "show": show}
    return _read(_lasting, "detections", {**params, **dict(filters)})


@st.cache_data(ttl=600, show_spinner=False, max_entries=20)
def _overlay(
    base_url: str,
    token: str | None,
    job_id: int,
    image_id: int,
    score_thr: float,
    show: str,
    filters: Filters,
) -> bytes:
    return _client(base_url, token).overlay(
        job_id,
        image_id,
        score_thr=score_thr,
        show=show,
        min_width=ENLARGED_MIN_WIDTH,
        legend=OVERLAY_LEGEND,
        **dict(filters),
    )


def overlay(
    job_id: int, image_id: int, *, score_thr: float, show: str, filters: Filters = ()
) -> bytes:
    """One overlay PNG at full size (small images enlarged)."""
    return _checked(
        _overlay, api_url(), session.token(), job_id, image_id, score_thr, show, filters
    )


# A grid shows overlays a few hundred pixels wide, so each is asked for at that width and kept
# as a JPEG tile (a full-size PNG of a 1333x800 photo is ~2 MB, its tile ~30 kB).
@st.cache_data(ttl=600, show_spinner=False, max_entries=2000)
def _tile(
    base_url: str,
    token: str | None,
    job_id: int,
    image_id: int,
    score_thr: float,
    show: str,
    width: int,
    filters: Filters,
) -> bytes:
    png = _client(base_url, token).overlay(
        job_id,
        image_id,
        score_thr=score_thr,
        show=show,
        max_width=width,
        min_width=width,
        legend=OVERLAY_LEGEND,
        **dict(filters),
    )
    return shrink(png, width=width)


def overlay_tiles(
    pairs: list[tuple[int, int]],
    *,
    score_thr: float,
    show: str,
    width: int = TILE_WIDTH,
    filters: Filters = (),
) -> Iterator[tuple[int, bytes]]:
    """(position, JPEG tile `width` px wide) of (job id, image id) pairs, each as soon as it
    is ready; the API renders them concurrently."""
    # read here: the pool's threads do not see the browser session
    base_url, token = api_url(), session.token()
    if not pairs:
        return
    with ThreadPoolExecutor(max_workers=min(OVERLAY_FETCHES, len(pairs))) as pool:
        futures = {
            pool.submit(
                _tile, base_url, token, job_id, image_id, score_thr, show, width, filters
            ): position
            for position, (job_id, image_id) in enumerate(pairs)
        }
        for future in as_completed(futures):
            yield futures[future], _checked(future.result)


def shrink(png: bytes, *, width: int) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
    if rgb.width > width:
        rgb = rgb.resize((width, round(rgb.height * width / rgb.width)), Image.Resampling.BOX)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=88)
    return out.getvalue()


def compare_images(job_a: int, job_b: int, **params: Any) -> dict[str, Any]:
    return _read(_lasting, "compare_images", {"job_a": job_a, "job_b": job_b, **params})


def submit_job(spec: dict[str, Any]) -> dict[str, Any]:
    created = _checked(client().submit_job, spec)
    forget_lists()
    return created


def import_run(**upload: Any) -> dict[str, Any]:
    imported = _checked(lambda: client().import_run(**upload))
    forget_lists()
    return imported


def cancel_job(job_id: int) -> dict[str, Any]:
    cancelled = _checked(client().cancel_job, job_id)
    forget_lists()
    return cancelled


def rerun_job(job_id: int) -> dict[str, Any]:
    queued = _checked(client().rerun_job, job_id)
    forget_lists()
    return queued


def reproduction(job_id: int) -> dict[str, Any]:
    """Whether a re-run reproduced its original; it changes as the re-run trains."""
    return _read(_recent, "reproduction", {"job_id": job_id})


def submit_experiment(body: dict[str, Any]) -> dict[str, Any]:
    created = _checked(client().submit_experiment, body)
    forget_lists()
    return created


def cancel_experiment(experiment_id: int) -> dict[str, Any]:
    cancelled = _checked(client().cancel_experiment, experiment_id)
    forget_lists()
    return cancelled


def rescore(job_id: int) -> dict[str, Any]:
    """Score a finished job's predictions again (metrics, record, intervals, analysis)."""
    scored = _checked(client().rescore, job_id)
    # every session's copy of the evaluation, not only this token's: the entries are keyed by
    # token, and results of finished jobs are otherwise kept for 10 minutes
    _lasting.clear()
    _versus_leader.clear()
    _compare_groups.clear()
    forget_lists()
    return scored


def forget_lists() -> None:
    """Drop cached job lists and progress, after a write or when a job finished."""
    _live.clear()
    _recent.clear()
