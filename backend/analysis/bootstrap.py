"""How much a COCO figure would move on another draw of val images: bootstrap intervals for
one evaluation, and a paired bootstrap test between two runs on the same split.

A resample draws the val images with replacement (as many as there are); an image drawn n
times counts n times, which is ``engine.summarize`` with the draw counts as image weights, so
every figure is recomputed exactly as the engine computes it, without matching again
(``bootstrap_stats`` does it for many resamples at once). Draws come from
``numpy.random.default_rng(seed)``: the same seed, resample count and number of images give the
same resamples, whichever run is scored, so intervals of two runs on one split share them.

Intervals are basic (reverse-percentile) bootstrap intervals, [2 x - q_hi, 2 x - q_lo] for an
estimate x and resampled quantiles q, not the plain percentile interval [q_lo, q_hi]. AP reads
precision through an envelope (the best precision at any higher recall), a maximum over noisy
points, so AP on fewer or resampled images runs high: on our synthetic sets resampled AP sits
0.4 to 1.3 standard errors above the estimate, as the estimate sits above the AP of a much
larger pool. Percentile intervals add the two shifts: they held a 20,000-image pool's mAP in
56-81% of val sets of 500 images drawn from it (94% for 1,000-image sets of a milder
detector); the basic interval moves back by the resampled shift and held it in 91-96%
(tests/analysis/test_bootstrap.py checks this on every run).

A figure can be undefined in a resample where it is defined on the full split: a class, or an
area range, none of whose GT boxes were drawn. Its interval is taken over the resamples where it
is defined, and ``defined`` says how many those were (the interval given that the figure
exists, which is what a stored figure is). A figure undefined on the split has no interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.analysis.bootstrap_stats import plan_resampling, weighted_stats
from backend.analysis.engine import CocoMatches, summarize
from backend.analysis.tables import ALL_METRICS, METRICS

__all__ = [
    "METHOD",
    "PAIRED_METHOD",
    "Comparison",
    "Difference",
    "Interval",
    "Intervals",
    "bootstrap_intervals",
    "check_options",
    "check_paired",
    "difference_of",
    "full_figures",
    "resampled_figures",
    "describe_difference",
    "holm",
    "paired_comparison",
    "resample_counts",
]

METHOD = "basic bootstrap over images"
PAIRED_METHOD = "paired basic bootstrap over images"


@dataclass(frozen=True)
class Interval:
    """A figure (0..1) and its bootstrap interval; None where undefined."""

    estimate: float | None  # on all val images, as summarize gives it
    low: float | None
    high: float | None
    defined: int  # resamples in which the figure is defined


@dataclass(frozen=True)
class Difference:
    """Run B minus run A on one figure: the difference, its interval and a two-sided p-value."""

    estimate: float | None
    low: float | None
    high: float | None
    p_value: float | None
    defined: int  # resamples in which both figures are defined


@dataclass(frozen=True)
class Intervals:
    """Intervals of every tables.METRICS figure and of each class's AP (.50:.95, all areas)."""

    metrics: dict[str, Interval]  # by tables.METRICS key
    per_class: dict[int, Interval]  # by category id
    resamples: int
    seed: int
    level: float
    method: str = METHOD

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields as plain values, category ids as strings."""
        return _as_dict(self)


@dataclass(frozen=True)
class Comparison:
    """Paired differences (B - A) of every tables.METRICS figure and of each class's AP."""

    metrics: dict[str, Difference]
    per_class: dict[int, Difference]
    resamples: int
    seed: int
    level: float
    method: str = PAIRED_METHOD

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields as plain values, category ids as strings."""
        return _as_dict(self)


def bootstrap_intervals(
    matches: CocoMatches, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Intervals:
    """Basic bootstrap intervals at ``level`` of each metric and per-class AP.

    With q_lo and q_hi the (1 - level) / 2 and (1 + level) / 2 quantiles (linear interpolation)
    of the figure over the resamples where it is defined, ``low`` = 2 x estimate - q_hi and
    ``high`` = 2 x estimate - q_lo, kept within [0, 1].
    """
    check_options(resamples, seed, level)
    estimates = full_figures(matches)
    stats, per_class = resampled_figures(matches, resamples=resamples, seed=seed)
    metrics = {m.key: _interval(estimates[0][m.key], stats[:, m.stat], level) for m in METRICS}
    classes = {
        cat: _interval(estimates[1][cat], per_class[:, k], level)
        for k, cat in enumerate(matches.category_ids.tolist())
    }
    return Intervals(metrics, classes, resamples=resamples, seed=seed, level=level)


def paired_comparison(
    a: CocoMatches, b: CocoMatches, *, resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> Comparison:
    """B - A on every figure, both scored on the same resamples of their common val images.

    d is the observed difference, d* its value in each of the n resamples where both figures
    are defined. The interval is the basic one, [2d - q_hi, 2d - q_lo] (within [-1, 1]).
    The two-sided p-value of "no difference" is the bootstrap test centred at the observed
    difference: d* - d stands for the error d - (true difference), so under the null the
    chance of an error as large as d on either side is estimated by #{d* - d >= d} and
    #{d* - d <= d}, and
        p = min(1, 2 * min(1 + #{d* >= 2d}, 1 + #{d* <= 2d}) / (n + 1)).
    It is the test the interval makes: p < alpha exactly when 0 lies outside the (1 - alpha)
    interval, up to the +1 counts (ties count on both sides, which is conservative). The
    plain "share of d* beyond 0" test would rely on the resampled differences being centred
    on d, which the upward shift of resampled AP breaks. The +1 counts keep p >= 2 / (n + 1),
    as no smaller p-value can be told apart from 0 with n resamples. A run compared with
    itself has every d* = 0 = d, so difference 0 and p = 1.
    """
    check_options(resamples, seed, level)
    check_paired(a, b)
    estimates_a, estimates_b = full_figures(a), full_figures(b)
    stats_a, classes_a = resampled_figures(a, resamples=resamples, seed=seed)
    stats_b, classes_b = resampled_figures(b, resamples=resamples, seed=seed)
    metrics = {
        m.key: difference_of(
            estimates_a[0][m.key],
            estimates_b[0][m.key],
            stats_a[:, m.stat],
            stats_b[:, m.stat],
            level,
        )
        for m in METRICS
    }
    classes = {
        cat: difference_of(
            estimates_a[1][cat], estimates_b[1][cat], classes_a[:, k], classes_b[:, k], level
        )
        for k, cat in enumerate(a.category_ids.tolist())
    }
    return Comparison(metrics, classes, resamples=resamples, seed=seed, level=level)


def describe_difference(
    comparison: Comparison,
    *,
    name_a: str,
    name_b: str,
    metric: str = "bbox_mAP",
    alpha: float = 0.05,
) -> str:
    """One plain sentence on ``metric`` (in points, x100): who wins by how much, or that the
    val set cannot tell the two runs apart at ``alpha``."""
    labels = {m.key: m.label for m in ALL_METRICS}
    if metric not in labels:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(labels)}")
    label, found = labels[metric], comparison.metrics[metric]
    if found.estimate is None or found.p_value is None:
        return f"{label} is undefined on this val set for {name_a} or {name_b}"
    p = _format_p(found.p_value)
    if found.p_value >= alpha or found.estimate == 0 or found.low is None or found.high is None:
        return (
            f"no significant difference in {label} between {name_a} and {name_b} "
            f"on this val set (p {p})"
        )
    if found.estimate > 0:
        winner, loser, low, high = name_b, name_a, found.low, found.high
    else:
        winner, loser, low, high = name_a, name_b, -found.high, -found.low
    return (
        f"{winner} beats {loser} by {abs(found.estimate) * 100:.1f} {label} "
        f"({comparison.level * 100:g}% CI {low * 100:.1f} to {high * 100:.1f}, p {p})"
    )


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in input order.

    Rejecting every hypothesis whose adjusted p-value is below alpha keeps the chance of any
    false rejection among them at most alpha; e.g. the rows whose comparison with the leader
    has adjusted p >= alpha are not significantly different from it.
    """
    values = np.asarray(p_values, dtype=np.float64)
    if values.ndim != 1 or ((values < 0) | (values > 1) | np.isnan(values)).any():
        raise ValueError("p_values must be a flat list of numbers in [0, 1]")
    order = np.argsort(values, kind="stable")
    steps = np.minimum(1.0, (len(values) - np.arange(len(values))) * values[order])
    adjusted = np.empty_like(values)
    adjusted[order] = np.maximum.accumulate(steps)
    return adjusted.tolist()


def resampled_figures(matches: CocoMatches, *, resamples: int, seed: int) -> tuple[np.ndarray, ...]:
    """(stats (B, 6), per-class AP (B, K)) of ``resamples`` draws of the images; NaN where
    undefined."""
    if not matches.n_images:
        raise ValueError("no val images to resample: the evaluation has no images")
    plan = plan_resampling(matches)
    draws = resample_counts(plan.n_images, resamples, seed=seed, chunk=plan.chunk)
    parts = [weighted_stats(plan, counts) for counts in draws]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def resample_counts(
    n_images: int, resamples: int, *, seed: int, chunk: int
) -> Iterator[np.ndarray]:
    """The resamples' image counts, ``chunk`` rows (I,) at a time: each row counts n_images
    draws with replacement. The stream is drawn in resample order, so the chunk size does not
    change the resamples."""
    rng = np.random.default_rng(seed)
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        drawn = rng.integers(0, n_images, size=(n, n_images))
        drawn += n_images * np.arange(n)[:, None]
        yield np.bincount(drawn.ravel(), minlength=n * n_images).reshape(n, n_images)


def full_figures(matches: CocoMatches) -> tuple[dict[str, float | None], dict[int, float | None]]:
    """The figures on all images, from the engine: the values an evaluation stores."""
    found = summarize(matches)
    values = found.stats.tolist()
    metrics = {m.key: (None if values[m.stat] < 0 else values[m.stat]) for m in METRICS}
    return metrics, found.per_class_ap


def _interval(estimate: float | None, samples: np.ndarray, level: float) -> Interval:
    defined = samples[~np.isnan(samples)]
    if estimate is None or not defined.size:
        return Interval(estimate, None, None, int(defined.size))
    low, high = _basic_interval(estimate, defined, level, bounds=(0.0, 1.0))
    return Interval(estimate, low, high, int(defined.size))


def difference_of(
    estimate_a: float | None,
    estimate_b: float | None,
    samples_a: np.ndarray,
    samples_b: np.ndarray,
    level: float,
) -> Difference:
    if estimate_a is None or estimate_b is None:
        return Difference(None, None, None, None, 0)
    both = ~(np.isnan(samples_a) | np.isnan(samples_b))
    d = samples_b[both] - samples_a[both]
    estimate = estimate_b - estimate_a
    if not d.size:
        return Difference(estimate, None, None, None, 0)
    low, high = _basic_interval(estimate, d, level, bounds=(-1.0, 1.0))
    tail = min(int((d >= 2 * estimate).sum()), int((d <= 2 * estimate).sum()))
    p_value = min(1.0, 2 * (1 + tail) / (d.size + 1))
    return Difference(estimate, low, high, p_value, int(d.size))


def _basic_interval(
    estimate: float, samples: np.ndarray, level: float, *, bounds: tuple[float, float]
) -> tuple[float, float]:
    """[2 estimate - q_hi, 2 estimate - q_lo], clipped to the figure's range."""
    q_low, q_high = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2]).tolist()
    low = min(max(2 * estimate - q_high, bounds[0]), bounds[1])
    high = min(max(2 * estimate - q_low, bounds[0]), bounds[1])
    return low, high


