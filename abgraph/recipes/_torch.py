"""Helpers shared by the built-in torch recipes (not public API).

Checking a choice against the valid names, seeding without touching the
caller's random state, moving a model to the device and back, turning a
dataset attribute into batches, and keeping pruned tensors consistent.
"""
from __future__ import annotations

import contextlib
import difflib
import numbers
import random
import weakref

import numpy
import torch
from torch.nn.utils import prune as torch_prune

from .. import identity
from .base import Recipe


class BuiltinRecipe(Recipe):
    """Base of the built-in recipes: each sets its own `VERSION`, so editing
    unrelated library code keeps users' caches. A user's subclass that sets no
    `VERSION` of its own is versioned by its own source plus the built-in's
    `VERSION` (plain inheritance of `VERSION` would let a subclass's edited
    `run()` reuse stale nodes)."""

    _versions: "weakref.WeakKeyDictionary[type, str]" = weakref.WeakKeyDictionary()

    def code_version(self) -> str:
        cls = type(self)
        if cls.__dict__.get("VERSION") is not None:
            return f"v:{cls.__dict__['VERSION']}"
        cached = BuiltinRecipe._versions.get(cls)
        if cached is None:
            parts = []
            for klass in cls.__mro__:
                if klass.__dict__.get("VERSION") is not None:
                    parts.append(f"v:{klass.__dict__['VERSION']}")
                    break
                parts.append(identity.normalized_source(klass))
            cached = BuiltinRecipe._versions[cls] = "src:" + identity.digest(parts)
        return cached

# -- validation -------------------------------------------------------------------------


def choice(owner: str, what: str, value, valid) -> str:
    """`value` (case-insensitive) if it is one of `valid`, else a ValueError that
    lists the valid names, the closest first."""
    valid = list(valid)
    if isinstance(value, str) and value.lower() in valid:
        return value.lower()
    if not isinstance(value, str):
        raise TypeError(f"{owner}: {what} must be a name, one of {', '.join(map(repr, valid))}; "
                        f"got {value!r} ({type(value).__name__})")
    raise ValueError(f"{owner}: unknown {what} {value!r}; valid: {ordered_by_closeness(value, valid)}"
                     + did_you_mean(value, valid))


def ordered_by_closeness(name: str, names, limit: int = 40) -> str:
    """`names` as a readable list, the closest to `name` first (at most `limit`)."""
    names = list(dict.fromkeys(names))
    close = difflib.get_close_matches(name.lower(), names, n=len(names), cutoff=0.0)
    ordered = close + [n for n in names if n not in close]
    shown = ", ".join(map(repr, ordered[:limit]))
    return shown + (f", … ({len(ordered) - limit} more)" if len(ordered) > limit else "")


def did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name.lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def integer(owner: str, what: str, value, minimum=None) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, numpy.integer)):
        if isinstance(value, (float, numpy.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{owner}: {what} must be an int, not {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {what} must be at least {minimum}, not {value}")
    return value


def real(owner: str, what: str, value, minimum=None, strictly=False) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, numpy.number)):
        raise TypeError(f"{owner}: {what} must be a number, not {value!r} ({type(value).__name__})")
    value = float(value)
    if value != value:
        raise ValueError(f"{owner}: {what} is NaN")
    if minimum is not None and (value <= minimum if strictly else value < minimum):
        raise ValueError(f"{owner}: {what} must be {'>' if strictly else '>='} {minimum}, not {value}")
    return value


def names(owner: str, what: str, value):
    """None, one name, or a list/tuple of names -> None or a tuple of names."""
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{owner}: {what} must be None, a name or a list of names (str), not {value!r}")
    if not value:
        raise ValueError(f"{owner}: {what} is empty; give None for the default")
    duplicates = sorted({v for v in value if list(value).count(v) > 1})
    if duplicates:
        raise ValueError(f"{owner}: {what} names {', '.join(map(repr, duplicates))} more than once")
    return tuple(value)


# -- randomness -------------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int, device=None):
    """Seed torch (CPU and `device`), numpy and `random` for the block, and put the
    caller's random state back afterwards (a SerialExecutor runs in the user's process)."""
    devices = [device] if device is not None and torch.device(device).type == "cuda" else []
    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        numpy.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            numpy.random.set_state(numpy_state)


# -- data -------------------------------------------------------------------------------


def as_dataset(value, owner: str, attribute: str):
    """A torch Dataset; a pair (inputs, targets) of equal-length tensors or arrays
    is wrapped in a TensorDataset."""
    if isinstance(value, torch.utils.data.Dataset):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2:
        x, y = (torch.as_tensor(v) if isinstance(v, numpy.ndarray) else v for v in value)
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            if len(x) != len(y):
                raise ValueError(f"{owner}: state.{attribute} has {len(x)} inputs but {len(y)} targets")
            return torch.utils.data.TensorDataset(x, y)
    raise TypeError(f"{owner}: state.{attribute} must be a torch Dataset yielding (input, target) "
                    f"or a pair (inputs, targets) of tensors, not {type(value).__name__}")


def to_device(batch, device, dtype=None):
    """Move a tensor (or a tuple/list/dict of them) to `device`; floating inputs
    are cast to `dtype` (the model's) when given."""
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point() and batch.dtype != dtype:
            batch = batch.to(dtype)
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, dtype) for k, v in batch.items()}
    return batch


def floating_dtype(model):
    for tensor in model.parameters():
        if tensor.is_floating_point():
            return tensor.dtype
    return None


def model_of(state, owner: str):
    model = state.model
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{owner}: state.model must be a torch.nn.Module, not {type(model).__name__}")
    return model


@contextlib.contextmanager
def on_device(model, device):
    """Run the block with `model` on `device`; it is back on the CPU afterwards
    (payloads are stored from the CPU) with its pruned tensors recomputed."""
    device = torch.device(device)
    moved = device.type != "cpu"
    if moved:
        model.to(device)
    try:
        yield device
    finally:
        if moved:
            model.to("cpu")
        refresh_pruned(model)


# -- pruning ----------------------------------------------------------------------------


def pruning_hooks(module):
    """(tensor name, pruning method) of every pruned tensor of `module` itself."""
    return [(hook._tensor_name, hook) for hook in module._forward_pre_hooks.values()
            if isinstance(hook, torch_prune.BasePruningMethod)]


def refresh_pruned(model) -> None:
    """Recompute `weight = weight_orig * weight_mask` for every pruned tensor.

    torch recomputes it only before a forward pass, so after an optimizer step,
    a device move or a change of `weight_orig` the attribute is stale; a stored
    payload should show the weights the model actually uses.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, hook in pruning_hooks(module):
                setattr(module, name, hook.apply_mask(module))


_HOOK_KEY_BASE = 1 << 48


def normalize_pruning_hooks(model) -> None:
    """Give pruning hooks deterministic keys in each module's hook dict.

    torch keys hooks by a process-wide counter, so the same pruning done twice
    in one process pickles differently (the payload digest would not show that
    the node was reproduced), and a restored model's keys can collide with the
    counter of the process that loads it (torch would then overwrite one hook
    with another). Pruning hooks get keys far above any counter value instead;
    other hooks keep theirs, so their handles still work.
    """
    for module in model.modules():
        hooks = module._forward_pre_hooks
        if not any(isinstance(h, torch_prune.BasePruningMethod) for h in hooks.values()):
            continue
        items = list(hooks.items())
        hooks.clear()
        index = 0
        for key, hook in items:
            if isinstance(hook, torch_prune.BasePruningMethod):
                key, index = _HOOK_KEY_BASE + index, index + 1
            hooks[key] = hook
