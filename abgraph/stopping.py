"""Early-stopping rules over the rungs of a sweep: successive halving and the median rule.

A sweep built by `abgraph.sweep.halving` trains each trial in rungs: a chain
of training nodes, each followed by its evaluation. The rule holds every
trial's next rung until the current rung of all trials has settled, then keeps
the best and stops the rest: their pending nodes, and everything below, are
stored with status `stopped`. Rules are plain data stored in the index, so a
later `run()` applies the same decisions from the stored evaluations (nothing
is recomputed) and `run(early_stopping=False)` resumes the stopped branches
from their last stored rung.

Optuna's pruners decide one trial at a time from its own reports; here every
rung is a stored node and the decision is a pure function of those nodes, which
is what lets a re-run reach the same decisions without an Optuna study.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

from .executors import scheduler

RULES = ("halving", "median")
META_KEY = "stopping_rules"


@dataclass
class StoppingRule:
    kind: str                  # "halving" or "median"
    metric: str
    direction: str             # "max" or "min"
    keep: float                # halving: the fraction kept after each rung
    rungs: list                # the budget reached at each rung (e.g. epochs)
    trials: list               # per trial, per rung: [training node id, evaluation node id]
    labels: list               # per trial, its tags, for the reasons stored on stopped nodes
    probe: str | None = None   # read the metric from this probe's result, not from the metrics

    def __post_init__(self):
        self._eliminated: set = set()
        self._decided = 0

    @property
    def key(self) -> str:
        """A sweep is its first rung: one rule per sweep, the latest replaces earlier ones."""
        return ",".join(train for train, _ in (trial[0] for trial in self.trials))

    def nodes(self) -> set:
        return {node for trial in self.trials for rung in trial for node in rung}

    # -- during a run ----------------------------------------------------------
    def hold(self, plan) -> None:
        """Start of a run: no trial starts rung r+1 before rung r of every trial has settled."""
        self._eliminated, self._decided = set(), 0
        for rung in range(1, len(self.rungs)):
            previous = [trial[rung - 1][1] for trial in self.trials]
            for trial in self.trials:
                for node_id in trial[rung]:
                    scheduler.gate(plan, node_id, previous)

    def stops(self, plan, records_of) -> list:
        """(node id, reason) for every node of a losing trial's later rungs, for
        each rung whose evaluations have all settled and was not decided yet."""
        stops = []
        while self._decided < len(self.rungs) - 1:
            rung = self._decided
            alive = [t for t in range(len(self.trials)) if t not in self._eliminated]
            evaluations = [self.trials[t][rung][1] for t in alive]
            if not all(scheduler.is_settled(plan, n) for n in evaluations):
                break
            records = records_of(evaluations)
            values = {t: self.value(records.get(self.trials[t][rung][1])) for t in alive}
            scored = {t: v for t, v in values.items() if v is not None}
            losers, why = self.losers(scored)
            for t in losers:
                reason = (f"stopped by {self.kind} after rung {rung + 1} ({self.rungs[rung]}): "
                          f"{self.metric} {scored[t]:.6g} {why} [{', '.join(self.labels[t])}]")
                stops += [(node_id, reason) for later in self.trials[t][rung + 1:] for node_id in later]
            self._eliminated |= set(losers) | {t for t in alive if t not in scored}
            self._decided += 1
        return stops

    def value(self, record):
        """The rung's metric on a done evaluation, else None (failed or missing)."""
        if record is None or record.status != "done":
            return None
        source = record.metrics if self.probe is None else record.results.get(self.probe)
        if not isinstance(source, dict) or self.metric not in source:
            known = sorted(source) if isinstance(source, dict) else []
            raise KeyError(f"the evaluation {record.id[:12]} has no metric {self.metric!r} "
                           f"(it has {known}); give halving() a metric= its evaluation writes")
        value = float(source[self.metric])
        if math.isnan(value):  # a diverged run ranks last, whichever the direction
            return -math.inf if self.direction == "max" else math.inf
        return value

    def losers(self, scored: dict) -> tuple:
        """The trials to stop among `scored` (trial -> value), and why, in words."""
        sign = 1 if self.direction == "max" else -1
        ranked = sorted(scored, key=lambda t: (-sign * scored[t], t))
        if self.kind == "halving":
            kept = max(1, math.ceil(len(ranked) * self.keep - 1e-9))
            return ranked[kept:], f"is not among the best {kept} of {len(ranked)}"
        if not ranked:
            return [], ""
        median = statistics.median(scored.values())
        return ([t for t in ranked if sign * scored[t] < sign * median],
                f"is worse than the median {median:.6g} of {len(ranked)} trials")

    # -- stored with the experiment ------------------------------------------------
    def to_json(self) -> dict:
        return asdict(self)


def stored_rules(index) -> dict:
    return {key: StoppingRule(**value) for key, value in (index.meta(META_KEY) or {}).items()}


def store_rules(index, rules) -> None:
    stored = index.meta(META_KEY) or {}
    changed = {rule.key: rule.to_json() for rule in rules}
    if any(stored.get(key) != value for key, value in changed.items()):
        index.set_meta(META_KEY, dict(stored, **changed))


def rules_for_run(experiment, enabled: bool) -> list:
    """The rules a run applies: those built in this session, and those stored by
    an earlier one whose nodes are all part of this graph. Stores the former."""
    if not enabled:
        return []
    session = dict(experiment._stopping_rules)
    store_rules(experiment.index, session.values())
    planned = experiment._nodes
    for key, rule in stored_rules(experiment.index).items():
        if key not in session and rule.nodes() <= planned.keys():
            session[key] = rule
    return list(session.values())
