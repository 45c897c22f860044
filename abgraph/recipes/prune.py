"""`Prune` and `MakePermanent`: `torch.nn.utils.prune` as recipes.

A pruned tensor keeps torch's reparametrization (`weight_orig`, the buffer
`weight_mask` and a forward pre-hook), so masks are stored with the payload,
training keeps pruned weights at zero, and a later `Prune` on the same tensor
composes with the earlier ones (torch's `PruningContainer`: `amount` is a
fraction of what is still unpruned, so 0.5 then 0.5 leaves 25%).
"""
from __future__ import annotations

import contextlib
import hashlib

import torch
from torch.nn.utils import prune as torch_prune

from . import _torch

METHODS = ("l1_unstructured", "random_unstructured", "ln_structured", "random_structured",
           "global_unstructured")
STRUCTURED = ("ln_structured", "random_structured")
RANDOM = ("random_unstructured", "random_structured")
_NORMS = ("fro", "nuc")


class Prune(_torch.BuiltinRecipe):
    """Prune `state.model` with `method`:

    - "l1_unstructured": the `amount` smallest-magnitude entries of each target;
    - "random_unstructured": `amount` random entries of each target;
    - "ln_structured": the `amount` channels along `dim` with the smallest L`n` norm;
    - "random_structured": `amount` random channels along `dim`;
    - "global_unstructured": the `amount` smallest-magnitude entries over all the
      targets together (L1).

    `amount`: a float in [0, 1] is a fraction (of the entries or channels not yet
    pruned), an int a count. `n` (ln_structured only: an int, `float("inf")`,
    "fro" or "nuc") and `dim` (structured methods only) follow torch; `seed`
    makes the random methods deterministic (it is ignored by the others and then
    not part of the node's identity). The random masks come from a stream of
    their own, not from `torch.manual_seed(seed)`'s, which built the model of a
    root with the same seed: drawn from it, the first target's "random" mask
    was its initial weights' own order, and pruned the largest of them.

    `targets`: None for every Linear and Conv weight; otherwise a name or a list of
    names, each either a parameter as in `model.named_parameters()` (e.g.
    "0.weight", "encoder.fc.bias"; a pruned one without its `_orig` suffix) or a
    module as in `model.named_modules()` (e.g. "0", "encoder.fc"), meaning that
    module's `weight`. The model is not known when the graph is built, so a target
    that does not exist fails when the node runs, with the model's names listed.

    Writes the metric `sparsity` (pruned entries / entries, over all the targets,
    counting earlier pruning too) and `sparsity_per_target`.
    """

    PROPERTIES = ["method", "amount", "targets", "n", "dim", "seed"]
    REQUIRES = ("model",)
    VERSION = "1"

    def __init__(self, method, amount, targets=None, n=2, dim=0, seed=0):
        self.method = _torch.choice("Prune", "method", method, METHODS)
        self.amount = _amount(amount)
        self.targets = _torch.names("Prune", "targets", targets)
        self.n = _norm(n) if self.method == "ln_structured" else n
        self.dim = _torch.integer("Prune", "dim", dim)
        self.seed = _torch.integer("Prune", "seed", seed)
        if self.method != "ln_structured" and n != 2:
            raise ValueError(f"Prune: n={n!r} applies to method 'ln_structured' only, not {self.method!r}")
        if self.method not in STRUCTURED and self.dim != 0:
            raise ValueError(f"Prune: dim={dim!r} applies to the structured methods "
                             f"({', '.join(map(repr, STRUCTURED))}) only, not {self.method!r}")

    def property_values(self) -> dict:
        """Only what the method uses is identity: an l1 node is the same for any seed."""
        values = super().property_values()
        if self.method != "ln_structured":
            del values["n"]
        if self.method not in STRUCTURED:
            del values["dim"]
        if self.method not in RANDOM:
            del values["seed"]
        return values

    def code_version(self) -> str:
        """The random methods' nodes changed when their masks got a stream of their
        own (their ids changed with them); the other methods' did not."""
        version = super().code_version()
        return f"{version}+masks:2" if self.method in RANDOM else version

    def run(self, state):
        model = _torch.model_of(state, "Prune")
        targets = resolve_targets(model, self.targets, "Prune")
        _torch.refresh_pruned(model)  # torch ranks by the `weight` attribute: make it current
        random = self.method in RANDOM
        with _torch.seeded(mask_seed(self.seed)) if random else contextlib.nullcontext():
            if self.method == "global_unstructured":
                try:
                    torch_prune.global_unstructured([(module, name) for _, module, name in targets],
                                                    pruning_method=torch_prune.L1Unstructured,
                                                    amount=self.amount)
                except ValueError as error:
                    raise ValueError(f"Prune: {error}") from None
            else:
                for label, module, name in targets:
                    self._prune_one(label, module, name)
        _torch.normalize_pruning_hooks(model)
        per_target, zeros, total = {}, 0, 0
        for label, module, name in targets:
            mask = getattr(module, name + "_mask")
            pruned = int((mask == 0).sum())
            per_target[label] = pruned / mask.numel() if mask.numel() else 0.0
            zeros, total = zeros + pruned, total + mask.numel()
        state.metrics["sparsity"] = zeros / total if total else 0.0
        state.metrics["sparsity_per_target"] = per_target
        return state

    def _prune_one(self, label, module, name):
        tensor = getattr(module, name)
        if self.method in STRUCTURED and not -tensor.dim() <= self.dim < tensor.dim():
            raise ValueError(f"Prune: dim={self.dim} is out of range for target {label!r} of shape "
                             f"{tuple(tensor.shape)}")
        try:
            if self.method == "l1_unstructured":
                torch_prune.l1_unstructured(module, name, amount=self.amount)
            elif self.method == "random_unstructured":
                torch_prune.random_unstructured(module, name, amount=self.amount)
            elif self.method == "ln_structured":
                torch_prune.ln_structured(module, name, amount=self.amount, n=self.n, dim=self.dim)
            else:
                torch_prune.random_structured(module, name, amount=self.amount, dim=self.dim)
        except ValueError as error:
            raise ValueError(f"Prune: target {label!r} of shape {tuple(tensor.shape)}: {error}") from None


