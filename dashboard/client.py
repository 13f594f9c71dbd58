"""The DetLab REST API as plain Python calls: one httpx client, errors as `ApiError`.

Nothing here knows about Streamlit, so the client can be used from scripts and tests too.
Every call carries the client's bearer token; `signed_in` gives a client of another token over
the same connections (the dashboard keeps one pool and one token per browser session).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import httpx

__all__ = ["BOOTSTRAP_TIMEOUT", "DEFAULT_API_URL", "ApiClient", "ApiError", "describe_detail"]

DEFAULT_API_URL = "http://127.0.0.1:8000"
# Calls that resample the val images (paired bootstrap, scoring again) take seconds per run on
# a 5,000-image split, so they may take longer than the ordinary timeout.
BOOTSTRAP_TIMEOUT = 300.0


class ApiError(Exception):
    """A request that failed: the URL tried, the HTTP status (None: no answer) and why."""

    def __init__(
        self, *, url: str, message: str, status: int | None = None, detail: Any = None
    ) -> None:
        super().__init__(f"{message} ({url})")
        self.url = url
        self.message = message
        self.status = status
        self.detail = detail

    @property
    def unreachable(self) -> bool:
        return self.status is None


def describe_detail(detail: Any) -> str:
    """The API's error body as one readable text: FastAPI's list, or {message, problems}."""
    if isinstance(detail, list):
        lines = []
        for problem in detail:
            if not isinstance(problem, dict):
                lines.append(str(problem))
                continue
            where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
            message = str(problem.get("msg", problem)).removeprefix("Value error, ")
            lines.append(f"{where}: {message}" if where else message)
        return "\n".join(lines)
    if isinstance(detail, dict):
        text = str(detail.get("message", detail))
        problems = detail.get("problems") or []
        return "\n".join([text, *(f"- {describe_detail(p)}" for p in problems)])
    return str(detail)


class ApiClient:
    """Calls of the DetLab API; every failure is raised as `ApiError`."""

    def __init__(
        self,
        base_url: str = DEFAULT_API_URL,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        http: httpx.Client | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self._owns_http = http is None
        if http is None:
            limits = httpx.Limits(max_connections=32, max_keepalive_connections=16)
            http = httpx.Client(base_url=self.base_url, timeout=timeout, limits=limits)
        self._http = http

    def signed_in(self, token: str | None) -> ApiClient:
        """A client that sends `token` (None: no token), over this client's connections."""
        return ApiClient(self.base_url, token=token, http=self._http)

    def close(self) -> None:
        """Close the connections, unless they are another client's (see `signed_in`)."""
        if self._owns_http:
            self._http.close()

    # -- transport -------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        params = kwargs.get("params")
        if params is not None:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        url = str(self._http.build_request(method, path, params=kwargs.get("params")).url)
        if self.token:
            kwargs["headers"] = {
                **kwargs.get("headers", {}),
                "Authorization": f"Bearer {self.token}",
            }
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ApiError(url=url, message="the API did not answer in time") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiError(url=url, message=f"could not reach the API: {reason}") from None
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text or response.reason_phrase
        raise ApiError(
            url=url,
            status=response.status_code,
            detail=detail,
            message=f"HTTP {response.status_code}: {describe_detail(detail)}",
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- users -----------------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        """The user the token belongs to: id, name, role (viewer, member, admin), active."""
        return self._json("GET", "/users/me")

    # -- datasets --------------------------------------------------------------------------

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/datasets", params={"limit": 500})["items"]

    def dataset(self, dataset_id: int) -> dict[str, Any]:
        return self._json("GET", f"/datasets/{dataset_id}")

    # -- jobs ------------------------------------------------------------------------------

    def job_options(self) -> dict[str, Any]:
        return self._json("GET", "/jobs/options")

    def jobs(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        dataset: int | None = None,
        group: int | None = None,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of jobs; `owner` is a user's name, or "me" (the token's user)."""
        params = {
            "status": status,
            "kind": kind,
            "dataset": dataset,
            "group": group,
            "owner": owner,
            "limit": limit,
            "offset": offset,
        }
        return self._json("GET", "/jobs", params=params)

    def job(self, job_id: int) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}")

    def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._json("POST", "/jobs", json=spec)

    def import_run(
        self, *, dataset_id: int, name: str, source: dict[str, Any], filename: str, content: bytes
    ) -> dict[str, Any]:
        """Upload a COCO results file made elsewhere as a run (POST /runs/import)."""
        return self._json(
            "POST",
            "/runs/import",
            data={"dataset_id": str(dataset_id), "name": name, "source": json.dumps(source)},
            files={"file": (filename, content, "application/json")},
            timeout=600,  # scoring a big file takes a while
        )

    def cancel_job(self, job_id: int) -> dict[str, Any]:
        return self._json("POST", f"/jobs/{job_id}/cancel")

    def rerun_job(self, job_id: int) -> dict[str, Any]:
        """Queue the job again with the same spec and seed; the new job."""
        return self._json("POST", f"/jobs/{job_id}/rerun")

    def reproduction(self, job_id: int, *, metric: str = "bbox_mAP") -> dict[str, Any]:
        """For a re-run: its score against the original's interval, and what differs."""
        return self._json("GET", f"/jobs/{job_id}/reproduction", params={"metric": metric})

    def metrics(
        self, job_id: int, *, keys: Iterable[str] | None = None, max_points: int = 1000
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"max_points": max_points}
        if keys:
            params["key"] = list(keys)
        return self._json("GET", f"/jobs/{job_id}/metrics", params=params)["series"]

    def config(self, job_id: int) -> str:
        return self._request("GET", f"/jobs/{job_id}/config").text

    def predictions(self, job_id: int) -> bytes:
        return self._request("GET", f"/jobs/{job_id}/predictions").content

    # -- experiments -----------------------------------------------------------------------

    def experiment_templates(self) -> list[dict[str, Any]]:
        """Studies to start an experiment from: title, description, base spec (no dataset),
        axes, repeats and the base fields the user must fill (`needs`)."""
        return self._json("GET", "/experiments/templates")

    def experiments(self, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """A page of experiments, newest first, each with its jobs counted by status."""
        return self._json("GET", "/experiments", params={"limit": limit, "offset": offset})

    def experiment(
        self,
        experiment_id: int,
        *,
        metric: str = "bbox_mAP",
        rows: str | None = None,
        cols: str | None = None,
    ) -> dict[str, Any]:
        """An experiment with its cells (mean, interval and n of `metric`) and their layout as
        a matrix of `rows` x `cols` (None: the API's default axes)."""
        params = {"metric": metric, "rows": rows, "cols": cols}
        return self._json("GET", f"/experiments/{experiment_id}", params=params)

    def submit_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        """Queue a grid: {name, base, axes, repeats, template}; a 422 lists refused cells."""
        return self._json("POST", "/experiments", json=body)

    def cancel_experiment(self, experiment_id: int) -> dict[str, Any]:
        return self._json("POST", f"/experiments/{experiment_id}/cancel")

    def experiment_report(
        self,
        experiment_id: int,
        *,
        format: str = "md",
        metric: str = "bbox_mAP",
        rows: str | None = None,
        cols: str | None = None,
    ) -> str:
        """The experiment's table as Markdown (`md`) or CSV (`csv`)."""
        params = {"format": format, "metric": metric, "rows": rows, "cols": cols}
        return self._request("GET", f"/experiments/{experiment_id}/report", params=params).text

    # -- results ---------------------------------------------------------------------------

    def legend(self) -> dict[str, Any]:
        return self._json("GET", "/analysis/legend")

    def leaderboard(
        self,
        *,
        dataset: int | None = None,
        metric: str = "bbox_mAP",
        order: str = "desc",
        limit: int = 10_000,
        offset: int = 0,
        group: bool = False,
        significance: bool = False,
        **axes: str | None,
    ) -> dict[str, Any]:
        """Rows best first; with `group` one row per replicate group (means over its seeds,
        `replicates` giving n, mean and std); with `significance` (a dataset, at most 50 rows,
        not with `group`) each row says whether it is tied with the top row (`vs_leader`)."""
        params = {
            "dataset": dataset,
            "metric": metric,
            "order": order,
            "limit": limit,
            "offset": offset,
            "group": "true" if group else None,
            "significance": "true" if significance else None,
            **axes,
        }
        timeout = BOOTSTRAP_TIMEOUT if significance else self._http.timeout
        return self._json("GET", "/leaderboard", params=params, timeout=timeout)

    def evaluation(self, job_id: int) -> dict[str, Any]:
        return self._json("GET", f"/jobs/{job_id}/evaluation")

    def rescore(self, job_id: int) -> dict[str, Any]:
        """Score the job's stored predictions again: metrics, record, intervals and analysis."""
        return self._json("POST", f"/jobs/{job_id}/analysis", timeout=BOOTSTRAP_TIMEOUT)

    def compare(
        self,
        job_a: int,
        job_b: int,
        *,
        metric: str = "bbox_mAP",
        resamples: int | None = None,
        seed: int | None = None,
    ) -> dict[str, Any]:
        """B - A on every metric and per-class AP, with intervals, p-values and one sentence
        on `metric` (a paired bootstrap over the val images; None: the API's default)."""
        params = {"metric": metric, "resamples": resamples, "seed": seed}
        return self._json(
            "GET", f"/jobs/{job_a}/compare/{job_b}", params=params, timeout=BOOTSTRAP_TIMEOUT
        )

    def group(self, group_id: int) -> dict[str, Any]:
        """A replicate group's runs and, per metric, n, mean, std and 95% t-interval over its
        seeds, with the seed's share of one run's variance (`seed_share`)."""
        return self._json("GET", f"/groups/{group_id}")

    def compare_groups(
        self, group_a: int, group_b: int, *, metric: str = "bbox_mAP"
    ) -> dict[str, Any]:
        """Mean of B's runs - mean of A's, as `compare` answers, by a two-level bootstrap over
        the val images and the seeds."""
        return self._json(
            "GET",
            f"/groups/{group_a}/compare/{group_b}",
            params={"metric": metric},
            timeout=BOOTSTRAP_TIMEOUT,
        )

    def images(
        self,
        job_id: int,
        *,
        error_type: str | None = None,
        category: str | None = None,
        gt_class: str | None = None,
        predicted_class: str | None = None,
        sort: str = "worst",
        limit: int = 24,
        offset: int = 0,
    ) -> dict[str, Any]:
        """A page of the job's val images: with an error type and/or a class (`category`), or
        a confusion cell (`gt_class`, `predicted_class`), those that have some of it, each
        with how many (`selected`)."""
        params = {
            "error_type": error_type,
            "class": category,
            "gt_class": gt_class,
            "predicted_class": predicted_class,
            "sort": sort,
            "limit": limit,
            "offset": offset,
        }
        return self._json("GET", f"/jobs/{job_id}/images", params=params)

    def detections(
        self,
        job_id: int,
        image_id: int,
        *,
        score_thr: float | None = None,
        show: str | None = None,
        error_type: str | None = None,
        category: str | None = None,
        gt_class: str | None = None,
        predicted_class: str | None = None,
    ) -> dict[str, Any]:
        """One image's boxes; with an overlay's parameters, the boxes that overlay draws."""
        params = {
            "score_thr": score_thr,
            "show": show,
            "error_type": error_type,
            "class": category,
            "gt_class": gt_class,
            "predicted_class": predicted_class,
        }
        return self._json("GET", f"/jobs/{job_id}/images/{image_id}/detections", params=params)

    def overlay(
        self,
        job_id: int,
        image_id: int,
        *,
        score_thr: float | None = None,
        show: str | None = None,
        max_width: int | None = None,
        min_width: int | None = None,
        legend: str | None = None,
        masks: str | None = None,
        error_type: str | None = None,
        category: str | None = None,
        gt_class: str | None = None,
        predicted_class: str | None = None,
    ) -> bytes:
        """The overlay PNG; a setting left out (None) is the API's default. `max_width` /
        `min_width` ask the API to shrink larger images or enlarge smaller ones before
        drawing; `legend`: auto, inside, below or none; `masks`: "true" to fill the boxes'
        masks; the filters as `images` takes them."""
        params = {
            "score_thr": score_thr,
            "show": show,
            "max_width": max_width,
            "min_width": min_width,
            "legend": legend,
            "masks": masks,
            "error_type": error_type,
            "class": category,
            "gt_class": gt_class,
            "predicted_class": predicted_class,
        }
        return self._request(
            "GET", f"/jobs/{job_id}/images/{image_id}/overlay.png", params=params
        ).content

    def compare_images(
        self,
        job_a: int,
        job_b: int,
        *,
        by: str | None = None,
        better: str | None = None,
        limit: int = 12,
        offset: int = 0,
    ) -> dict[str, Any]:
        """The val images on which the two jobs differ in one per-image figure (`by`: errors,
        tp or an error type), where `better` (a or b) does better, or both; with the counts
        each way and the confusion cells that changed."""
        params = {"by": by, "better": better, "limit": limit, "offset": offset}
        return self._json("GET", f"/jobs/{job_a}/compare/{job_b}/images", params=params)

    def weights(self) -> list[dict[str, Any]]:
        return self._json("GET", "/weights", params={"limit": 500})["items"]

    # -- fleet -----------------------------------------------------------------------------

    def workers(self, *, include_stopped: bool = False) -> dict[str, Any]:
        """The workers by name: state (alive, stale, stopped), heartbeat age, GPUs (each with
        the job holding it, or null) and running jobs; stopped ones only if asked."""
        params = {"include_stopped": "true" if include_stopped else None}
        return self._json("GET", "/workers", params=params)
