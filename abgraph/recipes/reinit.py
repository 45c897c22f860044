"""`Reinit` and `Rewind`: new weights for a (pruned) model, keeping its masks."""
from __future__ import annotations

import copy

import torch

from ..state import StatePromise
from . import _torch
from .base import as_promise


class Reinit(_torch.BuiltinRecipe):
    """Re-initialise `state.model`'s parameters with torch's own initialisers
    (each module's `reset_parameters()`), seeded with `seed`; pruning masks are kept.

    `targets`: None for the whole model, or module names as in
    `model.named_modules()` (e.g. "0", "encoder"), each meaning that module and
    everything inside it. A module that owns parameters but has no
    `reset_parameters()` (and no enclosing module that has one) is an error, not
    silently left as it was. Buffers are reset where `reset_parameters()` does it
    (BatchNorm's running statistics).

    Modules are reset in `named_modules()` order, the order a model built by
    `nn.Sequential` or `__init__` draws its initial weights in: `Reinit(seed=s)` of a
    model usually reproduces the weights it had when it was built with torch
    seeded with `s` (a `TorchState` root with `seed=s`).
    """

    PROPERTIES = ["targets", "seed"]
    REQUIRES = ("model",)
    VERSION = "1"

    def __init__(self, targets=None, seed=0):
        self.targets = _torch.names("Reinit", "targets", targets)
        self.seed = _torch.integer("Reinit", "seed", seed)

    def run(self, state):
        model = _torch.model_of(state, "Reinit")
        selected = select_modules(model, self.targets, "Reinit")
        resettable = [(name, module) for name, module in selected if _reset_function(module) is not None]
        covered = [name for name, _ in resettable]
        orphans = [f"{name or '(the model)'} ({type(module).__name__})" for name, module in selected
                   if _reset_function(module) is None and _owns_parameters(module)
                   and not any(_inside(name, parent) for parent in covered)]
        if orphans:
            raise ValueError(f"Reinit: cannot re-initialise {', '.join(orphans)}: it owns parameters but has no "
                             "reset_parameters(); implement one, or leave it out of the targets")
        if not resettable:
            raise ValueError(f"Reinit: nothing to re-initialise in {self.targets or 'the model'}")
        with _torch.seeded(self.seed), torch.no_grad():
            for _, module in resettable:
                reset_keeping_masks(module)
        _torch.refresh_pruned(model)
        return state


def select_modules(model, targets, owner):
    """[(name, module)] of the named modules and everything inside them, in model order."""
    modules = list(model.named_modules())
    if targets is None:
        return modules
    known = {name for name, _ in modules}
    for target in targets:
        if target not in known:
            raise ValueError(f"{owner}: target {target!r} is not a module of the model ({type(model).__name__}); "
                             f"its modules: {_torch.ordered_by_closeness(target, [n for n in known if n])}")
    return [(name, module) for name, module in modules if any(_inside(name, t) for t in targets)]


def _inside(name, prefix) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _owns_parameters(module) -> bool:
    return any(p is not None for p in module._parameters.values())


def _reset_function(module):
    for attribute in ("reset_parameters", "_reset_parameters"):
        function = getattr(module, attribute, None)
        if callable(function):
            return function
    return None


def reset_keeping_masks(module) -> None:
    """`module.reset_parameters()`, where a pruned tensor's `*_orig` parameter
    stands in for the tensor while it runs, so the new values go there and the
    mask stays."""
    pruned = [name for name, _ in _torch.pruning_hooks(module)]
    for name in pruned:
        module.__dict__.pop(name, None)  # the computed `orig * mask` attribute
        module._parameters[name] = module._parameters[name + "_orig"]
    try:
        _reset_function(module)()
    finally:
        for name in pruned:
            del module._parameters[name]
        for name, hook in _torch.pruning_hooks(module):
            setattr(module, name, hook.apply_mask(module))


class Rewind(_torch.BuiltinRecipe):
    """Lottery-ticket rewinding: keep the pruning masks of the input state, take
    every weight from the state `to` (usually an ancestor: the initialisation or
    an early-training node) — `Rewind(to=trained_1_epoch)(pruned)`.

    Parameters (a pruned one's `*_orig`, so masked entries read zero) and
    buffers other than masks (BatchNorm statistics) are copied from `to`, taking
    `to`'s own `*_orig` values where `to` was pruned too. Both models must have the
    same parameter names and shapes.

    `to` becomes the node's second parent, so the node's identity covers it; it is
    not a property. A two-input recipe: `run(state, ancestor)`.
    """

    PROPERTIES = []
    REQUIRES = ("model",)
    VERSION = "1"

    def __init__(self, to):
        to = as_promise(to)
        if not isinstance(to, StatePromise):
            raise TypeError(f"Rewind: to must be a state promise or a stored node (the node to take the "
                            f"weights from), not {type(to).__name__}")
        self.to = to

    def __call__(self, state):
        # The recipe travels to worker processes; the promise holds the
        # Experiment (an SQLite connection) and is passed as an input instead.
        recipe = copy.copy(self)
        del recipe.to
        return super(Rewind, recipe).__call__(state, self.to)

    def run(self, state, ancestor):
        model = _torch.model_of(state, "Rewind")
        source = _torch.model_of(ancestor, "Rewind")
        ours, theirs = _weights(model), _weights(source)
        missing = [name for name in ours if name not in theirs]
        extra = [name for name in theirs if name not in ours]
        mismatched = [f"{name} {tuple(ours[name].shape)} here vs {tuple(theirs[name].shape)} in `to`"
                      for name in ours if name in theirs and ours[name].shape != theirs[name].shape]
        if missing or extra or mismatched:
            problems = ([f"missing in `to`: {missing}"] if missing else []) + \
                       ([f"only in `to`: {extra}"] if extra else []) + \
                       ([f"shapes differ: {mismatched}"] if mismatched else [])
            raise ValueError("Rewind: the model of `to` does not match the model it rewinds; "
                             + "; ".join(problems))
        with torch.no_grad():
            for name, tensor in ours.items():
                tensor.copy_(theirs[name])
        _torch.refresh_pruned(model)
        return state


def _weights(model) -> dict:
    """Qualified name -> tensor to rewind: parameters (a pruned one's `*_orig`
    under the plain name) and buffers other than pruning masks."""
    found = {}
    for prefix, module in model.named_modules():
        pruned = {name for name, _ in _torch.pruning_hooks(module)}
        for name, value in module._parameters.items():
            if value is not None:
                plain = name[:-5] if name.endswith("_orig") and name[:-5] in pruned else name
                found[f"{prefix}.{plain}" if prefix else plain] = value
        for name, value in module._buffers.items():
            if value is not None and not (name.endswith("_mask") and name[:-5] in pruned):
                found[f"{prefix}.{name}" if prefix else name] = value
    return found
