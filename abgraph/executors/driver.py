"""The run loop: scheduler decisions, executor work, index writes."""
from __future__ import annotations

import time

from ..report import RunReport
from . import scheduler


def drive(state, executor, make_task, write_record, make_blocked, progress=None, label=str) -> RunReport:
    """Dispatch ready nodes to idle workers until everything is finished.

    Every finished record is written before anything else happens, so an
    interruption (Ctrl-C, a crash of this process) loses only running nodes.
    """
    report = RunReport(cached=list(state.cached))
    start = time.perf_counter()
    running_labels = {}

    def record_outcome(record):
        ok = record.status == "done"
        write_record(record)
        report.durations[record.id] = record.duration
        if not ok:
            report.errors[record.id] = record.error
        running_labels.pop(record.id, None)
        for blocked in scheduler.finish(state, record.id, ok):
            write_record(make_blocked(blocked, record.id))

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
        if progress:
            progress.update(len(state.executed), len(state.failed), running_labels.values(), force=True)
            progress.close()
    report.executed = list(state.executed)
    report.failed = list(state.failed)
    report.blocked = list(state.blocked)
    report.not_run = scheduler.unfinished(state)
    report.elapsed = time.perf_counter() - start
    return report
