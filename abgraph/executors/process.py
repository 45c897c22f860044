"""Local worker processes, one per device slot: the default executor."""
from __future__ import annotations

import os
import re
import pickle
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait

from ..device import check_available
from .. import serialization
from ..store import NodeRecord
from .base import Executor, Worker
from .task import StateCache, record_for


_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def default_devices(workers=None) -> list:
    """One worker per visible GPU, else `workers` (default: every core) CPU slots."""
    import torch
    if workers is None and torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"] * (workers or os.cpu_count() or 1)


def assign_devices(workers, devices) -> list:
    """The device of each worker: `devices` cycled over `workers` slots."""
    if devices is not None:
        devices = [str(d) for d in devices]
        for device in devices:
            if not _DEVICE.fullmatch(device):
                raise ValueError(f"device {device!r} is not one of 'cpu', 'cuda:N', 'mps', 'xpu:N'")
        if not devices:
            raise ValueError("devices is empty; give e.g. ['cuda:0', 'cuda:1'] or ['cpu'] * 4")
        count = workers or len(devices)
        return [devices[i % len(devices)] for i in range(count)]
    return default_devices(workers)


def threads_per_worker(devices) -> int:
    """Split the cores among CPU workers so N workers do not oversubscribe them."""
    cpu_workers = sum(1 for d in devices if d == "cpu") or len(devices)
    return max(1, (os.cpu_count() or 1) // cpu_workers)


def can_fork(devices, threads) -> bool:
    """Forking the driver starts a worker in milliseconds instead of seconds (torch
    is already imported), but it is only safe on Linux, before CUDA is
    initialized here, with no other thread in this process (a notebook kernel
    has some), and for single-threaded CPU workers (OpenMP does not survive a
    fork). Everything else gets a fresh interpreter."""
    import threading

    import torch
    return (sys.platform.startswith("linux") and threads == 1 and all(d == "cpu" for d in devices)
            and not torch.cuda.is_initialized() and threading.active_count() == 1)


class _Forked:
    """The little of `subprocess.Popen` the executor uses, for a forked worker."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def wait(self, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, 0 if deadline is None else os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
            elif time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            else:
                time.sleep(0.01)
        return self.returncode

    def send_signal(self, signum):
        if self.returncode is None:
            os.kill(self.pid, signum)

    def kill(self):
        self.send_signal(signal.SIGKILL)


class _ProcessWorker(Worker):
    def __init__(self, name, device, cache_size):
        super().__init__(name, device)
        self.cache_size = cache_size
        self.mirror = StateCache(cache_size)  # what the process holds, as the driver knows it
        self.process = self.connection = None
        self.started = None

    def held(self) -> set:
        return self.mirror.held()

    def remember(self, task) -> None:
        """What the worker's own cache does with this task, in the same order."""
        if task.keep:
            self.mirror.put(task.node_id, True)
        self.mirror.drop(task.release)


class ProcessExecutor(Executor):
    """Runs nodes in worker processes, one per device slot.

    `devices`: e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"] * 4``; by default one
    worker per visible GPU, else one per core. Workers are fresh interpreters
    (CUDA-safe, like `spawn`, but never re-running your script), or forks of
    this process where that is safe (`can_fork`; `start="fresh"` or `"fork"`
    decides yourself). A worker keeps the states it just made (up to
    `cache_size`) and is given their children first. A worker that dies fails
    its node ("worker died") and is replaced; `retries` re-runs such nodes.
    """

    def __init__(self, workers=None, devices=None, retries: int = 0, cache_size: int = 4,
                 threads=None, start="auto"):
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 1):
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        self.devices = assign_devices(workers, devices)
        self.threads = threads or threads_per_worker(self.devices)
        self.retries, self.cache_size = retries, cache_size
        if start not in ("auto", "fork", "fresh"):
            raise ValueError(f"start must be 'auto', 'fork' or 'fresh', not {start!r}")
        self.start = start
        self.workers = [_ProcessWorker(f"worker-{i}", d, cache_size) for i, d in enumerate(self.devices)]
        self.attempts: dict = {}
        self.payload_loads = 0
        self._retry_queue: list = []

    # -- lifecycle -----------------------------------------------------------
    def open(self, objects) -> None:
        """Start every worker now: they import torch in parallel while the run begins."""
        check_available({worker.device for worker in self.workers})
        self.objects_root = objects.location
        for worker in self.workers:
            if worker.process is None:
                self._start(worker)

    def _start(self, worker: _ProcessWorker) -> None:
        ours, theirs = socket.socketpair()
        fork = self.start == "fork" or (self.start == "auto" and can_fork(self.devices, self.threads))
        if fork:
            worker.process = self._fork(ours, theirs)
        else:
            env = dict(os.environ, OMP_NUM_THREADS=str(self.threads), MKL_NUM_THREADS=str(self.threads))
            worker.process = subprocess.Popen(
                [sys.executable, "-m", "abgraph.executors.worker", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env)
        theirs.close()
        worker.connection = Connection(ours.detach())
        worker.connection.send_bytes(pickle.dumps({
            "objects": self.objects_root, "device": worker.device, "threads": self.threads,
            "cache_size": self.cache_size, "sys_path": [p for p in sys.path if p]}))
        worker.used = False
        worker.mirror = StateCache(self.cache_size)

    def _fork(self, ours, theirs) -> _Forked:
        sys.stdout.flush()  # or the child would print what this process buffered
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return _Forked(pid)
        try:  # the child: keep only its own end of the socket to the driver
            ours.close()
            for other in self.workers:
                if other.connection is not None:
                    other.connection.close()
            from .worker import main
            main(theirs.fileno())
        finally:
            os._exit(1)

    def close(self, cancel: bool = False) -> None:
        for worker in self.workers:
            if worker.process is None:
                continue
            if cancel or not worker.used:  # a worker that never ran a task has nothing to finish
                worker.process.send_signal(signal.SIGTERM)
            worker.connection.close()
        deadline = time.monotonic() + (2 if cancel else 10)
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
            worker.process = worker.connection = worker.task = None

    # -- the executor interface ------------------------------------------------
    def idle(self) -> list:
        while self._retry_queue:
            free = [w for w in self.workers if w.task is None]
            if not free:
                return []
            self.submit(free[0], self._retry_queue.pop())
        return [w for w in self.workers if w.task is None]

    def submit(self, worker, task) -> None:
        if worker.process is None:  # it died: a fresh one replaces it
            self._start(worker)
        worker.task, worker.started, worker.used = task, time.time(), True
        worker.remember(task)
        try:
            message = serialization.dumps(task)
        except Exception as error:
            worker.task = None
            raise TypeError(f"the task for node {task.node_id} cannot be sent to a worker process "
                            f"({error}); use SerialExecutor or make the recipe picklable") from error
        worker.connection.send_bytes(message)

    def collect(self) -> list:
        busy = {w.connection: w for w in self.workers if w.task is not None}
        records = []
        while not records and busy:
            for connection in wait(list(busy)):
                worker = busy.pop(connection)
                records.extend(self._receive(worker))
            if not records:
                busy = {w.connection: w for w in self.workers if w.task is not None}
        return records

    def _receive(self, worker) -> list:
        try:
            message = worker.connection.recv_bytes()
            if message == b"ready":
                return []
        except (EOFError, OSError):
            return self._worker_died(worker)
        kind, *rest = pickle.loads(message)
        task, worker.task = worker.task, None
        if kind == "record":
            record, loads = rest
            self.payload_loads += loads
            return [record]
        traceback, error = rest
        return [self._failure(task, worker, f"the task could not be loaded in the worker: {error}\n"
                                            f"{traceback}")]

    def _worker_died(self, worker) -> list:
        task, worker.task = worker.task, None
        code = worker.process.wait()
        worker.connection.close()
        worker.process = worker.connection = None  # restarted on its next task
        reason = (f"worker died: killed by signal {signal.Signals(-code).name} (exit code {code})"
                  if code < 0 else f"worker died with exit code {code}")
        if code == -signal.SIGKILL:
            reason += "; a SIGKILL often means the machine ran out of memory"
        attempts = self.attempts[task.node_id] = self.attempts.get(task.node_id, 0) + 1
        if attempts <= self.retries:
            self._retry_queue.append(task)
            return []
        return [self._failure(task, worker, reason)]

    @staticmethod
    def _failure(task, worker, reason) -> NodeRecord:
        now = time.time()
        return record_for(task, status="failed", error=reason, started=worker.started, finished=now,
                          duration=now - (worker.started or now), environment={"device": worker.device})

    def running(self) -> dict:
        return {w.task.node_id: w.name for w in self.workers if w.task is not None}
