"""The run loop: scheduler decisions, executor work, index writes."""
from __future__ import annotations

import time

from ..report import RunReport
from . import scheduler


class RecordBatch:
    """Finished records on their way to the index.

    One transaction per node costs more than a cheap node itself, so records
    are written together: before the loop may wait on workers, once the oldest
    is `max_age` seconds old, or at once after an expensive node. A crash of
    this process loses at most `max_age` seconds of cheap work.
    """

    def __init__(self, write_records, max_age=0.2, expensive=1.0):
        self.write_records, self.max_age, self.expensive = write_records, max_age, expensive
        self.records, self.oldest, self.urgent = [], None, False

    def add(self, record) -> None:
        if not self.records:
            self.oldest = time.perf_counter()
        self.records.append(record)
        self.urgent |= (record.duration or 0) >= self.expensive

    def flush(self, force=False) -> None:
        if self.records and (force or self.urgent or time.perf_counter() - self.oldest >= self.max_age):
            self.write_records(self.records)
            self.records, self.urgent = [], False


def drive(state, executor, make_task, accept, write_records, make_blocked, progress=None,
          label=str) -> RunReport:
    """Dispatch ready nodes to idle workers until everything is finished.

    `accept(record)` sees each outcome at once; `write_records(records)` stores
    them (see RecordBatch), always before this returns, so an interruption
    (Ctrl-C, an exception) loses only running nodes.
    """
    report = RunReport(cached=list(state.cached))
    start = time.perf_counter()
    running_labels = {}
    batch = RecordBatch(write_records)

    def record_outcome(record):
        ok = record.status == "done"
        accept(record)
        batch.add(record)
        report.durations[record.id] = record.duration
        if not ok:
            report.errors[record.id] = record.error
        running_labels.pop(record.id, None)
        for blocked in scheduler.finish(state, record.id, ok):
            batch.add(make_blocked(blocked, record.id))

    try:
        while not scheduler.is_finished(state):
            idle = executor.idle()
            # first the workers holding a parent of a ready node, then anyone
            for worker, only_held in [(w, True) for w in idle] + [(w, False) for w in idle]:
                if worker.busy:
                    continue
                node_id = scheduler.next_ready(state, worker.held(), only_held)
                if node_id is None:
                    continue
                task = make_task(node_id, scheduler.released_by(state, node_id),
                                 scheduler.has_dependents(state, node_id))
                running_labels[node_id] = label(node_id)
                executor.submit(worker, task)
            batch.flush(force=executor.collect_blocks)
            try:
                records = executor.collect()
            except Exception as error:
                failed = getattr(error, "abgraph_record", None)
                if failed is not None:
                    record_outcome(failed)
                raise
            for record in records:
                record_outcome(record)
            if progress:
                progress.update(len(state.executed), len(state.failed), running_labels.values())
    except KeyboardInterrupt:
        report.interrupted = True
        executor.close(cancel=True)
    finally:
        batch.flush(force=True)
        if progress:
            progress.update(len(state.executed), len(state.failed), running_labels.values(), force=True)
            progress.close()
    report.executed = list(state.executed)
    report.failed = list(state.failed)
    report.blocked = list(state.blocked)
    report.not_run = scheduler.unfinished(state)
    report.elapsed = time.perf_counter() - start
    return report
