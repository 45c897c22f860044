"""`Evaluate`: classification metrics of `state.model` on a dataset of the state."""
from __future__ import annotations

import torch

from ..device import current_device
from . import _torch
from .train import LOSSES, loss_value

METRICS = ("accuracy", "f1", "f1_binary", "precision", "recall", "loss", "sparsity")
_CLASSIFICATION = ("accuracy", "f1", "f1_binary", "precision", "recall")
_BATCH_SIZE = 1024


class Evaluate(_torch.BuiltinRecipe):
    """Measure `state.model` on `state.<data>` and write the results to `state.metrics`.

    `metrics` (any of):

    - "accuracy";
    - "f1", "precision", "recall": macro averages over the classes that occur in
      the targets or the predictions (scikit-learn's `average="macro"`; a class
      never predicted counts 0 precision);
    - "f1_binary": the F1 of class 1, for two-class problems (scikit-learn's
      default `average="binary"`);
    - "loss": the mean loss per example (`criterion`: "cross_entropy", "mse" or
      "bce", as `Train`'s `loss`; by default "bce" on logits for a model with one
      output, else "cross_entropy"). The property is not called `loss` so that
      it does not share a `to_dataframe()` column with the metric;
    - "sparsity": the fraction of zero weights over every Linear/Conv weight.

    With any classification metric, `per_class_accuracy` (a list, `None` for a
    class without examples) and `confusion_matrix` (rows: true class, columns:
    predicted class) are stored too. Predictions are the arg-max of the outputs,
    or for one output `output > 0` (`> 0.5` with criterion "mse"); targets are class
    indices, one-hot/probability rows, or 0/1 for one output.

    Runs on `abgraph.current_device()`; computed with torch only.
    """

    PROPERTIES = ["metrics", "data", "criterion"]
    REQUIRES = ("model",)
    VERSION = "1"

    def __init__(self, metrics=("accuracy", "f1", "loss"), data="eval_data", criterion=None):
        chosen = _torch.names("Evaluate", "metrics", metrics)
        if chosen is None:
            raise ValueError(f"Evaluate: metrics is None; give some of {', '.join(map(repr, METRICS))}")
        self.metrics = tuple(_torch.choice("Evaluate", "metric", m, METRICS) for m in chosen)
        if not isinstance(data, str) or not data.isidentifier():
            raise TypeError(f"Evaluate: data must name a state attribute (e.g. 'eval_data'), not {data!r}")
        self.data = data
        self.criterion = None if criterion is None else _torch.choice("Evaluate", "criterion", criterion, LOSSES)

    def check(self, state_class, *inputs) -> None:
        super().check(state_class, *inputs)
        declared = list(state_class.NONHASHED_ATTRIBUTES)
        if self.data not in declared:
            raise ValueError(f"Evaluate(data={self.data!r}) needs the state attribute {self.data!r}, but "
                             f"{state_class.__name__}.NONHASHED_ATTRIBUTES is {declared}"
                             + _torch.did_you_mean(self.data, declared))

    def run(self, state):
        model = _torch.model_of(state, "Evaluate")
        results = {}
        needs_outputs = any(m != "sparsity" for m in self.metrics)
        if needs_outputs:
            outputs, targets = self.outputs(model, state)
            kind = self.criterion or ("bce" if _single_output(outputs) else "cross_entropy")
            if "loss" in self.metrics:
                results["loss"] = loss_value(kind, outputs, targets, "Evaluate").item()
            if any(m in _CLASSIFICATION for m in self.metrics):
                results.update(classification_metrics(outputs, targets, kind, self.metrics))
        if "sparsity" in self.metrics:
            results["sparsity"] = weight_sparsity(model)
        ordered = [m for m in self.metrics if m in results] + [m for m in results if m not in self.metrics]
        state.metrics.update({name: results[name] for name in ordered})
        return state

    def outputs(self, model, state):
        """The model's outputs on the whole dataset and the targets, on the CPU."""
        dataset = _torch.as_dataset(getattr(state, self.data), "Evaluate", self.data)
        if len(dataset) == 0:
            raise ValueError(f"Evaluate: state.{self.data} is empty")
        loader = torch.utils.data.DataLoader(dataset, batch_size=_BATCH_SIZE, shuffle=False)
        device = current_device()
        outputs, targets = [], []
        was_training = model.training
        with _torch.on_device(model, device), torch.no_grad():
            dtype = _torch.floating_dtype(model)
            model.eval()
            for inputs, target in loader:
                output = model(_torch.to_device(inputs, device, dtype))
                outputs.append(output.float().cpu())
                targets.append(torch.as_tensor(target))
            model.train(was_training)
        return torch.cat(outputs), torch.cat(targets)


