"""Ray: each node a Ray task with its resource request, for runs larger than one machine.

Needs the `ray` extra (`pip install abgraph[ray]`). Workers write blobs to the
experiment's `objects/` folder, which every node of the cluster must reach (a
shared filesystem); only the process that called `run()` writes the index.
"""
from __future__ import annotations

import time

from .. import serialization
from .base import Executor, Worker
from .task import StateCache, execute, record_for

_cache = None  # per Ray worker process: the states it last made, for chains


def _run_on_ray(message: bytes, objects_root: str, num_gpus: float):
    """The body of a Ray task."""
    global _cache
    import ray

    from ..store import open_store
    if _cache is None:
        _cache = StateCache(capacity=2)
    device = "cpu"
    if num_gpus:
        device = "cuda:0"  # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it granted
        assert ray.get_gpu_ids(), "Ray granted no GPU"
    task = serialization.loads(message)
    return execute(task, open_store(objects_root), _cache, device)


class RayExecutor(Executor):
    """Run each node as a Ray task requesting `num_cpus` and `num_gpus`.

    `address`: a running cluster (``"auto"``, ``"ray://host:10001"``) or None for
    a local one started here; `store`: the path of the experiment's object
    folder as the cluster's nodes see it (default: the same path); `retries`:
    Ray re-runs a task whose worker died this many times; `max_in_flight`
    bounds the tasks submitted at once (default: twice the cluster's CPUs).
    """

    def __init__(self, address=None, num_cpus: float = 1, num_gpus: float = 0, store=None,
                 retries: int = 0, max_in_flight=None, **init_kwargs):
        try:
            import ray  # noqa: F401  (only to fail early with a clear message)
        except ImportError as error:
            raise ImportError("RayExecutor needs Ray: pip install 'abgraph[ray]'") from error
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.store, self.retries, self.max_in_flight = store, retries, max_in_flight
        self.init_kwargs = init_kwargs
        self._pending: dict = {}  # ObjectRef -> (worker slot, task)
        self._started_ray = False

    def open(self, objects) -> None:
        import ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, **self.init_kwargs)
            self._started_ray = True
        self.objects_root = str(self.store or objects.location)
        cpus = ray.cluster_resources().get("CPU", 1)
        slots = self.max_in_flight or max(1, int(2 * cpus / max(self.num_cpus, 0.01)))
        self.slots = [Worker(f"ray-{i}", "cuda" if self.num_gpus else "cpu") for i in range(slots)]
        self._remote = ray.remote(_run_on_ray).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=self.retries)

    def idle(self) -> list:
        return [slot for slot in self.slots if not slot.busy]

    def submit(self, worker, task) -> None:
        worker.task, worker.started = task, time.time()
        message = serialization.dumps(task)
        self._pending[self._remote.remote(message, self.objects_root, self.num_gpus)] = worker

    def collect(self) -> list:
        import ray
        ray.wait(list(self._pending), num_returns=1)  # block for one, then take all that are done
        done, _ = ray.wait(list(self._pending), num_returns=len(self._pending), timeout=0)
        records = []
        for ref in done:
            worker = self._pending.pop(ref)
            task, worker.task = worker.task, None
            try:
                records.append(ray.get(ref))
            except Exception as error:  # the worker died, or the task could not run
                now = time.time()
                records.append(record_for(task, status="failed", started=worker.started, finished=now,
                                          duration=now - worker.started, environment={"device": "ray"},
                                          error=f"worker died or Ray failed the task: {error}"))
        return records

    def running(self) -> dict:
        return {w.task.node_id: w.name for w in self._pending.values()}

    def close(self, cancel: bool = False) -> None:
        import ray
        if cancel:
            for ref in self._pending:
                ray.cancel(ref, force=True)
        self._pending.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
