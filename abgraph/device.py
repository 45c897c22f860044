"""The device the running executor gave the current recipe."""
from __future__ import annotations

import contextlib
import contextvars

_device: contextvars.ContextVar = contextvars.ContextVar("abgraph_device", default="cpu")


def current_device():
    """Where a recipe should put its tensors (`cpu` outside a run), a `torch.device`."""
    import torch   # not at import time: the `abgraph` command never needs torch
    return torch.device(_device.get())


@contextlib.contextmanager
def using_device(device):
    token = _device.set(str(device))
    try:
        yield
    finally:
        _device.reset(token)
