"""Local worker processes, one per device slot: the default executor."""
from __future__ import annotations

import atexit
import functools
import os
import re
import pickle
import signal
import socket
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait

from .. import serialization
from ..device import check_available
from ..store import NodeRecord
from .base import Executor, Worker
from .task import StateCache, record_for


IDLE_EXIT = 75  # the exit code of a kept worker that had no work for its idle timeout
_DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def default_devices(workers=None, workers_per_device=1) -> list:
    """`workers_per_device` workers per visible GPU, else `workers` (default: every
    core) CPU slots: without a GPU the default is one worker per core."""
    import torch
    if workers is None and torch.cuda.is_available():
        return per_device([f"cuda:{i}" for i in range(torch.cuda.device_count())], workers_per_device)
    return ["cpu"] * (workers or os.cpu_count() or 1)


def per_device(devices, workers_per_device) -> list:
    """Each device `workers_per_device` times, interleaved so that the first
    workers started spread over every device."""
    return [device for _ in range(workers_per_device) for device in devices]


def assign_devices(workers, devices, workers_per_device=1) -> list:
    """The device of each worker: `devices` (each `workers_per_device` times)
    cycled over `workers` slots."""
    if isinstance(workers_per_device, bool) or not isinstance(workers_per_device, int) \
            or workers_per_device < 1:
        raise ValueError(f"workers_per_device must be a positive int, not {workers_per_device!r}")
    if workers is not None and workers_per_device > 1:
        raise ValueError(f"give workers={workers} or workers_per_device={workers_per_device}, not both: "
                         "workers counts every worker, workers_per_device those on each device")
    if devices is not None:
        devices = [str(d) for d in devices]
        for device in devices:
            if not _DEVICE.fullmatch(device):
                raise ValueError(f"device {device!r} is not one of 'cpu', 'cuda:N', 'mps', 'xpu:N'")
        if not devices:
            raise ValueError("devices is empty; give e.g. ['cuda:0', 'cuda:1'] or ['cpu'] * 4")
        devices = per_device(devices, workers_per_device)
        count = workers or len(devices)
        return [devices[i % len(devices)] for i in range(count)]
    return default_devices(workers, workers_per_device)


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


