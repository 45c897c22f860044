"""A worker process: `python -m abgraph.executors.worker FD`.

Started fresh (never by re-importing the user's script, which may have no
`if __name__ == "__main__"` guard), it receives pickled tasks on a socket,
runs them with `task.execute`, and sends slim records back.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import sys


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the driver dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


def serve(fd: int) -> int:
    """Run tasks until the driver closes the connection (0) or, for a kept
    worker, until no task came for `idle_timeout` seconds (IDLE_EXIT)."""
    from multiprocessing.connection import Connection

    from .. import serialization
    from .process import IDLE_EXIT
    connection = Connection(socket.socket(fileno=fd).detach())
    settings = pickle.loads(connection.recv_bytes())
    sys.path[:0] = [p for p in settings["sys_path"] if p not in sys.path]
    import torch
    torch.set_num_threads(settings["threads"])
    from ..store import open_store
    from .task import StateCache, execute
    objects = open_store(*settings["objects"])
    cache = StateCache(settings["cache_size"])
    try:
        connection.send_bytes(b"ready")
    except OSError:
        return 0  # the run ended before this worker was needed
    while True:
        try:
            if not connection.poll(settings["idle_timeout"]):
                return IDLE_EXIT
            kind, body = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return 0  # the driver is gone or closed us
        if kind == "objects":  # a kept worker now serves another experiment
            objects, cache = open_store(*body), StateCache(settings["cache_size"])
            continue
        loads = cache.loads
        try:
            task = serialization.loads(body)
        except Exception as error:  # e.g. a class that cannot be rebuilt here
            import traceback
            connection.send_bytes(pickle.dumps(("unloadable", traceback.format_exc(), str(error))))
            continue
        record = execute(task, objects, cache, settings["device"])
        out_of_memory = record.status == "failed" and _out_of_memory(record.error)
        connection.send_bytes(pickle.dumps(("record", record, cache.loads - loads, out_of_memory)))
        if out_of_memory:
            return 0  # a fresh worker takes the next task, with a clean CUDA context


def _out_of_memory(error: str) -> bool:
    """The recipe ran out of accelerator memory (torch's OutOfMemoryError, or the
    RuntimeError older torch raises)."""
    last = (error or "").strip().splitlines()[-1:] or [""]
    return "OutOfMemoryError" in last[0] or "out of memory" in last[0] and "CUDA" in last[0]


def main(fd: int) -> None:
    """The whole life of a worker, started fresh or forked."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _die_with_parent()
    code = 0
    try:
        code = serve(fd)
    finally:
        # Every result is sent: skip the interpreter's slow teardown of torch's objects.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main(int(sys.argv[1]))
