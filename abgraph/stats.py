"""Small, dependency-light statistics for comparing ablation runs.

Ablation studies usually have a handful of seeds per configuration, so every
interval here uses the t distribution rather than a normal approximation, and
every function degrades to NaN on degenerate input (one seed, identical
values) instead of raising: a half-finished sweep should still summarize.
Fewer than three values give no interval: from two seeds a t interval is
mostly noise. A metric bounded in [0, 1] (accuracy, F1, precision, recall,
sparsity, ...; see `bounds_of`) gets its interval clipped to [0, 1], and every
summary says which interval it shows (`Summary.interval`).

All functions are pure: they take plain sequences or a DataFrame and return
new objects.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special
from scipy import stats as _st

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BOUNDED_WORDS",
    "MIN_INTERVAL_N",
    "Summary",
    "bounds_of",
    "Comparison",
    "describe",
    "welch",
    "holm",
    "summarize",
]

_NAN = float("nan")
MIN_INTERVAL_N = 3
# a metric whose name has one of these words (split on "_", "." and "-") lives in [0, 1]
BOUNDED_WORDS = frozenset({"accuracy", "acc", "f1", "precision", "recall", "sparsity", "auc", "iou",
                           "dice", "jaccard", "density"})


@dataclass(frozen=True)
class Summary:
    """Location and spread of one group of values.

    ``ci_low``/``ci_high`` bound the mean at the requested confidence;
    ``interval`` says how ("t", "t, clipped to [0, 1]", or "none (n < 3)").
    """

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    interval: str = "t"


@dataclass(frozen=True)
class Comparison:
    """Welch comparison of two groups; ``diff`` is ``mean(b) - mean(a)``.

    The sign convention reads as "effect of going from a to b", so ``a`` is
    the baseline and a positive ``diff`` means ``b`` scored higher.  ``df`` is
    the Welch-Satterthwaite degrees of freedom used for ``t``, the p-value and
    the interval.
    """

    diff: float
    ci_low: float
    ci_high: float
    t: float
    p_value: float
    cohen_d: float
    hedges_g: float
    df: float


def _floats(values: Iterable[float]) -> np.ndarray:
    """Values as a 1-D float array, with None and pd.NA turned into NaN.

    Nullable columns of a node table (``Float64``, ``object`` with ``None``)
    behave like any other missing value. Plain sequences need no pandas (the
    `abgraph draw` command averages replicas without loading it): a value can
    only be ``pd.NA`` if pandas is already imported.
    """
    if isinstance(values, np.ndarray):
        return values.astype(float, copy=False).ravel()
    if hasattr(values, "to_numpy"):   # a pandas Series or Index
        return values.to_numpy(dtype=float, na_value=np.nan).ravel()
    pandas = sys.modules.get("pandas")
    missing = (None,) if pandas is None else (None, pandas.NA)
    return np.array([np.nan if any(v is m for m in missing) else v for v in values], dtype=float).ravel()


def _finite(values: Iterable[float]) -> np.ndarray:
    """:func:`_floats` with NaN/inf dropped.

    Failed or unfinished runs are commonly recorded as NaN; dropping them here
    means callers need no cleaning step and ``n`` reports what was used.
    """
    arr = _floats(values)
    return arr[np.isfinite(arr)]


def _check_confidence(confidence: float) -> float:
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return confidence


def bounds_of(metric: str, values: Iterable[float] = ()) -> tuple[float, float] | None:
    """(0, 1) for a metric whose name says it is a proportion (`BOUNDED_WORDS`:
    ``accuracy``, ``eval.f1_macro``, ``per_class_accuracy``...) and whose values
    all lie in [0, 1]; else None. A value outside [0, 1] (accuracy in percent)
    means the name misleads, so nothing is clipped."""
    words = set(re.split(r"[._\-\s]+", str(metric).lower()))
    if not words & BOUNDED_WORDS:
        return None
    x = _finite(values)
    return (0.0, 1.0) if np.all((x >= 0.0) & (x <= 1.0)) else None


def describe(values: Iterable[float], confidence: float = 0.95,
             bounds: tuple[float, float] | None = None) -> Summary:
    """Mean, sample std (ddof=1) and a t-based confidence interval for the mean.

    The t distribution is used because seed counts are small (3-10), where a
    normal interval would be noticeably too narrow.  Non-finite values are
    dropped and ``n`` counts only the values used.  With ``n == 1`` the mean
    is returned but std and interval are NaN (no spread can be estimated);
    with ``n == 2`` the std is given but no interval (its t quantile is 12.7:
    the interval would say nothing); with ``n == 0`` everything but ``n`` is
    NaN.  ``bounds`` (e.g. ``(0, 1)`` for an accuracy) clips the interval to
    the values the metric can take, and ``interval`` says so.
    """
    confidence = _check_confidence(confidence)
    x = _finite(values)
    n = int(x.size)
    none = f"none (n < {MIN_INTERVAL_N})"
    if n == 0:
        return Summary(0, _NAN, _NAN, _NAN, _NAN, none)
    mean = float(np.mean(x))
    if n == 1:
        return Summary(1, mean, _NAN, _NAN, _NAN, none)
    std = float(np.std(x, ddof=1))
    if n < MIN_INTERVAL_N:
        return Summary(n, mean, std, _NAN, _NAN, none)
    half = float(_st.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is None:
        return Summary(n, mean, std, low, high, "t")
    low, high = max(low, float(bounds[0])), min(high, float(bounds[1]))
    return Summary(n, mean, std, low, high, f"t, clipped to [{bounds[0]:g}, {bounds[1]:g}]")


def _hedges_correction(dof: float) -> float:
    """Exact small-sample bias correction J(dof) for Cohen's d.

    Computed via log-gamma so it stays finite for large ``dof``; it differs
    from the common ``1 - 3 / (4 * dof - 1)`` approximation by < 0.01 at
    dof = 2 and < 1e-3 from dof = 6, so the exact form matters for the small
    seed counts typical here.
    """
    if dof <= 0:
        return _NAN
    return float(
        np.exp(special.gammaln(dof / 2.0) - special.gammaln((dof - 1.0) / 2.0))
        / math.sqrt(dof / 2.0)
    )


def welch(
    a: Iterable[float], b: Iterable[float], confidence: float = 0.95
) -> Comparison:
    """Welch's unequal-variance t-test of ``b`` against baseline ``a``.

    Welch is used rather than Student's t because pruned/ablated models often
    have visibly different seed variance from the baseline.  ``cohen_d`` uses
    the pooled sd (so it is comparable across studies) and ``hedges_g``
    applies the exact small-sample correction.  Non-finite values are
    dropped.  Degenerate input (fewer than two values in a group, or zero
    variance on both sides) yields NaN for the statistics that cannot be
    estimated instead of raising, so one bad cell cannot break a report;
    ``diff`` is still given whenever both groups have at least one value.
    """
    confidence = _check_confidence(confidence)
    xa, xb = _finite(a), _finite(b)
    na, nb = int(xa.size), int(xb.size)
    diff = float(np.mean(xb) - np.mean(xa)) if na and nb else _NAN
    if na < 2 or nb < 2:
        return Comparison(diff, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN)

    va, vb = float(np.var(xa, ddof=1)), float(np.var(xb, ddof=1))
    sa, sb = va / na, vb / nb
    se2 = sa + sb
    if se2 <= 0.0:
        # Both groups constant: no sampling variability to test against.
        return Comparison(diff, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN, _NAN)

    se = math.sqrt(se2)
    dof = se2**2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
    t = diff / se
    p = float(2.0 * _st.t.sf(abs(t), dof))
    half = float(_st.t.ppf(0.5 + confidence / 2.0, dof)) * se

    pooled_dof = na + nb - 2
    pooled_sd = math.sqrt(((na - 1) * va + (nb - 1) * vb) / pooled_dof)
    d = diff / pooled_sd
    g = d * _hedges_correction(pooled_dof)
    return Comparison(diff, diff - half, diff + half, t, p, d, g, float(dof))


def holm(p_values: Iterable[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values, returned in the input order.

    Holm controls the family-wise error rate like Bonferroni but is uniformly
    more powerful, which matters when an ablation table tests many
    components.  Adjusted values are monotone in the raw p-values and capped
    at 1.  NaN/None entries (untestable comparisons, e.g. from a degenerate
    :func:`welch`) stay NaN and do not count towards the number of tests.
    """
    p = _floats(p_values)
    out = np.full(p.shape, _NAN)
    ok = ~np.isnan(p)
    if np.any((p[ok] < 0.0) | (p[ok] > 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    idx = np.flatnonzero(ok)
    m = idx.size
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return [float(v) for v in out]


def summarize(
    df: pd.DataFrame,
    metric: str,
    by: str | Sequence[str],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None | str = "auto",
) -> pd.DataFrame:
    """Per-group :func:`describe` of ``metric``, best mean first.

    Returns columns ``*by, n, mean, std, ci_low, ci_high, interval`` with a
    fresh 0-based index; ``interval`` names the interval shown (``bounds``:
    "auto" clips a proportion's interval to [0, 1], see :func:`bounds_of`).  Rows are sorted by mean descending (NaN means last; ties
    keep first-appearance order) because the usual question is "which
    configuration won".  Groups whose key is missing (NaN/None) are kept, as
    a node lacking a property is information, not noise.  ``by`` may be a
    single column name or a sequence; an empty sequence summarizes the whole
    frame as one row.  A missing ``metric`` or ``by`` column raises
    ``ValueError`` listing the available columns, since the caller is usually
    guessing a property name.
    """
    import pandas as pd   # only here: describing values needs no DataFrame
    confidence = _check_confidence(confidence)
    by_cols = [by] if isinstance(by, str) else list(by)
    available = [str(c) for c in df.columns]
    for col in [metric, *by_cols]:
        if col not in df.columns:
            raise ValueError(
                f"column {col!r} not found; available columns: "
                + (", ".join(available) if available else "(none)")
            )

    if bounds == "auto":
        bounds = bounds_of(metric, df[metric])
    stat_cols = ["n", "mean", "std", "ci_low", "ci_high", "interval"]
    rows: list[dict] = []
    if not by_cols:
        s = describe(df[metric], confidence, bounds)
        rows.append(asdict(s))
    else:
        grouped = df.groupby(by_cols, sort=False, dropna=False)[metric]
        for key, values in grouped:
            if not isinstance(key, tuple):
                key = (key,)
            row = dict(zip(by_cols, key))
            row.update(asdict(describe(values, confidence, bounds)))
            rows.append(row)

    out = pd.DataFrame(rows, columns=[*by_cols, *stat_cols])
    out["n"] = out["n"].astype(int)
    out = out.sort_values(
        "mean", ascending=False, kind="stable", na_position="last"
    )
    return out.reset_index(drop=True)
