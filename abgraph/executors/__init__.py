"""Executors: where nodes run. All share one scheduler (`scheduler.py`)."""
from .base import Executor, Worker
from .process import ProcessExecutor, interactive
from .serial import SerialExecutor


_session_executor = None


def default_executor():
    """What `Experiment.run()` uses when given none: every core or GPU. In a
    notebook or REPL it is one executor for the session, whose workers stay
    between runs (closed after their idle timeout or at exit)."""
    global _session_executor
    if not interactive():
        return ProcessExecutor()
    if _session_executor is None:
        _session_executor = ProcessExecutor(keep_alive=True)
    return _session_executor


def __getattr__(name):
    if name == "RayExecutor":  # imported on demand: Ray is an optional extra
        from .ray import RayExecutor
        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Executor", "ProcessExecutor", "RayExecutor", "SerialExecutor", "Worker", "default_executor"]
