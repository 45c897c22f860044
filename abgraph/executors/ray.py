"""Ray: each node a Ray task with its resource request, for runs larger than one machine.

Needs the `ray` extra (`pip install abgraph[ray]`). Workers write blobs to the
experiment's object store, which every node of the cluster must reach (a shared
folder, or an fsspec URL such as ``s3://bucket/study``); only the process that
called `run()` writes the index. A task whose node or worker dies is retried by
Ray `retries` times, elsewhere if it can; after that its node fails as "node
lost", its descendants are blocked, and a rerun computes them. When the driver
dies, Ray ends the tasks it owned: nothing of the run is left on the cluster.
"""
from __future__ import annotations

import time

from .. import serialization
from .base import Executor, Worker
from .task import StateCache, execute, record_for

_cache = None  # per Ray worker process: the states it last made, for chains
_stores: dict = {}  # per Ray worker process: (location, options) -> its store, opened and checked once


def _store(location: str, storage_options: dict):
    from ..store import open_store
    key = (location, repr(sorted(storage_options.items())))
    if key not in _stores:
        _stores[key] = open_store(location, storage_options or None)
    _stores[key].forget()
    return _stores[key]


def _run_on_ray(message: bytes, objects_root: str, storage_options: dict, num_gpus: float):
    """The body of a Ray task; the record says which Ray node ran it."""
    global _cache
    import ray

    if _cache is None:
        _cache = StateCache(capacity=2)
    context = ray.get_runtime_context()
    granted = ray.get_gpu_ids() if num_gpus else []
    # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it granted: ours is cuda:0. A GPU
    # resource declared on a node without CUDA (`ray start --num-gpus` on a CPU
    # host) still limits how many tasks share it; they compute on the CPU.
    device = "cuda:0" if granted and _cuda_available() else "cpu"
    task = serialization.loads(message)
    record = execute(task, _store(objects_root, storage_options), _cache, device)
    record.environment.update(ray_node=context.get_node_id(), ray_gpus=[str(g) for g in granted])
    return record


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def _lost(error) -> bool:
    """Did the task fail because its worker or node died (not by its own code)?"""
    import ray.exceptions as rx
    return not isinstance(error, rx.RayTaskError) and isinstance(error, (rx.RayError, ConnectionError))


class RayExecutor(Executor):
    """Run each node as a Ray task requesting `num_cpus`, `num_gpus` and `resources`.

    `address`: a running cluster (``"auto"``, ``"127.0.0.1:6379"``,
    ``"ray://host:10001"``) or None for a local one started here; `num_gpus`
    may be a fraction (0.25: four tasks share a GPU); `resources`: custom
    resources each task needs (``{"big_memory": 1}`` pins tasks to the nodes
    started with it); `store`: the experiment's object location as the
    cluster's nodes see it (default: the same); `retries`: Ray re-runs a task
    whose worker or node died this many times; `max_in_flight` bounds the tasks
    submitted at once (default: twice the cluster's CPUs).
    """

    def __init__(self, address=None, num_cpus: float = 1, num_gpus: float = 0, store=None,
                 retries: int = 0, max_in_flight=None, resources=None, **init_kwargs):
        try:
            import ray  # noqa: F401  (only to fail early with a clear message)
        except ImportError as error:
            raise ImportError("RayExecutor needs Ray: pip install 'abgraph[ray]'") from error
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus
        self.store, self.retries, self.max_in_flight = store, retries, max_in_flight
        self.resources = dict(resources or {})
        self.init_kwargs = init_kwargs
        self._pending: dict = {}  # ObjectRef -> (worker slot, task)
        self._started_ray = False

    def open(self, objects) -> None:
        import ray
        if not ray.is_initialized():
            ray.init(address=self.address, log_to_driver=False, **self.init_kwargs)
            self._started_ray = True
        self.objects_root = str(self.store or objects.location)
        self.storage_options = getattr(objects, "storage_options", {})
        self.slots = [Worker(f"ray-{i}", "cuda" if self.num_gpus else "cpu")
                      for i in range(self.max_in_flight or self._fitting(ray.cluster_resources()))]
        self._remote = ray.remote(_run_on_ray).options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, resources=self.resources or None,
            max_retries=self.retries)

    def _fitting(self, cluster: dict) -> int:
        """Twice the tasks the cluster can run at once, so none of its slots waits for the driver."""
        asked = dict(self.resources, CPU=self.num_cpus, GPU=self.num_gpus)
        fits = [cluster.get(name, 0) / amount for name, amount in asked.items() if amount]
        return max(1, int(2 * min(fits))) if fits else 2 * int(cluster.get("CPU", 1))

    def idle(self) -> list:
        return [slot for slot in self.slots if not slot.busy]

    def submit(self, worker, task) -> None:
        worker.task, worker.started = task, time.time()
        message = serialization.dumps(task)
        ref = self._remote.remote(message, self.objects_root, self.storage_options, self.num_gpus)
        self._pending[ref] = worker

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
            except Exception as error:  # the worker or its node died, or the task could not run
                now = time.time()
                if _lost(error):
                    message = (f"node lost: the Ray worker or node running this task died "
                               f"({type(error).__name__}: {error}); nodes already finished are kept. "
                               f"Rerun to compute it, or give RayExecutor(retries=N) so Ray retries "
                               f"it elsewhere (it had {self.retries})")
                else:
                    message = f"Ray failed the task: {type(error).__name__}: {error}"
                records.append(record_for(task, status="failed", started=worker.started, finished=now,
                                          duration=now - worker.started, environment={"device": "ray"},
                                          error=message))
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
