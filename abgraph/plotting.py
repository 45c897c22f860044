"""Metric plots with confidence intervals, sized and styled for a paper column."""
from __future__ import annotations

from pathlib import Path

PAPER_STYLE = {
    "font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False,
    "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5,
    "lines.linewidth": 1.2, "lines.markersize": 4, "savefig.bbox": "tight", "pdf.fonttype": 42,
}
FORMATS = ("pdf", "svg", "png")


def plot_summary(summary, metric: str, by: list, kind: str = "point", filename=None, title=None,
                 ax=None):
    """Draw a `summarize()` table: the last `by` column on the x axis, one series per
    value of the others; error bars are the confidence intervals."""
    import matplotlib.pyplot as plt
    if kind not in ("point", "bar"):
        raise ValueError(f"kind {kind!r} is not one of 'point', 'bar'")
    x_name, hue_names = by[-1], by[:-1]
    with plt.rc_context(PAPER_STYLE):
        if ax is None:
            figure, ax = plt.subplots(figsize=(3.4, 2.3))
        else:
            figure = ax.figure
        groups = summary.groupby(hue_names, sort=True, dropna=False) if hue_names else [((), summary)]
        x_values = sorted(summary[x_name].dropna().unique(), key=_sort_key)
        numeric = all(isinstance(v, (int, float)) for v in x_values)
        positions = {v: (v if numeric else i) for i, v in enumerate(x_values)}
        series = list(groups)
        width = 0.8 / max(1, len(series))
        for number, (key, rows) in enumerate(series):
            rows = rows.sort_values(x_name, key=lambda c: c.map(_sort_key))
            xs = [positions[v] for v in rows[x_name]]
            if kind == "bar":
                xs = [x - 0.4 + width * (number + 0.5) for x in xs] if not numeric else xs
            low = (rows["mean"] - rows["ci_low"]).fillna(0).clip(lower=0)
            high = (rows["ci_high"] - rows["mean"]).fillna(0).clip(lower=0)
            label = ", ".join(f"{n}={v}" for n, v in zip(hue_names, _as_tuple(key))) or None
            if kind == "bar":
                ax.bar(xs, rows["mean"], width=width if not numeric else None, yerr=[low, high],
                       capsize=2, label=label, alpha=0.85)
            else:
                ax.errorbar(xs, rows["mean"], yerr=[low, high], marker="o", capsize=2, label=label)
        if not numeric:
            ax.set_xticks(range(len(x_values)), [str(v) for v in x_values],
                          rotation=30 if len(x_values) > 4 else 0, ha="right" if len(x_values) > 4 else "center")
        ax.set_xlabel(x_name)
        ax.set_ylabel(f"{metric}\n(mean, 95% {_interval_name(summary)})")
        if title:
            ax.set_title(title)
        if hue_names:
            ax.legend(frameon=False)
        if filename is not None:
            save(figure, filename)
    return figure


def save(figure, filename) -> Path:
    path = Path(filename)
    if path.suffix.lstrip(".") not in FORMATS:
        raise ValueError(f"{filename}: give a file name ending in one of {FORMATS}")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=200)
    return path


def _interval_name(summary) -> str:
    """The bars' interval, as `stats.summarize` names it per row ("t", "t, clipped to [0, 1]")."""
    clipped = {n.partition(", ")[2] for n in summary.get("interval", ()) if ", " in n}
    return "t CI" + (f", {clipped.pop()}" if len(clipped) == 1 else "")


def _as_tuple(key):
    return key if isinstance(key, tuple) else (key,)


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
