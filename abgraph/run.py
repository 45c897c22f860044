"""One run of an experiment, as an object you can read top to bottom.

`RunLoop` owns everything a run touches: the plan (the scheduler's state), the
executor, the early-stopping rules, the progress line, and the index's only
writer. The loop is: dispatch ready nodes to idle workers, store what comes
back, let the rules stop losing branches, repeat until nothing is left.
"""
from __future__ import annotations

import time

from .executors import scheduler
from .executors.progress import Progress
from .executors.task import Task, record_for
from .report import RunReport
from .state import failed_functions


class IndexWriter:
    """The one writer of the index during a run.

    One transaction per node costs more than a cheap node itself, so records
    are written together: before the loop may wait on workers, once the oldest
    is `max_age` seconds old, or at once after an expensive node. A crash of
    this process loses at most `max_age` seconds of cheap work.
    """

    def __init__(self, index, probe_only, max_age=0.2, expensive=1.0):
        self.index, self.probe_only = index, probe_only
        self.max_age, self.expensive = max_age, expensive
        self.records, self.oldest, self.urgent = [], None, False

    def add(self, record) -> None:
        if not self.records:
            self.oldest = time.perf_counter()
        self.records.append(record)
        self.urgent |= (record.duration or 0) >= self.expensive

    def flush(self, force=False) -> None:
        if self.records and (force or self.urgent or time.perf_counter() - self.oldest >= self.max_age):
            probe_only = {r.id for r in self.records if r.id in self.probe_only}
            # a failed probe on a stored node leaves the node as it was
            self.index.write([r for r in self.records if r.id not in probe_only or r.status == "done"],
                             results_only=probe_only)
            self.records, self.urgent = [], False


class RunLoop:
    """Run every planned node of `experiment` that is not stored yet on `executor`.

    `rules`: early-stopping rules (`abgraph.stopping`) consulted whenever a
    node settles; `progress`: None shows a progress line only on a terminal.
    """

    def __init__(self, experiment, executor, progress=None, rules=()):
        self.nodes, self.state_class = experiment._nodes, experiment.state_class
        self.index, self.objects = experiment.index, experiment.objects
        self.executor, self.rules = executor, list(rules)
        stored = self.index.statuses()
        self.plan = scheduler.plan(self.nodes, {n: status for n, (status, _) in stored.items()},
                                   self.index.result_versions())
        self.payloads = {n: digest for n, (status, digest) in stored.items() if status == "done"}
        self.writer = IndexWriter(self.index, {n for n, kind in self.plan.kinds.items()
                                               if kind == scheduler.PROBE})
        self.progress = Progress(len(self.nodes), len(self.plan.cached), progress)
        self.report = RunReport(cached=list(self.plan.cached))
        self.running_labels: dict = {}
        self.outcomes: dict = {}  # node id -> record, for this run's finished nodes

    # -- the loop ----------------------------------------------------------------
    def run(self) -> RunReport:
        start = time.perf_counter()
        self.index.add_tags((n, tag) for n, node in self.nodes.items() for tag in node.tags)
        for rule in self.rules:
            rule.hold(self.plan)
        if self.plan.kinds:  # nothing to run: start no workers
            self.executor.open(self.objects)
        try:
            self._apply_rules()  # rungs already stored decide at once
            while not scheduler.is_finished(self.plan):
                self._dispatch()
                self.writer.flush(force=self.executor.collect_blocks)
                for record in self._collect():
                    self._settle(record)
                self._apply_rules()
                self._show()
        except KeyboardInterrupt:
            self.report.interrupted = True
            self.executor.close(cancel=True)
        finally:
            self.writer.flush(force=True)
            self._show(final=True)
            self.executor.end_run()
        return self._final_report(time.perf_counter() - start)

    def _dispatch(self) -> None:
        """Give ready nodes to idle workers: first to a worker holding a parent, then to anyone."""
        idle = self.executor.idle()
        for worker, only_held in [(w, True) for w in idle] + [(w, False) for w in idle]:
            if worker.busy:
                continue
            node_id = scheduler.next_ready(self.plan, worker.held(), only_held)
            if node_id is None:
                continue
            task = self.task(node_id, scheduler.released_by(self.plan, node_id),
                             scheduler.has_dependents(self.plan, node_id))
            self.running_labels[node_id] = self.nodes[node_id].recipe_name
            self.executor.submit(worker, task)

    def _collect(self) -> list:
        try:
            return self.executor.collect()
        except Exception as error:  # SerialExecutor(raise_errors=True): store the failure, then raise
            failed = getattr(error, "abgraph_record", None)
            if failed is not None:
                self._settle(failed)
            raise

    def _settle(self, record) -> None:
        ok = record.status == "done"
        if ok and record.payload:
            self.payloads[record.id] = record.payload
        self.outcomes[record.id] = record
        self.writer.add(record)
        self.report.durations[record.id] = record.duration
        if not ok:
            self.report.errors[record.id] = record.error
        if failed := failed_functions(record):
            self.report.probe_errors[record.id] = failed
        self.running_labels.pop(record.id, None)
        for blocked in scheduler.finish(self.plan, record.id, ok):
            self.writer.add(self.placeholder(blocked, "blocked", f"blocked: ancestor {record.id} failed"))

    def _apply_rules(self) -> None:
        for rule in self.rules:
            for node_id, reason in rule.stops(self.plan, self.metric_source):
                for stopped in scheduler.stop(self.plan, [node_id]):
                    self.writer.add(self.placeholder(stopped, "stopped", reason))

    def metric_source(self, node_ids) -> dict:
        """id -> record of each settled node of `node_ids` (this run's, else the stored one)."""
        found = {n: self.outcomes[n] for n in node_ids if n in self.outcomes}
        missing = [n for n in node_ids if n not in found]
        if missing:
            found.update((r.id, r) for r in self.index.records(missing))
        return found

    def _show(self, final=False) -> None:
        plan = self.plan
        self.progress.update(len(plan.executed), len(plan.failed), self.running_labels.values(), force=final,
                             skipped=len(plan.blocked) + len(plan.stopped))
        if final:
            self.progress.close()

    def _final_report(self, elapsed) -> RunReport:
        report, plan = self.report, self.plan
        report.executed, report.failed = list(plan.executed), list(plan.failed)
        report.probed = [n for n in plan.executed if plan.kinds[n] == scheduler.PROBE]
        report.blocked, report.stopped = list(plan.blocked), list(plan.stopped)
        report.not_run = scheduler.unfinished(plan)
        report.elapsed = elapsed
        return report

    # -- what workers get --------------------------------------------------------
    def task(self, node_id, release=(), keep=False) -> Task:
        node, plan = self.nodes[node_id], self.plan
        return Task(node_id=node_id, kind=plan.kinds[node_id], state_class=self.state_class,
                    recipe=node.recipe, recipe_record=node.recipe_record, parents=node.parents,
                    parent_payloads=[self.payloads.get(p) for p in node.parents],
                    properties=node.properties, encoded_properties=node.encoded_properties,
                    arguments=node.arguments, tags=node.tags,
                    probes=[node.probes[name] for name in plan.probes[node_id]],
                    payload=self.payloads.get(node_id), keep=keep, release=list(release))

    def placeholder(self, node_id, status, reason):
        """The record of a node that will not run in this run (blocked or stopped)."""
        return record_for(self.task(node_id), status=status, error=reason)
