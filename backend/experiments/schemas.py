"""Experiment API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from backend.users.schemas import OWNER

__all__ = [
    "Cell",
    "ExperimentCreate",
    "ExperimentDetail",
    "ExperimentPage",
    "ExperimentRead",
    "Matrix",
    "Template",
]


class ExperimentCreate(BaseModel):
    """A grid: the base spec, and for each axis (a field of the spec) the values it takes."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    base: dict[str, Any] = Field(
        description="a fine-tune or pretrain spec (POST /jobs's body) without the varied "
        "fields; kind defaults to finetune"
    )
    axes: dict[str, list[Any]] = Field(
        description='field -> values, e.g. {"init": ["scratch", "imagenet"], "data_fraction": '
        "[0.1, 1.0]}: one cell per combination",
        min_length=1,
    )
    repeats: int = Field(
        default=1, ge=1, le=20, description="fine-tunes: seeds per cell (a replicate group each)"
    )
    template: str | None = Field(default=None, max_length=100, description="what it came from")


class ExperimentRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    kind: str
    base_spec: dict[str, Any]
    axes: dict[str, list[Any]] = Field(
        validation_alias=AliasChoices("grid", "axes"),
        description="axis -> its values as the jobs' specs hold them, in the order given",
    )
    repeats: int
    template: str | None
    owner: str | None = OWNER
    created_at: datetime
    cancelled_at: datetime | None
    status_counts: dict[str, int] = Field(default_factory=dict, description="jobs by status")
    jobs: int = Field(default=0, description="jobs in the grid")


class ExperimentPage(BaseModel):
    items: list[ExperimentRead]
    total: int


class Cell(BaseModel):
    """One combination of axis values: its jobs and the metric over their finished runs."""

    values: dict[str, Any]
    label: str
    job_ids: list[int]
    group_id: int | None = Field(description="the replicate group of its jobs, when several")
    status_counts: dict[str, int]
    n: int = Field(description="finished runs with a score")
    mean: float | None
    low: float | None = Field(
        description="95% interval: a t-interval over seeds when n >= 2, the run's bootstrap "
        "interval over val images when n = 1"
    )
    high: float | None
    std: float | None = Field(description="between seeds (n >= 2)")
    interval: str | None = Field(description="'seeds' or 'val images': what the interval is over")
    record_differs: list[str] = Field(
        default_factory=list,
        description="record fields in which a run of this cell differs from the rest of the "
        "experiment (versions, annotation hashes, ...)",
    )


class Matrix(BaseModel):
    """The cells laid out: rows by one axis, columns by another, one table per combination of
    the other axes (`slices`); each entry an index into `cells` (null: no such cell)."""

    metric: str
    rows: str | None
    cols: str | None
    row_values: list[Any]
    col_values: list[Any]
    slices: list[dict[str, Any]] = Field(
        description="[{fixed: {axis: value}, cells: [[index | null]]}]"
    )


class ExperimentDetail(ExperimentRead):
    cells: list[Cell]
    matrix: Matrix


class Template(BaseModel):
    """A study to start from: fills the form, nothing runs until it is submitted."""

    name: str
    title: str
    description: str
    base: dict[str, Any]
    axes: dict[str, list[Any]]
    repeats: int
    needs: list[str] = Field(description="base fields the user must fill, e.g. dataset_id")
