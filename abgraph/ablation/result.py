"""`StudyResult`: what an ablation study found, with its uncertainty.

Per trial: what was removed, how many seeds finished, mean, std and 95% CI of
the metric, the difference to the base (trial − base) with its Welch CI and
p-value, the p-value Holm-corrected over the trials, and how many seeds failed.
`print(result)` starts with the summary a Maggy user knows (best and worst
configuration, average, total time), then the table.
"""
from __future__ import annotations

import math
import textwrap

import pandas as pd

from abgraph import stats

__all__ = ["StudyResult"]

TABLE_COLUMNS = ["trial", "kind", "removed", "n", "failed", "mean", "std", "ci_low", "ci_high",
                 "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"]


class StudyResult:
    """The outcome of `AblationStudy.run` (or `AblationStudy.restore`).

    trials: [{"name", "kind", "removed", "excludes"}] in study order, the base first.
    runs: one row per trial x seed: trial, seed, node, status, metric, error, duration.
    """

    def __init__(self, trials, runs, direction="max", ablator="LOCO", metric="metric",
                 elapsed=None, counts=None, confidence=0.95, graph=None, directory=None):
        if direction not in ("max", "min"):
            raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
        self.trials = list(trials)
        self.runs = pd.DataFrame(list(runs), columns=["trial", "seed", "node", "status", "metric",
                                                      "error", "duration"])
        self.direction, self.ablator, self.metric = direction, ablator, metric
        self.elapsed, self.counts = elapsed, dict(counts or {})
        self.confidence, self.graph, self.directory = confidence, graph, directory
        self._table = self._compute()

    # -- the numbers ---------------------------------------------------------------
    def _compute(self) -> pd.DataFrame:
        done = self.runs[self.runs.status == "done"]
        values = {t["name"]: done.loc[done.trial == t["name"], "metric"].astype(float).tolist()
                  for t in self.trials}
        self.bounds = stats.bounds_of(self.metric, done["metric"].astype(float))
        base = self.base_name
        rows = []
        for trial in self.trials:
            name = trial["name"]
            summary = stats.describe(values[name], self.confidence, self.bounds)
            row = {"trial": name, "kind": trial["kind"], "removed": trial["removed"], "n": summary.n,
                   "failed": int(((self.runs.trial == name) & (self.runs.status != "done")).sum()),
                   "mean": summary.mean, "std": summary.std, "ci_low": summary.ci_low,
                   "ci_high": summary.ci_high}
            if name == base or base is None:
                row.update(diff=0.0 if name == base else math.nan, diff_ci_low=math.nan,
                           diff_ci_high=math.nan, p_value=math.nan)
            else:
                comparison = stats.welch(values[base], values[name], self.confidence)
                row.update(diff=comparison.diff, diff_ci_low=comparison.ci_low,
                           diff_ci_high=comparison.ci_high, p_value=comparison.p_value)
            rows.append(row)
        table = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c != "p_holm"])
        table["p_holm"] = stats.holm(table["p_value"]) if len(table) else []
        return table

    @property
    def base_name(self):
        return next((t["name"] for t in self.trials if t["kind"] == "base"), None)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per trial (study order, the base first): the columns of `TABLE_COLUMNS`."""
        return self._table.copy()

    def _ranked(self) -> pd.DataFrame:
        scored = self._table[self._table.n > 0]
        return scored.sort_values("mean", ascending=self.direction == "min", kind="stable")

    @property
    def best(self) -> dict | None:
        """The trial with the best mean (by `direction`), as a table row."""
        ranked = self._ranked()
        return ranked.iloc[0].to_dict() if len(ranked) else None

    @property
    def worst(self) -> dict | None:
        ranked = self._ranked()
        return ranked.iloc[-1].to_dict() if len(ranked) else None

    @property
    def average(self) -> float:
        """The mean of the trials' means (Maggy's AVERAGE metric)."""
        means = self._table.loc[self._table.n > 0, "mean"]
        return float(means.mean()) if len(means) else math.nan

    @property
    def failed(self) -> pd.DataFrame:
        """The runs that did not finish: trial, seed, node, status and the error's last line."""
        failed = self.runs[self.runs.status != "done"].copy()
        failed["error"] = failed["error"].map(_last_line)
        return failed[["trial", "seed", "node", "status", "error"]].reset_index(drop=True)

    @property
    def ok(self) -> bool:
        return bool((self.runs.status == "done").all())

    def node(self, trial: str, seed):
        """The stored node of one run (slim; `.restore()` loads its trained model and data)."""
        if self.graph is None:
            raise RuntimeError("this result has no experiment graph attached")
        match = self.runs[(self.runs.trial == trial) & (self.runs.seed == seed)]
        if match.empty:
            raise KeyError(f"no run of trial {trial!r} with seed {seed!r}; trials: "
                           f"{[t['name'] for t in self.trials]}, seeds: {sorted(set(self.runs.seed))}")
        return self.graph.node(match.iloc[0]["node"])

    # -- text ----------------------------------------------------------------------
    def _removed(self, name) -> str:
        return next(t["removed"] for t in self.trials if t["name"] == name)

    def summary(self) -> str:
        """Maggy's summary: best and worst configuration, average, total time."""
        lines = [f"------ {self.ablator} Results ------ "]
        best, worst = self.best, self.worst
        number = _Numbers(self._table)
        if best is None:
            lines.append("no trial finished")
        else:
            lines.append(f"BEST Config Excludes {self._removed(best['trial'])} -- metric "
                         f"{number(best['mean'])} ({_seeds(best)})")
            lines.append(f"WORST Config Excludes {self._removed(worst['trial'])} -- metric "
                         f"{number(worst['mean'])} ({_seeds(worst)})")
            lines.append(f"AVERAGE metric -- {number(self.average)}")
        if self.elapsed is not None:
            seconds = int(round(self.elapsed))
            counts = ", ".join(f"{v} {k}" for k, v in self.counts.items() if v)
            lines.append(f"Total Job Time {seconds // 3600} hours, {seconds % 3600 // 60} minutes, "
                         f"{seconds % 60} seconds" + (f" ({counts})" if counts else ""))
        return "\n".join(lines)

    def table(self) -> str:
        """The per-trial table as text."""
        better = "higher" if self.direction == "max" else "lower"
        header = ["trial", "n", "mean ± std", f"{self.confidence:.0%} CI", "diff to base [CI]",
                  "p (Holm)", "failed"]
        body = []
        number = _Numbers(self._table)
        for row in self._table.itertuples():
            diff = ("—" if row.trial == self.base_name else
                    f"{number(row.diff, signed=True)} "
                    f"{number.interval(row.diff_ci_low, row.diff_ci_high, signed=True)}")
            spread = "" if math.isnan(row.std) else f" ± {number(row.std)}"
            body.append([row.trial, str(row.n), number(row.mean) + spread,
                         number.interval(row.ci_low, row.ci_high), diff, _p(row.p_holm),
                         str(row.failed) if row.failed else ""])
        widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                for r in [header] + body]
        text.insert(1, "-" * len(text[0]))
        tested = int(self._table.p_value.notna().sum())
        clipped = "" if self.bounds is None else f", clipped to [{self.bounds[0]:g}, {self.bounds[1]:g}]"
        text.append(f"metric: {self.metric!r}, {better} is better; CI: t interval over seeds{clipped}, "
                    f"none under {stats.MIN_INTERVAL_N} seeds; diff = trial − base, Welch "
                    f"{self.confidence:.0%} CI; p Holm-corrected over the {tested} trial(s) with a p-value")
        failed = self.failed
        if len(failed):
            text.append(f"{len(failed)} run(s) failed:")
            text += [f"  {r.trial} (seed {r.seed}): {r.error}" for r in failed.itertuples()]
        return "\n".join(text)

    def __str__(self):
        return self.summary() + "\n\n" + self.table()

    def __repr__(self):
        return (f"<StudyResult {len(self.trials)} trials x {self.runs.seed.nunique()} seeds, "
                f"{int((self.runs.status == 'done').sum())}/{len(self.runs)} runs done>")

    # -- the plot ------------------------------------------------------------------
    def plot(self, filename=None, title=None):
        """Difference to the base per trial with its CI, sorted; returns the Figure.

        Saved to `filename` when given (the format from its suffix: .pdf, .svg,
        .png). Trials significant after Holm (p < 0.05) are filled, others hollow;
        trials without a result are listed under the chart.
        """
        # A bare Figure (no pyplot): no GUI backend, no global state, works headless.
        from matplotlib.figure import Figure

        table = self._table[(self._table.trial != self.base_name) & (self._table.n > 0)]
        # the removal that hurts most on top
        table = table.sort_values("diff", ascending=self.direction == "min", kind="stable")
        missing = self._table[(self._table.trial != self.base_name) & (self._table.n == 0)]
        notes = [f"{'higher' if self.direction == 'max' else 'lower'} is better; green: better "
                 "without it, red: worse; filled: Holm p < 0.05"]
        if len(missing):
            notes += textwrap.wrap("no result (failed): " + ", ".join(missing.trial), 110)
        height = 1.3 + 0.38 * max(len(table), 1) + 0.14 * len(notes)
        figure = Figure(figsize=(6.4, height), layout="constrained")
        axes = figure.subplots()
        positions = list(range(len(table)))
        for y, row in zip(positions, table.itertuples()):
            significant = row.p_holm < 0.05 if not math.isnan(row.p_holm) else False
            if row.diff == 0 or math.isnan(row.diff):
                color = "0.45"
            elif (row.diff > 0) == (self.direction == "max"):
                color = "#2b8a3e"
            else:
                color = "#c92a2a"
            if not math.isnan(row.diff_ci_low):
                axes.plot([row.diff_ci_low, row.diff_ci_high], [y, y], color=color, linewidth=1.6,
                          solid_capstyle="butt")
                for end in (row.diff_ci_low, row.diff_ci_high):
                    axes.plot([end, end], [y - 0.15, y + 0.15], color=color, linewidth=1.2)
            axes.plot([row.diff], [y], marker="o", markersize=6, color=color,
                      markerfacecolor=color if significant else "white", markeredgewidth=1.5)
        axes.axvline(0.0, color="0.35", linewidth=0.9, linestyle="--", zorder=0)
        axes.set_yticks(positions, [f"{_shorten(row.trial)} (n={row.n})" for row in table.itertuples()])
        axes.set_ylim(-0.7, max(len(table), 1) - 0.3)
        axes.set_xlabel(f"{self.metric} difference to base (trial − base), {self.confidence:.0%} CI")
        base = self._table[self._table.trial == self.base_name]
        if title is None:
            title = f"{self.ablator} ablation"
            if len(base) and base.iloc[0].n:
                title += f" — base {self.metric} {base.iloc[0]['mean']:.4g} (n={base.iloc[0].n})"
        axes.set_title(title, fontsize=10)
        axes.grid(axis="x", color="0.9", linewidth=0.8)
        axes.set_axisbelow(True)
        for side in ("top", "right"):
            axes.spines[side].set_visible(False)
        figure.supxlabel("\n".join(notes), x=0.01, ha="left", fontsize=7, color="0.3")
        if filename is not None:
            figure.savefig(filename, dpi=150)
        return figure


