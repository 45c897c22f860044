"""Ablation as recipes: `AblateLayer` and `AblateFeature`, and `build_trial`, the
one place that turns a trial into its (dataset, model) pair.

Both recipes work on any state with `model` and `train_data` payload attributes
(`eval_data` too, where present). The example batch for shape dry runs is
taken from `train_data` (see `datasets.example_input`) and moved to the model's
device.
"""
from __future__ import annotations

import numbers

import torch
from torch import nn

from abgraph.ablation.datasets import ablate, example_input
from abgraph.ablation.errors import AblationError
from abgraph.ablation.surgery import Prefix, ablate_layers, repair_input_layer
from abgraph.recipes.base import Recipe

__all__ = ["AblateFeature", "AblateLayer", "build_trial", "call_generator"]


def _check_target(target, where):
    if isinstance(target, (Prefix, str)) or (isinstance(target, numbers.Integral)
                                             and not isinstance(target, bool)):
        return target
    raise AblationError(f"{where}: {target!r} ({type(target).__name__}) is not a layer target; a "
                        "target is an int index, a module name or a Prefix")


def _targets(targets, prefix, where):
    """Normalize to a single target or a tuple of targets (a group)."""
    if isinstance(targets, (list, tuple)):
        items = [_check_target(t, where) for t in targets]
    elif targets is None:
        items = []
    else:
        items = [_check_target(targets, where)]
    if prefix is not None:
        items.append(Prefix(prefix))
    if not items:
        raise AblationError(f"{where}: nothing to ablate; give targets or prefix")
    return items[0] if len(items) == 1 and not isinstance(targets, (list, tuple)) else tuple(items)


def _on_device_of(batch, model):
    """The example batch on the device of the model's parameters."""
    parameter = next(iter(model.parameters()), None)
    if parameter is None or not isinstance(batch, torch.Tensor) or batch.device == parameter.device:
        return batch
    return batch.to(parameter.device)


def _example(data, model):
    return None if data is None else _on_device_of(example_input(data), model)


class AblateLayer(Recipe):
    """Remove layers from `state.model` and repair the shapes after them.

    targets: an index, a module name, a `Prefix`, or a list of those removed
    together (one group); `prefix="my_dense"` adds `Prefix("my_dense")`.
    with_activation: also remove the activation right after each removed layer
    (in an `nn.Sequential`). The dry run that repairs the shapes uses the first
    samples of `state.train_data`.
    """

    PROPERTIES = ["targets", "with_activation"]
    REQUIRES = ("model", "train_data")
    VERSION = "1"

    def __init__(self, targets=None, with_activation: bool = False, prefix=None):
        self.targets = _targets(targets, prefix, "AblateLayer")
        self.with_activation = bool(with_activation)

    def run(self, state):
        targets = list(self.targets) if isinstance(self.targets, tuple) else self.targets
        state.model = ablate_layers(state.model, targets,
                                    example_input=_example(state.train_data, state.model),
                                    with_activation=self.with_activation)
        return state


class AblateFeature(Recipe):
    """Remove a feature from the data (train and eval) and fit the model's input layer.

    `feature` is whatever the dataset's `ablate_feature` accepts: a column name
    (`PandasDataset`), a channel name or index (`ChannelDataset`), a word
    (`TokenDataset`), or a list of those removed together. The datasets are new
    objects (the parent's stay untouched); the model's input layer is rebuilt
    for the new input size found on the first samples of `train_data`.
    """

    PROPERTIES = ["feature"]
    REQUIRES = ("model", "train_data")
    VERSION = "1"

    def __init__(self, feature):
        if isinstance(feature, list):
            feature = tuple(feature)
        self.feature = feature

    def run(self, state):
        state.train_data = ablate(state.train_data, self.feature)
        eval_data = getattr(state, "eval_data", None)
        if eval_data is not None:
            state.eval_data = ablate(eval_data, self.feature)
        state.model = repair_input_layer(state.model, _example(state.train_data, state.model))
        return state


# --- one trial: its data and its model ---------------------------------------------

def _name(fn) -> str:
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or repr(fn)


def call_generator(generator, role: str) -> nn.Module:
    """Call a model generator; anything but an `nn.Module` is an error naming it."""
    model = generator()
    if not isinstance(model, nn.Module):
        raise AblationError(f"{role} {_name(generator)!r} returned {type(model).__name__}, not a "
                            "torch.nn.Module: a model generator takes no argument and returns the model")
    return model


def build_trial(trial, train_data, model_generator=None, with_activation: bool = False,
                eval_data=None, model=None, role="model generator"):
    """`(train_data, eval_data, model)` for `trial`, nothing shared with the inputs.

    Features are removed from the data first (thesis Section 3.3.3: the model is
    made after the dataset, since its input layer depends on it); then the model
    is made (`model_generator()`, or a copy of `model`), its input layer fitted to
    the smaller input, and the trial's layers removed, all checked by a dry run
    on the first samples of the ablated data.
    """
    for feature in trial.features:
        train_data = ablate(train_data, feature)
        if eval_data is not None:
            eval_data = ablate(eval_data, feature)
    if model is None:
        model = call_generator(model_generator, role)
    if trial.features:
        if train_data is None:
            raise AblationError(f"trial {trial.name!r} removes features, but the study has no dataset")
        model = repair_input_layer(model, _example(train_data, model))
    if trial.layers:
        model = ablate_layers(model, list(trial.layers), example_input=_example(train_data, model),
                              with_activation=with_activation)
    return train_data, eval_data, model
