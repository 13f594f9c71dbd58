"""Replicate groups: runs of one spec with different seeds, scored on the same val images.

Two sources of doubt sit in a group's number. Seeds: another seed trains another model; the
spread between the group's runs measures it. Val images: another draw of val images scores the
same model differently; each run's bootstrap interval measures it. ``summarize_group`` reports
both and how much of a single run's variance each explains.

``compare_groups`` asks whether group B's mean beats group A's. It uses a two-level bootstrap,
not a test on the pooled predictions and not a t-test on the means:
- pooled predictions (every seed's boxes scored together) are not a detector anyone runs:
  AP of the union rewards redundancy and hides seed-to-seed spread;
- a t-test on the per-seed means ignores that both groups were scored on the same val images
  (the val-set noise they share cancels in the difference only when the test pairs them) and
  rests on normality with 2 to 5 seeds;
- each resample here draws the val images once for all runs of both groups (paired, as in
  ``bootstrap.paired_comparison``) and, within each group, as many seeds as it has, with
  replacement; the difference of the two groups' mean figures over those draws gives the
  interval and the p-value, by the same basic-bootstrap rules as a paired comparison. With one
  run per group it is that paired comparison.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

from backend.analysis.bootstrap import (
    Comparison,
    Difference,
    check_options,
    check_paired,
    difference_of,
    full_figures,
    resampled_figures,
)
from backend.analysis.engine import CocoMatches
from backend.analysis.tables import METRICS

__all__ = ["GROUP_METHOD", "GroupSummary", "compare_groups", "summarize_group"]

GROUP_METHOD = "two-level bootstrap: val images (paired) and seeds within each group"
# a basic 95% interval spans about 2 x 1.96 standard errors
_Z = 1.959963984540054


@dataclass(frozen=True)
class GroupSummary:
    """One figure over a group's runs (values 0..1)."""

    n: int
    mean: float | None
    std: float | None  # between seeds (n - 1 in the denominator); None for one run
    low: float | None  # t-interval of the mean over seeds
    high: float | None
    val_se: float | None  # mean standard error from the runs' val-image bootstrap intervals
    seed_share: float | None  # share of a single run's variance that comes from the seed


def summarize_group(
    values: Sequence[float | None],
    intervals: Sequence[tuple[float, float] | None],
    *,
    level: float = 0.95,
) -> GroupSummary:
    """Mean, spread and ``level`` t-interval over seeds of one figure, and its split into seed
    and val-image variance; ``intervals`` are each run's 95% bootstrap interval of that figure
    (or None)."""
    known = [v for v in values if v is not None]
    n = len(known)
    if not n:
        return GroupSummary(0, None, None, None, None, None, None)
    mean = float(np.mean(known))
    std = float(np.std(known, ddof=1)) if n > 1 else None
    low = high = None
    if std is not None:
        half = float(scipy_stats.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
        low, high = max(0.0, mean - half), min(1.0, mean + half)
    widths = [(hi - lo) / (2 * _Z) for lo, hi in filter(None, intervals)]
    val_se = float(np.sqrt(np.mean(np.square(widths)))) if widths else None
    share = None
    if std is not None and val_se is not None and std**2 + val_se**2 > 0:
        share = std**2 / (std**2 + val_se**2)
    return GroupSummary(n, mean, std, low, high, val_se, share)


def compare_groups(
    group_a: Sequence[CocoMatches],
    group_b: Sequence[CocoMatches],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> Comparison:
    """Mean of B's runs - mean of A's on every figure (per-class AP included), with basic
    bootstrap intervals and p-values over val images and seeds (module docstring)."""
    check_options(resamples, seed, level)
    if not group_a or not group_b:
        raise ValueError("each group needs at least one scored run")
    runs = [*group_a, *group_b]
    for other in runs[1:]:
        check_paired(runs[0], other)
    # every run on the same image draws: the seed fixes them, whichever run is resampled
    drawn = [resampled_figures(run, resamples=resamples, seed=seed) for run in runs]
    estimates = [full_figures(run) for run in runs]
    rng = np.random.default_rng(seed + 1)
    picks_a = rng.integers(0, len(group_a), size=(resamples, len(group_a)))
    picks_b = len(group_a) + rng.integers(0, len(group_b), size=(resamples, len(group_b)))
    rows = np.arange(resamples)[:, None]

    def mean_over(picks: np.ndarray, column: int, per_class: bool) -> np.ndarray:
        table = np.stack([d[1 if per_class else 0][:, column] for d in drawn], axis=1)
        return table[rows, picks].mean(axis=1)  # NaN where a drawn run lacks the figure

    def group_mean(members: range, value: list[float | None]) -> float | None:
        known = [value[i] for i in members]
        numbers = [v for v in known if v is not None]
        return float(np.mean(numbers)) if len(numbers) == len(known) else None

    members_a, members_b = range(len(group_a)), range(len(group_a), len(runs))
    metrics: dict[str, Difference] = {}
    for m in METRICS:
        value = [e[0][m.key] for e in estimates]
        metrics[m.key] = difference_of(
            group_mean(members_a, value),
            group_mean(members_b, value),
            mean_over(picks_a, m.stat, False),
            mean_over(picks_b, m.stat, False),
            level,
        )
    per_class: dict[int, Difference] = {}
    for k, cat in enumerate(runs[0].category_ids.tolist()):
        value = [e[1][cat] for e in estimates]
        per_class[cat] = difference_of(
            group_mean(members_a, value),
            group_mean(members_b, value),
            mean_over(picks_a, k, True),
            mean_over(picks_b, k, True),
            level,
        )
    return Comparison(
        metrics, per_class, resamples=resamples, seed=seed, level=level, method=GROUP_METHOD
    )
