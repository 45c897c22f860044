"""The device the running executor gave the current recipe."""
from __future__ import annotations

import contextlib
import contextvars

import torch

_device: contextvars.ContextVar = contextvars.ContextVar("abgraph_device", default="cpu")


def current_device() -> torch.device:
    """Where a recipe should put its tensors (`cpu` outside a run)."""
    return torch.device(_device.get())


@contextlib.contextmanager
def using_device(device):
    token = _device.set(str(device))
    try:
        yield
    finally:
        _device.reset(token)
