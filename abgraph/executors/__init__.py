"""Executors: where nodes run. All share one scheduler (`scheduler.py`)."""
from .base import Executor, Worker
from .process import ProcessExecutor
from .serial import SerialExecutor


def default_executor():
    """What `Experiment.run()` uses when given none: every core or GPU."""
    return ProcessExecutor()


def __getattr__(name):
    if name == "RayExecutor":  # imported on demand: Ray is an optional extra
        from .ray import RayExecutor
        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Executor", "ProcessExecutor", "RayExecutor", "SerialExecutor", "Worker", "default_executor"]
