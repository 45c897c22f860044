"""Executors: where nodes run. All share one scheduler (`scheduler.py`)."""
from .base import Executor, Worker
from .serial import SerialExecutor


def default_executor():
    """What `Experiment.run()` uses when given none."""
    return SerialExecutor()


__all__ = ["Executor", "SerialExecutor", "Worker", "default_executor"]
