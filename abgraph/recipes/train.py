"""`Train`: a plain supervised training loop on `state.model` and `state.train_data`."""
from __future__ import annotations

import torch

from ..device import current_device
from . import _resume, _torch

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LOSSES = ("cross_entropy", "mse", "bce")
_NO_MOMENTUM = ("adam", "adamw")


class Train(_torch.BuiltinRecipe):
    """Train `state.model` on `state.train_data` for `epochs` epochs.

    - `optimizer`: "sgd", "adam", "adamw" or "rmsprop", with `lr`, `momentum`
      (sgd and rmsprop only) and `weight_decay` (torch's defaults otherwise; note
      that adamw's `weight_decay` defaults to 0.0 here, like the others).
    - `loss`: "cross_entropy" (logits and class indices, or class probabilities),
      "mse", or "bce" (binary cross-entropy on logits: `BCEWithLogitsLoss`).
      For mse and bce a target of shape (N,) is matched to an output of shape (N, 1);
      for mse, integer class indices against outputs (N, C) are one-hot encoded.
    - `batch_size`, and `seed` for the shuffling and anything random in the model
      (dropout): the same seed on the CPU gives the same weights bit for bit.

    Runs on `abgraph.current_device()` (the executor's device) and leaves the
    model on the CPU. Stores the mean loss of every epoch as the metric
    `loss_history` (a list, this node's epochs), the last one as `train_loss`,
    and the epochs of the run so far as `total_epochs`. Pruned models train
    with their masks (the pruned weights stay zero).

    A `Train` continues the run of the `Train` before it when it has the same
    class and settings but `epochs`, and the model's weights (and masks) are as
    that run left them, so that nodes that leave the model alone (`Evaluate`,
    probes) may stand between: `Train(epochs=5)` then `Train(epochs=10)` trains
    as `Train(epochs=15)` does, bit for bit on the CPU (the optimizer's state,
    the shuffling and the random state go on; `total_epochs` is 15). Anything
    else starts a fresh optimizer and reseeds, as a fine-tune should: another
    lr or optimizer, or a Prune, Reinit, Rewind or recipe of yours that changed
    the weights. The data are not checked: a recipe between two `Train`s that
    changes only `train_data` (an `AblateFeature`, say) leaves the run going on,
    on the new data. For this each `Train` keeps the payload attribute
    `train_resume` (`TorchState` declares it; a state class of yours that does
    not list it in `NONHASHED_ATTRIBUTES` gets a fresh run at every `Train`).
    It holds the optimizer's state, stored with every trained node: nothing for
    plain SGD, one more copy of the weights for SGD with momentum and RMSprop,
    two for Adam and AdamW (a trained node's payload is then three times its
    model's size). `abgraph diff` sums it up in one line.
    """

    PROPERTIES = ["epochs", "lr", "optimizer", "momentum", "weight_decay", "batch_size", "loss", "seed"]
    REQUIRES = ("model", "train_data")
    VERSION = "2"  # 2: a chain of Trains continues one run

    def __init__(self, epochs, lr, optimizer="sgd", momentum=0.0, weight_decay=0.0, batch_size=64,
                 loss="cross_entropy", seed=0):
        self.epochs = _torch.integer("Train", "epochs", epochs, minimum=1)
        self.lr = _torch.real("Train", "lr", lr, minimum=0.0, strictly=True)
        self.optimizer = _torch.choice("Train", "optimizer", optimizer, OPTIMIZERS)
        self.momentum = _torch.real("Train", "momentum", momentum, minimum=0.0)
        self.weight_decay = _torch.real("Train", "weight_decay", weight_decay, minimum=0.0)
        self.batch_size = _torch.integer("Train", "batch_size", batch_size, minimum=1)
        self.loss = _torch.choice("Train", "loss", loss, LOSSES)
        self.seed = _torch.integer("Train", "seed", seed)
        if self.optimizer in _NO_MOMENTUM and self.momentum:
            raise ValueError(f"Train: optimizer {self.optimizer!r} takes no momentum (its betas are torch's "
                             f"defaults, (0.9, 0.999)); use momentum=0.0, or optimizer 'sgd' or 'rmsprop'")

    def make_optimizer(self, parameters):
        """The torch optimizer for `parameters` (override to use another one)."""
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)
        if self.optimizer == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, weight_decay=self.weight_decay)
        if self.optimizer == "adamw":
            return torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.RMSprop(parameters, lr=self.lr, momentum=self.momentum,
                                   weight_decay=self.weight_decay)

    def run(self, state):
        model = _torch.model_of(state, "Train")
        dataset = _torch.as_dataset(state.train_data, "Train", "train_data")
        if len(dataset) == 0:
            raise ValueError("Train: state.train_data is empty")
        device = current_device()
        keeps_record = _resume.ATTRIBUTE in type(state).NONHASHED_ATTRIBUTES
        record = _resume.continued(getattr(state, _resume.ATTRIBUTE, None), self, model) if keeps_record else None
        history = []
        was_training = model.training
        with _torch.seeded(self.seed, device), _torch.on_device(model, device):
            generator = torch.Generator().manual_seed(self.seed)
            loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=True,
                                                 generator=generator)
            parameters = [p for p in model.parameters() if p.requires_grad]
            if not parameters:
                raise ValueError("Train: state.model has no parameter that requires a gradient")
            optimizer = self.make_optimizer(parameters)
            if record is not None and not _resume.restore(record, optimizer, generator, device):
                record = None
            dtype = _torch.floating_dtype(model)
            model.train()
            for _ in range(self.epochs):
                total, count = 0.0, 0
                for inputs, targets in loader:
                    inputs = _torch.to_device(inputs, device, dtype)
                    targets = _torch.to_device(targets, device)
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_value(self.loss, model(inputs), targets, "Train")
                    loss.backward()
                    optimizer.step()
                    size = len(targets)
                    total += loss.item() * size
                    count += size
                history.append(total / count)
            model.train(was_training)
            randomness = _resume.random_state(generator, device) if keeps_record else None
        epochs = self.epochs + (record["epochs"] if record is not None else 0)
        if keeps_record:
            setattr(state, _resume.ATTRIBUTE, _resume.record(self, optimizer, randomness, epochs, model))
        state.metrics["loss_history"] = history
        state.metrics["train_loss"] = history[-1]
        state.metrics["total_epochs"] = epochs
        return state


