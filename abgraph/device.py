"""The device the running executor gave the current recipe."""
from __future__ import annotations

import contextlib
import contextvars
import os

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


def check_available(devices) -> None:
    """Refuse, before any worker starts, a device this machine does not have
    (unless ABGRAPH_UNCHECKED_DEVICES=1: device names as mere labels, for tests
    of placement on a machine without those devices)."""
    if os.environ.get("ABGRAPH_UNCHECKED_DEVICES") == "1":
        return
    import torch
    for device in devices:
        kind, _, index = str(device).partition(":")
        if kind == "cuda":
            count = torch.cuda.device_count()
            if int(index or 0) >= count:
                raise ValueError(f"device {device!r} is not on this machine: it has {count} CUDA device(s)"
                                 + (f" (cuda:0 to cuda:{count - 1})" if count else "")
                                 + "; use devices=['cpu'] or the CUDA devices it has")
        elif kind == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r} is not on this machine (no Apple MPS); use 'cpu'")