def _single_output(outputs) -> bool:
    return outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1)


def classification_metrics(outputs, targets, loss_kind, wanted) -> dict:
    """Accuracy, macro precision/recall/F1, binary F1, per-class accuracy and the
    confusion matrix of `outputs` against `targets` (see `Evaluate`)."""
    if outputs.dim() > 2:
        raise ValueError(f"Evaluate: classification metrics need outputs of shape (N,) or (N, C), "
                         f"not {tuple(outputs.shape)}")
    if _single_output(outputs):
        classes = 2
        threshold = 0.5 if loss_kind == "mse" else 0.0
        predicted = (outputs.reshape(-1) > threshold).long()
        truth = (targets.reshape(-1).float() > 0.5).long()
    else:
        classes = outputs.shape[1]
        predicted = outputs.argmax(1)
        if targets.is_floating_point() and targets.shape == outputs.shape:
            truth = targets.argmax(1)
        else:
            truth = targets.reshape(-1).long()
    if len(truth) != len(predicted):
        raise ValueError(f"Evaluate: {len(truth)} targets for {len(predicted)} outputs")
    outside = truth[(truth < 0) | (truth >= classes)]
    if len(outside):
        raise ValueError(f"Evaluate: the targets hold class {int(outside[0])} but the model gives {classes} "
                         f"classes (0 to {classes - 1})")
    confusion = torch.bincount(truth * classes + predicted, minlength=classes * classes)
    confusion = confusion.reshape(classes, classes).double()
    hits = confusion.diagonal()
    support, predicted_count = confusion.sum(1), confusion.sum(0)

    def ratio(numerator, denominator):
        return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))

    precision = ratio(hits, predicted_count)
    recall = ratio(hits, support)
    f1 = ratio(2 * hits, support + predicted_count)
    present = (support + predicted_count) > 0
    results = {}
    if "accuracy" in wanted:
        results["accuracy"] = (hits.sum() / max(len(truth), 1)).item()
    if "f1" in wanted:
        results["f1"] = f1[present].mean().item()
    if "precision" in wanted:
        results["precision"] = precision[present].mean().item()
    if "recall" in wanted:
        results["recall"] = recall[present].mean().item()
    if "f1_binary" in wanted:
        if classes != 2:
            raise ValueError(f"Evaluate: metric 'f1_binary' is for two classes; the model gives {classes} "
                             "(use 'f1' for the macro average)")
        results["f1_binary"] = f1[1].item()
    results["per_class_accuracy"] = [(hits[c] / support[c]).item() if support[c] > 0 else None
                                     for c in range(classes)]
    results["confusion_matrix"] = confusion.long().tolist()
    return results


def weight_sparsity(model) -> float:
    """Fraction of zero entries over every Linear/Conv weight as the model uses it."""
    zeros = total = 0
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)):
            weight = module.weight
            zeros += int((weight == 0).sum())
            total += weight.numel()
    if total == 0:
        raise ValueError("Evaluate: metric 'sparsity' needs Linear or Conv layers; the model has none")
    return zeros / total
