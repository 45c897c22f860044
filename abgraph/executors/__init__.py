"""Executors: where nodes run. All share one scheduler (`scheduler.py`)."""
from .base import Executor, Worker
from .process import ProcessExecutor
from .serial import SerialExecutor


def default_executor():
    """What `Experiment.run()` uses when given none: every core or GPU."""
    return ProcessExecutor()


__all__ = ["Executor", "ProcessExecutor", "SerialExecutor", "Worker", "default_executor"]
