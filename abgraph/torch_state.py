"""`TorchState`: a ready state class for a torch model and its data."""
from __future__ import annotations

import torch

from .recipes._torch import seeded
from .state import ExperimentState


class TorchState(ExperimentState):
    """A torch model with its training and evaluation data.

    Use it directly::

        def make_model():
            return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))

        def make_data():                  # returns (train_data, eval_data)
            ...
            return TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)

        exp = abgraph.Experiment("runs/study", state_class=abgraph.TorchState)
        root = exp.spawn_new_tree(model_fn=make_model, data_fn=make_data, seed=0)

    `model_fn` and `data_fn` are named module-level functions or
    `functools.partial` objects of them (no lambdas): they are part of the root's
    identity by qualified name and arguments, so editing the body of a function
    does not change the id; pass a version argument through `partial` if it
    should. `train_data` and `eval_data` are torch Datasets yielding
    `(input, target)` (a pair of tensors `(inputs, targets)` is accepted too).
    `train_resume` is what `Train` keeps so that the next `Train` continues
    its run (None until a node is trained).

    The root is built with torch, numpy and `random` seeded with `seed`; they are
    re-seeded before each of `data_fn()` and `model_fn()`, so the weights do not
    depend on how much randomness the data function used, nor the reverse.

    Subclass to name the root differently: override `PROPERTIES` and
    `initialize_state`, and use `self.seeded(seed)` around anything random.
    """

    PROPERTIES = ["model_fn", "data_fn", "seed"]
    NONHASHED_ATTRIBUTES = ["model", "train_data", "eval_data", "train_resume"]

    def initialize_state(self, model_fn=None, data_fn=None, seed=0, **properties):
        name = type(self).__name__
        if not callable(data_fn):
            raise TypeError(f"{name}.data_fn must be a function returning (train_data, eval_data), "
                            f"not {data_fn!r}")
        if not callable(model_fn):
            raise TypeError(f"{name}.model_fn must be a function returning a torch.nn.Module, "
                            f"not {model_fn!r}")
        with self.seeded(seed):
            data = data_fn()
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise TypeError(f"{name}.data_fn ({_name(data_fn)}) must return a pair "
                            f"(train_data, eval_data), not {type(data).__name__}"
                            + (f" of length {len(data)}" if isinstance(data, (tuple, list)) else ""))
        self.train_data, self.eval_data = data
        with self.seeded(seed):
            model = model_fn()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{name}.model_fn ({_name(model_fn)}) must return a torch.nn.Module, "
                            f"not {type(model).__name__}")
        self.model = model.cpu()

    @staticmethod
    def seeded(seed):
        """Context manager: torch, numpy and `random` seeded with `seed` inside,
        the caller's random state restored after."""
        return seeded(int(seed))


def _name(fn) -> str:
    fn = getattr(fn, "func", fn)
    return getattr(fn, "__qualname__", repr(fn))
