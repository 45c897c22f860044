"""abgraph: provenance graphs for PyTorch ablation and pruning studies.

An experiment is a DAG of states (a model plus its data) joined by recipes;
every node is identified by how it was made, computed once, stored, and can be
restored, queried and drawn later.

Names that need torch (recipes, executors, `TorchState`, the ablation API) are
imported when first used, so browsing a stored experiment (the `abgraph`
command) starts without loading torch.
"""
__version__ = "0.1.0"

import importlib

from .device import current_device
from .experiment import Experiment
from .graph import ExperimentGraph, NodeSet
from .report import RunFailed, RunReport
from .state import ExperimentState, StatePromise

_LAZY = {
    "Executor": ".executors", "ProcessExecutor": ".executors", "SerialExecutor": ".executors",
    "RayExecutor": ".executors.ray",   # Ray is an optional extra
    "Recipe": ".recipes", "function": ".recipes", "Evaluate": ".recipes", "MakePermanent": ".recipes",
    "Prune": ".recipes", "Reinit": ".recipes", "Rewind": ".recipes", "Train": ".recipes",
    "TorchState": ".torch_state",
    "AblationStudy": ".ablation", "AblateLayer": ".ablation", "AblateFeature": ".ablation",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'abgraph' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["AblateFeature", "AblateLayer", "AblationStudy", "RayExecutor", "Evaluate", "MakePermanent", "Prune",
           "Reinit", "Rewind", "Train", "TorchState", "Experiment", "ExperimentGraph", "ExperimentState",
           "Executor", "NodeSet", "ProcessExecutor", "Recipe", "RunFailed", "RunReport", "SerialExecutor",
           "StatePromise", "current_device", "function"]