def loss_value(kind: str, outputs, targets, owner: str, reduction: str = "mean"):
    """The loss `kind` ("cross_entropy", "mse" or "bce") of `outputs` against `targets`."""
    functional = torch.nn.functional
    if kind == "cross_entropy":
        if outputs.dim() < 2 or outputs.shape[-1] < 2:
            raise ValueError(f"{owner}: loss 'cross_entropy' needs one logit per class (outputs of shape "
                             f"(N, C), C >= 2), but the model gives {tuple(outputs.shape)}; "
                             "for one logit use loss='bce'")
        if not targets.is_floating_point():
            targets = targets.long()
        return functional.cross_entropy(outputs, targets, reduction=reduction)
    if (kind == "mse" and not targets.is_floating_point() and targets.dim() == 1 and outputs.dim() == 2
            and outputs.shape[1] > 1 and len(targets) == len(outputs)):
        targets = functional.one_hot(targets.long(), outputs.shape[1])  # class indices for mse
    if targets.shape != outputs.shape and targets.numel() == outputs.numel():
        targets = targets.reshape(outputs.shape)
    if targets.shape != outputs.shape:
        hint = ("; for class indices use loss 'cross_entropy'" if kind == "bce" and not targets.is_floating_point()
                else "")
        raise ValueError(f"{owner}: loss {kind!r} needs targets shaped like the outputs "
                         f"{tuple(outputs.shape)}, but they are {tuple(targets.shape)}{hint}")
    targets = targets.to(outputs.dtype)
    if kind == "mse":
        return functional.mse_loss(outputs, targets, reduction=reduction)
    return functional.binary_cross_entropy_with_logits(outputs, targets, reduction=reduction)
