"""One plot per metric: mean and confidence interval for each tag group, as
`NodeSet.plot` draws them, laid out here as numbers a template turns into SVG."""
from __future__ import annotations

import math
import statistics

from ..diff import measurements
from .graph_svg import tag_group

MAX_GROUPS = 30    # rows in one plot
MAX_METRICS = 24   # plots in one report
WIDTH, LABEL, ROW = 640, 230, 18


def metric_plots(nodes, confidence: float = 0.95) -> dict:
    """{"plots": [...], "note": why some are missing or None}."""
    values: dict = {}
    for node in nodes:
        group = tag_group(node._ab_record.tags) or "(no tags)"
        for name, value in measurements(node._ab_record).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                values.setdefault(name, {}).setdefault(group, []).append(float(value))
    try:  # scipy.special alone: scipy.stats would take seconds to import
        from scipy.special import stdtrit
    except ImportError:  # scipy is an extra: means alone, and say so
        stdtrit, note = None, "install scipy to see confidence intervals"
    else:
        note = None
    names = sorted(values)
    if len(names) > MAX_METRICS:
        note = f"{len(names) - MAX_METRICS} more metrics not plotted ({', '.join(names[MAX_METRICS:][:5])}, …)"
    return {"plots": [_plot(name, values[name], stdtrit, confidence) for name in names[:MAX_METRICS]],
            "note": note}


def _plot(name, groups, stdtrit, confidence) -> dict:
    rows = []
    for group in sorted(groups)[:MAX_GROUPS]:
        found = groups[group]
        n, mean = len(found), statistics.fmean(found)
        half = 0.0
        if stdtrit is not None and n > 1:  # t interval, as abgraph.stats.describe (few seeds)
            half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * statistics.stdev(found) / math.sqrt(n)
        rows.append({"group": group, "n": n, "mean": mean, "low": mean - half, "high": mean + half})
    lowest = min(r["low"] for r in rows)
    highest = max(r["high"] for r in rows)
    span = (highest - lowest) or abs(highest) or 1.0
    lowest, highest = lowest - 0.05 * span, highest + 0.05 * span

    def x(value):
        return round(LABEL + (value - lowest) / (highest - lowest) * (WIDTH - LABEL - 60), 1)
    for number, row in enumerate(rows):
        row.update(y=20 + number * ROW, x_mean=x(row["mean"]), x_low=x(row["low"]), x_high=x(row["high"]))
    hidden = len(groups) - len(rows)
    return {"metric": name, "rows": rows, "height": 40 + len(rows) * ROW, "width": WIDTH,
            "axis": [{"x": x(v), "label": f"{v:.4g}"} for v in _ticks(lowest, highest)],
            "hidden": hidden, "label_width": LABEL, "confidence": confidence}


def _ticks(low, high, count=4):
    step = (high - low) / count
    return [low + step * (i + 0.5) for i in range(count)]
