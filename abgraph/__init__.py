"""abgraph: provenance graphs for PyTorch ablation and pruning studies.

An experiment is a DAG of states (a model plus its data) joined by recipes;
every node is identified by how it was made, computed once, stored, and can be
restored, queried and drawn later.
"""
__version__ = "0.1.0"

from .device import current_device
from .executors import Executor, ProcessExecutor, SerialExecutor
from .experiment import Experiment, MissingPropertyError, UndeclaredChangeWarning
from .graph import ExperimentGraph, NodeSet
from .recipes import Evaluate, Function, MakePermanent, Prune, Recipe, Reinit, Rewind, Train, function
from .report import RunReport
from .state import ExperimentState, ExperimentStatePromise, NodeFailedError, StatePromise
from .torch_state import TorchState


def __getattr__(name):
    if name == "RayExecutor":  # Ray is an optional extra: import it only when asked for
        from .executors.ray import RayExecutor
        return RayExecutor
    if name in ("AblationStudy", "AblateLayer", "AblateFeature"):
        from . import ablation
        return getattr(ablation, name)
    raise AttributeError(f"module 'abgraph' has no attribute {name!r}")


__all__ = ["AblateFeature", "AblateLayer", "AblationStudy", "RayExecutor", "Evaluate", "MakePermanent", "Prune", "Reinit", "Rewind", "Train", "TorchState",
           "Experiment", "ExperimentGraph", "ExperimentState", "ExperimentStatePromise", "Executor", "Function",
           "MissingPropertyError", "NodeFailedError", "NodeSet", "UndeclaredChangeWarning", "ProcessExecutor", "Recipe",
           "RunReport", "SerialExecutor", "StatePromise", "current_device", "function"]