def _format_p(p: float) -> str:
    """'= 0.41', '= 0.003', '< 0.001'."""
    return "< 0.001" if p < 0.001 else f"= {p:.2g}"


def check_options(resamples: int, seed: int, level: float) -> None:
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be an integer >= 1; got {resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0; got {seed!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95); got {level!r}")


def check_paired(a: CocoMatches, b: CocoMatches) -> None:
    """Both runs must be scored on the same val images, categories and GT boxes."""
    if a.image_ids != b.image_ids:
        in_b, in_a = set(b.image_ids), set(a.image_ids)
        only_a = [i for i in a.image_ids if i not in in_b]
        only_b = [i for i in b.image_ids if i not in in_a]
        raise ValueError(
            "a paired comparison needs both runs evaluated on the same val images; "
            f"{len(only_a)} image ids only in A (e.g. {only_a[:3]}), "
            f"{len(only_b)} only in B (e.g. {only_b[:3]})"
        )
    if not np.array_equal(a.category_ids, b.category_ids):
        raise ValueError(
            "a paired comparison needs the same categories in both runs; "
            f"A has ids {a.category_ids.tolist()}, B has {b.category_ids.tolist()}"
        )
    same_gt = (
        np.array_equal(a.gt_image, b.gt_image)
        and np.array_equal(a.gt_category, b.gt_category)
        and np.array_equal(a.gt_count, b.gt_count)
    )
    if not same_gt:
        raise ValueError(
            "a paired comparison needs both runs scored against the same ground truth; "
            "the images match but their GT boxes differ (another annotation file?)"
        )


def _as_dict(result: Intervals | Comparison) -> dict[str, Any]:
    fields = dataclasses.asdict(result)
    fields["per_class"] = {str(cat): value for cat, value in fields["per_class"].items()}
    return fields