def _seeds(row) -> str:
    return f"mean of {row['n']} seed{'s' if row['n'] != 1 else ''}"


def _last_line(error) -> str:
    if not isinstance(error, str) or not error.strip():
        return ""
    return error.strip().splitlines()[-1]


class _Numbers:
    """One format for every number on the metric's scale in a table: as many
    decimals as give the largest mean 4 significant digits, so columns line up
    and 0.9587 sits next to +0.0000, not next to 0.9587020476659139 or +0."""

    def __init__(self, table: pd.DataFrame):
        means = [abs(m) for m in table["mean"] if not math.isnan(m) and m != 0]
        self.decimals = max(0, 3 - math.floor(math.log10(max(means)))) if means else 4

    def __call__(self, value, signed=False) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        return f"{value:{'+' if signed else ''}.{self.decimals}f}"

    def interval(self, low, high, signed=False) -> str:
        if math.isnan(low) or math.isnan(high):
            return "[—]"
        return f"[{self(low, signed)}, {self(high, signed)}]"


def _p(p) -> str:
    if p is None or math.isnan(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _shorten(name: str, width: int = 40) -> str:
    """Trial names listing many features would squeeze the chart: cut them (the
    table and the DataFrame keep them whole)."""
    return name if len(name) <= width else name[:width - 1] + "…"