@functools.cache
def warm_for_forks() -> None:
    """Import what torch imports at a process's first optimizer (`torch._dynamo`,
    about a second) once in the driver, so that no forked worker pays it at its
    first `Train`, in this run or the next."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # noqa: BLE001 - an optional warm-up: a torch without it costs nothing here
        pass


class _Forked:
    """The little of `subprocess.Popen` the executor uses, for a forked worker."""

    def __init__(self, pid):
        self.pid, self.returncode = pid, None

    def poll(self):
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

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

    def exited(self) -> bool:
        """The process is gone (idle timeout, killed while idle); reaps it."""
        return self.process is not None and self.process.poll() is not None

    def forget(self) -> None:
        """Drop the handles of a process that has exited; a new one starts on the next task."""
        if self.connection is not None:
            self.connection.close()
        self.process = self.connection = None


def _store_identity(location) -> tuple:
    """A local object folder deleted and made again between runs is another
    store: states a worker kept would name blobs it no longer has."""
    try:
        return location, os.stat(location).st_ino
    except OSError:  # remote (fsspec), or not made yet
        return location, None


def interactive() -> bool:
    """A notebook or a REPL (`python -i` included): runs come one after another
    with the user thinking in between, so workers are worth keeping."""
    return bool(hasattr(sys, "ps1") or sys.flags.interactive or "ipykernel" in sys.modules)


_OPEN_EXECUTORS: set = set()  # held until closed, so that no worker is left to its idle timeout


@atexit.register
def _close_open_executors() -> None:
    """Kept workers end with the interpreter, never later."""
    for executor in list(_OPEN_EXECUTORS):
        executor.close()


class ProcessExecutor(Executor):
    """Runs nodes in persistent worker processes, one per device slot: the default.

    `devices`: e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"] * 4``; by default
    `workers_per_device` workers (default 1) on each visible GPU, else one per
    core. Small models leave a GPU mostly idle, so several workers sharing it
    finish sooner; a worker that runs out of GPU memory fails only its node and
    is replaced. Workers are fresh interpreters (CUDA-safe, like `spawn`, but
    never re-running your script), or forks of this process where that is safe
    (`can_fork`; `start="fresh"` or `"fork"` decides yourself).

    A worker keeps the states it just made (up to `cache_size`) and is given
    their children first. `keep_alive=True` keeps the workers, with those
    states, from one `run()` to the next, as the default executor of a notebook
    or REPL does, and any inside ``with ProcessExecutor() as executor:``. Kept
    workers exit after `idle_timeout` seconds without work, at `close()`, at
    the end of the `with` block and when the interpreter exits; they never
    outlive this process. A worker that dies fails its node ("worker died") and
    is replaced; `retries` re-runs such nodes.
    """

    def __init__(self, workers=None, devices=None, retries: int = 0, cache_size: int = 4,
                 threads=None, start="auto", workers_per_device: int = 1, keep_alive=None,
                 idle_timeout: float | None = 600.0):
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be a positive int, not {workers!r}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be a positive number of seconds or None, not {idle_timeout!r}")
        self.devices = assign_devices(workers, devices, workers_per_device)
        self.workers_per_device = workers_per_device
        self.threads = threads or threads_per_worker(self.devices)
        self.retries, self.cache_size = retries, cache_size
        if start not in ("auto", "fork", "fresh"):
            raise ValueError(f"start must be 'auto', 'fork' or 'fresh', not {start!r}")
        self.start = start
        self.keep_alive, self.idle_timeout = keep_alive, idle_timeout
        self._in_block = False
        self.workers = [_ProcessWorker(f"worker-{i}", d, cache_size) for i, d in enumerate(self.devices)]
        self.attempts: dict = {}
        self.payload_loads = 0
        self.objects_root = self._store = None
        self._retry_queue: list = []
        self._resent: set = set()

    # -- lifecycle -----------------------------------------------------------
    @property
    def keeps_workers(self) -> bool:
        return self._in_block if self.keep_alive is None else self.keep_alive

    def __enter__(self):
        self._in_block = True
        return self

    def __exit__(self, *exc):
        self._in_block = False
        self.close(cancel=exc[0] is not None)

    def open(self, objects) -> None:
        """Start every worker now (they import torch in parallel while the run
        begins); kept workers of an earlier run switch to `objects` if it changed."""
        check_available({worker.device for worker in self.workers})
        # storage_options (endpoint, credentials) travel to the workers, never to disk
        root = (objects.location, getattr(objects, "storage_options", {}))
        identity = _store_identity(objects.location)
        for worker in self.workers:
            if worker.exited():
                worker.forget()
            if worker.process is None:
                continue
            if identity != self._store:  # another experiment, or this folder made anew: forget its states
                self._send(worker, ("objects", root))
                worker.mirror = StateCache(self.cache_size)
        self.objects_root, self._store = root, identity
        for worker in self.workers:
            if worker.process is None:
                self._start(worker)
        _OPEN_EXECUTORS.add(self)

    def end_run(self) -> None:
        if not self.keeps_workers:
            self.close()

    def _start(self, worker: _ProcessWorker) -> None:
        ours, theirs = socket.socketpair()
        fork = self.start == "fork" or (self.start == "auto" and can_fork(self.devices, self.threads))
        if fork:
            warm_for_forks()
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
            "cache_size": self.cache_size, "sys_path": [p for p in sys.path if p],
            "idle_timeout": self.idle_timeout if self.keeps_workers else None}))
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
            if cancel or not worker.task:  # an idle worker has nothing to finish
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
        _OPEN_EXECUTORS.discard(self)

    # -- the executor interface ------------------------------------------------
    def idle(self) -> list:
        while self._retry_queue:
            free = [w for w in self.workers if w.task is None]
            if not free:
                return []
            self.submit(free[0], self._retry_queue.pop())
        return [w for w in self.workers if w.task is None]

    def submit(self, worker, task) -> None:
        try:
            message = serialization.dumps(task)
        except Exception as error:
            raise TypeError(f"the task for node {task.node_id} cannot be sent to a worker process "
                            f"({error}); use SerialExecutor or make the recipe picklable") from error
        if worker.exited():  # it died while idle: a fresh one takes the task
            worker.forget()
        if worker.process is None:
            self._start(worker)
        worker.task, worker.started = task, time.time()
        worker.remember(task)
        try:
            self._send(worker, ("task", message))
        except OSError:  # it died just now: its death is read in collect()
            pass

    @staticmethod
    def _send(worker, message) -> None:
        worker.connection.send_bytes(pickle.dumps(message))

    def collect(self) -> list:
        records = []
        busy = {w.connection: w for w in self.workers if w.task is not None}
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
            record, loads, out_of_memory = rest
            self.payload_loads += loads
            if out_of_memory:
                self._replace_after_out_of_memory(worker, record)
            return [record]
        traceback, error = rest
        return [self._failure(task, worker, f"the task could not be loaded in the worker: {error}\n"
                                            f"{traceback}")]

    def _replace_after_out_of_memory(self, worker, record) -> None:
        """The worker exits after sending this record (its CUDA memory goes with
        it); say on the node who shared the device."""
        sharing = self.devices.count(worker.device)
        record.error = (f"{worker.device} ran out of memory while {sharing} worker(s) of this executor "
                        f"shared it (workers_per_device={self.workers_per_device}); the worker was "
                        f"replaced. Fewer workers per device leave each more memory.\n{record.error}")
        worker.process.wait()
        worker.forget()

    def _worker_died(self, worker) -> list:
        task, worker.task = worker.task, None
        code = worker.process.wait()
        worker.forget()  # restarted on its next task
        if code == IDLE_EXIT and task.node_id not in self._resent:
            self._resent.add(task.node_id)  # it timed out just as the task came: it never ran
            self._retry_queue.append(task)
            return []
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
