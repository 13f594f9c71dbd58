"""An experiment's table as a researcher pastes it into a paper or a lab note: Markdown or
CSV, every cell with n, mean and interval, the axes, and what produced the numbers."""

from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any

from backend.experiments.models import Experiment
from backend.experiments.schemas import Cell, Matrix
from backend.jobs.records import COMPARED

__all__ = ["RECORD_SUMMARY", "csv_report", "markdown_report", "record_summary"]

# the record's fields a comparison expects to be equal: the ones worth a summary
RECORD_SUMMARY = COMPARED


def record_summary(records: list[dict[str, Any] | None]) -> dict[str, str]:
    """Per field, the value the runs share, or the values with their counts when they differ."""
    summary = {}
    for field in RECORD_SUMMARY:
        values = Counter(
            str(record.get(field)) for record in records if record and record.get(field) is not None
        )
        if not values:
            continue
        if len(values) == 1:
            summary[field] = next(iter(values))
        else:
            summary[field] = "DIFFERS: " + ", ".join(f"{v} ({n} runs)" for v, n in values.items())
    return summary


def _figure(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _with_interval(cell: Cell) -> str:
    if cell.mean is None:
        return "–"
    if cell.low is None or cell.high is None:
        return _figure(cell.mean)
    return f"{_figure(cell.mean)} [{_figure(cell.low)}, {_figure(cell.high)}]"


def _status(cell: Cell) -> str:
    return ", ".join(f"{n} {status}" for status, n in sorted(cell.status_counts.items()))


def markdown_report(
    experiment: Experiment,
    cells: list[Cell],
    matrix: Matrix,
    records: list[dict[str, Any] | None],
) -> str:
    """The report in Markdown: a header, one row per cell, the matrix, and the record."""
    axes = list(experiment.grid)
    metric = matrix.metric
    lines = [
        f"# {experiment.name}",
        "",
        f"Experiment {experiment.id}, {experiment.kind}, {len(cells)} cells x "
        f"{experiment.repeats} seeds. {metric} in %, mean and 95% interval: over seeds when "
        "n >= 2, over val images (bootstrap) for a single run.",
        "",
        "| " + " | ".join([*axes, "n", metric, "interval over", "jobs", "status", "record"]) + " |",
        "|" + "---|" * (len(axes) + 6),
    ]
    for cell in cells:
        values = [str(cell.values[axis]) for axis in axes]
        lines.append(
            "| "
            + " | ".join(
                [
                    *values,
                    str(cell.n),
                    _with_interval(cell),
                    cell.interval or "–",
                    " ".join(str(i) for i in cell.job_ids),
                    _status(cell),
                    ("differs: " + ", ".join(cell.record_differs)) if cell.record_differs else "",
                ]
            )
            + " |"
        )
    if matrix.cols:
        for table in matrix.slices:
            fixed = ", ".join(f"{k}={v}" for k, v in table["fixed"].items())
            lines += [
                "",
                f"## {metric}: {matrix.rows} x {matrix.cols}" + (f" ({fixed})" if fixed else ""),
            ]
            lines += [
                "",
                "| "
                + " | ".join([f"{matrix.rows} \\ {matrix.cols}", *map(str, matrix.col_values)])
                + " |",
                "|" + "---|" * (len(matrix.col_values) + 1),
            ]
            for row_value, line in zip(matrix.row_values, table["cells"], strict=True):
                shown = [_with_interval(cells[i]) if i is not None else "–" for i in line]
                lines.append("| " + " | ".join([str(row_value), *shown]) + " |")
    lines += ["", "## Record", ""]
    for field, value in record_summary(records).items():
        lines.append(f"- {field}: {value}")
    if not records or not any(records):
        lines.append("- no run has a record yet")
    return "\n".join(lines) + "\n"


def csv_report(experiment: Experiment, cells: list[Cell], metric: str) -> str:
    """The report as CSV: one row per cell, figures as fractions (0-1)."""
    out = io.StringIO()
    writer = csv.writer(out)
    axes = list(experiment.grid)
    writer.writerow(
        [
            *axes,
            "n",
            f"{metric}_mean",
            "low",
            "high",
            "std",
            "interval_over",
            "job_ids",
            "status",
            "record_differs",
        ]
    )
    for cell in cells:
        writer.writerow(
            [
                *(cell.values[axis] for axis in axes),
                cell.n,
                cell.mean,
                cell.low,
                cell.high,
                cell.std,
                cell.interval,
                " ".join(str(i) for i in cell.job_ids),
                _status(cell),
                " ".join(cell.record_differs),
            ]
        )
    return out.getvalue()