def mask_seed(seed: int) -> int:
    """The seed of the random masks for `Prune(seed=seed)`: one that no model was
    built with by seeding torch with `seed`."""
    digest = hashlib.blake2b(f"abgraph.Prune.masks:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


class MakePermanent(_torch.BuiltinRecipe):
    """Remove the pruning reparametrization from every pruned tensor of
    `state.model` (`torch.nn.utils.prune.remove`): the zeros stay, the masks,
    `*_orig` parameters and hooks go, so later training can revive pruned weights.
    Writes `sparsity` (zeros / entries over the tensors that were pruned)."""

    PROPERTIES = []
    REQUIRES = ("model",)
    VERSION = "1"

    def run(self, state):
        model = _torch.model_of(state, "MakePermanent")
        zeros = total = 0
        for module in model.modules():
            for name, _ in _torch.pruning_hooks(module):
                torch_prune.remove(module, name)
                tensor = getattr(module, name)
                zeros, total = zeros + int((tensor == 0).sum()), total + tensor.numel()
        if total == 0:
            raise ValueError("MakePermanent: state.model has no pruned tensor (is there a Prune upstream?)")
        state.metrics["sparsity"] = zeros / total
        return state


# -- targets ------------------------------------------------------------------------------


def has_tensor(module, name) -> bool:
    """Whether `module` owns the parameter `name`, plain or pruned."""
    if module._parameters.get(name) is not None:
        return True
    return module._parameters.get(name + "_orig") is not None and name + "_mask" in module._buffers


def parameter_names(model) -> list:
    """Qualified names of the model's parameters, pruned ones without `_orig`."""
    found = []
    for prefix, module in model.named_modules():
        for name, value in module._parameters.items():
            if value is None:
                continue
            if name.endswith("_orig") and name[:-5] + "_mask" in module._buffers:
                name = name[:-5]
            found.append(f"{prefix}.{name}" if prefix else name)
    return found


def default_targets(model) -> list:
    return [(f"{prefix}.weight" if prefix else "weight", module, "weight")
            for prefix, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and has_tensor(module, "weight")]


def resolve_targets(model, targets, owner: str) -> list:
    """[(label, module, tensor name)] for `targets` (see `Prune`)."""
    if targets is None:
        resolved = default_targets(model)
        if not resolved:
            raise ValueError(f"{owner}: state.model ({type(model).__name__}) has no Linear or Conv layer; "
                             f"name the targets, e.g. one of {parameter_names(model)[:10]}")
        return resolved
    modules = dict(model.named_modules())
    resolved, seen = [], {}
    for target in targets:
        if target in modules and target != "":
            module, name = modules[target], "weight"
            if not has_tensor(module, name):
                raise ValueError(f"{owner}: target module {target!r} ({type(module).__name__}) has no weight to "
                                 "prune; name a parameter instead, one of "
                                 f"{_torch.ordered_by_closeness(target, parameter_names(model))}")
            label = f"{target}.weight"
        else:
            prefix, _, name = target.rpartition(".")
            module = modules.get(prefix)
            if module is None or not has_tensor(module, name):
                raise ValueError(
                    f"{owner}: target {target!r} is not in the model ({type(model).__name__}). "
                    f"Its modules: {_torch.ordered_by_closeness(target, [m for m in modules if m])}; "
                    f"its parameters: {_torch.ordered_by_closeness(target, parameter_names(model))}")
            label = target
        key = (id(module), name)
        if key in seen:
            raise ValueError(f"{owner}: targets {seen[key]!r} and {target!r} name the same tensor {label!r}")
        seen[key] = target
        resolved.append((label, module, name))
    return resolved


# -- validation --------------------------------------------------------------------------


def _amount(amount):
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) and not hasattr(amount, "item"):
        raise TypeError(f"Prune: amount must be a fraction (float in [0, 1]) or a count (int), not {amount!r}")
    if hasattr(amount, "item"):  # numpy scalar
        amount = amount.item()
    if isinstance(amount, float):
        if not 0.0 <= amount <= 1.0:
            raise ValueError(f"Prune: amount={amount!r} is a fraction and must lie in [0, 1] "
                             "(give an int to prune a number of entries)")
    elif amount < 0:
        raise ValueError(f"Prune: amount={amount!r} must not be negative")
    return amount


def _norm(n):
    if isinstance(n, str):
        if n not in _NORMS:
            raise ValueError(f"Prune: unknown norm n={n!r}; valid: an int, float('inf'), float('-inf'), "
                             f"{_torch.ordered_by_closeness(n, _NORMS)}")
        return n
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        raise TypeError(f"Prune: n must be an int, float('inf'), 'fro' or 'nuc', not {n!r}")
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if isinstance(n, int) and n < 1:
        raise ValueError(f"Prune: n={n} must be at least 1 (or float('inf'), float('-inf'), 'fro', 'nuc')")
    return n
