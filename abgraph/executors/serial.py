"""In-process execution, one node at a time: for debugging (pdb works in recipes)."""
from __future__ import annotations

from ..device import check_available
from .base import Executor, Worker
from .task import StateCache, execute


class SerialExecutor(Executor):
    """Runs every node in the calling process on `device`.

    With `raise_errors=True` a recipe's exception propagates out of `run()`
    (for `pdb.pm()`), after the finished nodes are stored.
    """

    collect_blocks = False  # collect() runs the task right here

    def __init__(self, device="cpu", raise_errors: bool = False, cache_size: int = 8):
        self.device, self.raise_errors = device, raise_errors
        self.cache = StateCache(cache_size)
        self._worker = _InProcessWorker(self.cache, device)

    def open(self, objects) -> None:
        check_available([self.device])
        self.objects = objects

    def idle(self) -> list:
        return [] if self._worker.busy else [self._worker]

    def submit(self, worker, task) -> None:
        worker.task = task

    def collect(self) -> list:
        task, self._worker.task = self._worker.task, None
        return [execute(task, self.objects, self.cache, self.device, reraise=self.raise_errors)]

    def running(self) -> dict:
        return {self._worker.task.node_id: "main"} if self._worker.busy else {}


class _InProcessWorker(Worker):
    def __init__(self, cache, device):
        super().__init__("main", device)
        self.cache = cache

    def held(self) -> set:
        return self.cache.held()
