"""The record a `Train` leaves on its state, so that the next `Train` with the same
settings continues the same training run (not public API).

`Train(epochs=a)` then `Train(epochs=b)` trains as `Train(epochs=a+b)` only if
more than the weights goes on: the optimizer's state (momentum, Adam's moments),
the shuffling generator and the random state (dropout). The record carries them
with a fingerprint of the weights it belongs to, so a recipe that changed the
model in between (a Prune, a Reinit, a user's surgery) starts a fresh run.
"""
from __future__ import annotations

import copy
import hashlib
import pickle
import random

import numpy
import torch

ATTRIBUTE = "train_resume"
FORMAT = 1


def settings(recipe) -> dict:
    """What must match for a run to go on: every property but the epochs, canonical."""
    return {name: value for name, value in recipe.encoded_properties().items() if name != "epochs"}


def fingerprint(model):
    """Digest of the model's state_dict (names, dtypes, shapes, requires_grad and
    bytes; a pruned tensor's `weight_orig` and mask both count), or None when an
    entry cannot be hashed (then no run goes on)."""
    digest = hashlib.blake2b(digest_size=20)
    for name, value in model.state_dict(keep_vars=True).items():
        if isinstance(value, torch.Tensor):
            data = value.detach()
            if data.layout != torch.strided or data.is_quantized or data.is_meta:
                return None
            digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|{value.requires_grad}\n".encode())
            data = data.cpu().contiguous().reshape(-1)
            digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")
        else:  # a module's extra state
            try:
                digest.update(f"{name}|extra\n".encode() + pickle.dumps(value, protocol=4))
            except Exception:  # noqa: BLE001 - anything unpicklable: no fingerprint
                return None
    return digest.hexdigest()


def continued(record, recipe, model):
    """`record` if `recipe` continues its run on `model` (same recipe class and
    settings, the weights as that run left them), else None: a fresh run."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        return None
    if record["recipe"] != recipe.type_name or record["settings"] != settings(recipe):
        return None
    weights = fingerprint(model)
    return record if weights is not None and weights == record["weights"] else None


def restore(record, optimizer, generator, device) -> bool:
    """Put the run's optimizer state, shuffling and random state back (call inside
    `_torch.seeded`); False, touching nothing, when `optimizer` is not of the class
    that made the record (a `make_optimizer` that changed): a fresh run then."""
    if record["optimizer_class"] != _qualified(type(optimizer)):
        return False
    optimizer.load_state_dict(copy.deepcopy(record["optimizer"]))  # torch keeps CPU tensors as given
    generator.set_state(record["shuffle"])
    torch.set_rng_state(record["torch_rng"])
    if torch.device(device).type == "cuda" and record["cuda_rng"] is not None:
        torch.cuda.set_rng_state(record["cuda_rng"], device)
    numpy.random.set_state(record["numpy_rng"])
    random.setstate(record["python_rng"])
    return True


def random_state(generator, device) -> dict:
    """The shuffling and random state at the end of a run (call inside `_torch.seeded`)."""
    on_cuda = torch.device(device).type == "cuda"
    return {"shuffle": generator.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if on_cuda else None,
            "numpy_rng": numpy.random.get_state(), "python_rng": random.getstate()}


def record(recipe, optimizer, randomness: dict, epochs: int, model):
    """The record of a finished run, on the CPU; None when the model has no fingerprint."""
    weights = fingerprint(model)
    if weights is None:
        return None
    return dict(randomness, format=FORMAT, recipe=recipe.type_name, settings=settings(recipe),
                optimizer_class=_qualified(type(optimizer)), optimizer=_on_cpu(optimizer.state_dict()),
                epochs=epochs, weights=weights)


def _on_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: _on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_on_cpu(item) for item in value)
    return value


def _qualified(cls) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
