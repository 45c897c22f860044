"""The executor interface: where tasks run. What runs when is the scheduler's job."""
from __future__ import annotations


class Worker:
    """A slot that runs one task at a time and may hold states in memory."""

    def __init__(self, name, device="cpu"):
        self.name, self.device = name, device
        self.task = None  # the task it is running, set by its executor

    @property
    def busy(self) -> bool:
        return self.task is not None

    def held(self) -> set:
        return set()


class Executor:
    """Subclass and implement `open`, `idle`, `submit` and `collect`.

    The run loop asks `idle()` for free workers, gives each a task with
    `submit(worker, task)`, and waits in `collect()` for finished records.
    A task is run with `task.execute`, which handles states only through the
    public payload API (`abgraph.payloads`).
    """

    collect_blocks = True  # collect() may wait: the run loop stores finished records first

    def open(self, objects) -> None:
        """Start workers; `objects` is the experiment's object store."""

    def idle(self) -> list:
        raise NotImplementedError

    def submit(self, worker, task) -> None:
        raise NotImplementedError

    def collect(self) -> list:
        """Block until at least one task is finished; return their NodeRecords."""
        raise NotImplementedError

    def running(self) -> dict:
        """node id -> worker name, for the progress display."""
        return {}

    def end_run(self) -> None:
        """The run is over: stop the workers, unless this executor keeps them for the next run."""
        self.close()

    def close(self, cancel: bool = False) -> None:
        """Stop workers; `cancel` stops running tasks (Ctrl-C)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close(cancel=exc[0] is not None)
