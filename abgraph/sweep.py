"""Build lists of recipes for a sweep, each paired with readable tags.

Both builders return ``[(tags, recipe), ...]`` where ``tags`` is a tuple like
``("lr:0.01", "momentum:0.9")`` naming only the parameters that vary, so a
tag is enough to tell runs of one sweep apart and to group them afterwards.
Parameters given as a plain scalar are held fixed and left out of the tags,
because a tag that is the same on every run carries no information.

Order is deterministic (keys in the order given, the last key varying
fastest for :func:`grid`; draw order for :func:`random`) so re-running a
script produces the same list and therefore the same recipe identities.
"""

from __future__ import annotations

import difflib
import itertools
import math
import random as _random
import warnings
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar, runtime_checkable

import numpy as np

__all__ = [
    "Distribution",
    "Uniform",
    "LogUniform",
    "IntUniform",
    "grid",
    "halving",
    "median_stopping",
    "random",
]

R = TypeVar("R")
Tagged = list[tuple[tuple[str, ...], R]]

_SIG_DIGITS = 6


@runtime_checkable
class Distribution(Protocol):
    """Anything with ``sample(rng) -> value`` can be passed to :func:`random`.

    ``rng`` is the sweep's ``random.Random``; drawing only from it keeps the
    whole sweep reproducible from its seed.
    """

    def sample(self, rng: _random.Random) -> Any: ...


@dataclass(frozen=True)
class Uniform:
    """Float uniform on ``[low, high]``; for additive parameters (dropout)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ValueError(f"Uniform needs low <= high, got {self.low}, {self.high}")

    def sample(self, rng: _random.Random) -> float:
        return rng.uniform(self.low, self.high)


@dataclass(frozen=True)
class LogUniform:
    """Float log-uniform on ``[low, high]``; for scale parameters (lr, wd).

    Sampling in log space spends as many draws on 1e-4..1e-3 as on
    1e-2..1e-1, which is what a learning-rate search wants.
    """

    low: float
    high: float

    def __post_init__(self) -> None:
        if not 0 < self.low <= self.high:
            raise ValueError(
                f"LogUniform needs 0 < low <= high, got {self.low}, {self.high}"
            )

    def sample(self, rng: _random.Random) -> float:
        return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))


@dataclass(frozen=True)
class IntUniform:
    """Integer uniform on ``[low, high]``, both ends included (like randint)."""

    low: int
    high: int

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"IntUniform bounds must be ints, got {v!r}")
        if not self.low <= self.high:
            raise ValueError(
                f"IntUniform needs low <= high, got {self.low}, {self.high}"
            )

    def sample(self, rng: _random.Random) -> int:
        return rng.randint(int(self.low), int(self.high))


def _is_axis(value: Any) -> bool:
    """True for the sequence types that mean "vary over these values".

    Strings are scalars.  1-D numpy arrays count so ``np.logspace(...)`` can
    be passed directly.
    """
    if isinstance(value, (list, tuple, range)):
        return True
    return isinstance(value, np.ndarray) and value.ndim == 1


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so recipes and tags see plain types."""
    return value.item() if isinstance(value, np.generic) else value


def _round_sig(x: float, digits: int = _SIG_DIGITS) -> float:
    """Round to significant digits so tags stay short and identities stable."""
    if not math.isfinite(x) or x == 0.0:
        return x
    return float(f"{x:.{digits}g}")


def _tag(key: str, value: Any) -> str:
    return f"{key}:{value}"


def _check_names(recipe_class: Callable[..., Any], names: list[str]) -> None:
    """Reject keywords not in ``recipe_class.PROPERTIES``, if it declares one.

    Checked up front so a typo fails before any recipe is built, with the
    closest property names first since one of them is usually meant.
    """
    props = getattr(recipe_class, "PROPERTIES", None)
    if props is None:
        return
    props = [str(p) for p in props]
    for name in names:
        if name in props:
            continue
        close = difflib.get_close_matches(name, props, n=len(props), cutoff=0.0)
        ordered = close + [p for p in props if p not in close]
        cls_name = getattr(recipe_class, "__name__", repr(recipe_class))
        raise ValueError(
            f"unknown parameter {name!r} for {cls_name}; "
            f"PROPERTIES: {', '.join(ordered) if ordered else '(none)'}"
        )


def grid(recipe_class: Callable[..., R], /, **lists: Any) -> Tagged[R]:
    """Cartesian product of the given value lists, one recipe per combination.

    ``grid(SGD, lr=[0.1, 0.01], momentum=[0.0, 0.9], epochs=10)`` gives four
    recipes in the order (0.1, 0.0), (0.1, 0.9), (0.01, 0.0), (0.01, 0.9),
    each with ``epochs=10`` and tags like ``("lr:0.1", "momentum:0.9")``.
    Lists, tuples, ranges and 1-D numpy arrays are axes (as in
    :func:`random`); anything else (including a string) is a fixed value kept
    out of the tags.  To hold a tuple-valued parameter fixed, pass it as a
    one-element list (it then appears in the tags).  An empty
    axis raises ``ValueError`` naming it rather than silently producing an
    empty sweep.
    """
    _check_names(recipe_class, list(lists))
    fixed: dict[str, Any] = {}
    axes: list[tuple[str, list[Any]]] = []
    for key, value in lists.items():
        if _is_axis(value):
            values = [_plain(v) for v in value]
            if not values:
                raise ValueError(f"parameter {key!r} has an empty list of values")
            axes.append((key, values))
        else:
            fixed[key] = _plain(value)

    out: Tagged[R] = []
    keys = [k for k, _ in axes]
    for combo in itertools.product(*(vals for _, vals in axes)):
        varied = dict(zip(keys, combo))
        params = {k: varied[k] if k in varied else fixed[k] for k in lists}
        tags = tuple(_tag(k, v) for k, v in varied.items())
        out.append((tags, recipe_class(**params)))
    return out


def random(
    recipe_class: Callable[..., R], /, n: int, seed: Hashable, **distributions: Any
) -> Tagged[R]:
    """``n`` random configurations drawn reproducibly from ``random.Random(seed)``.

    Each keyword is a list/tuple/range/1-D array (uniform choice among its
    values), a distribution object with ``sample(rng)`` (:class:`Uniform`,
    :class:`LogUniform`, :class:`IntUniform` or your own), or a scalar held
    fixed and left out of the tags.  Parameters are drawn in keyword order
    for each configuration in turn, so the same seed and keywords always
    give the same list.  Float values returned by ``sample`` are rounded to
    6 significant digits so tags stay readable and equal draws compare
    equal (bounds therefore hold to 6 significant digits).  Draws are not
    de-duplicated.  ``seed`` is required: an unseeded sweep could not be
    rebuilt.
    """
    if seed is None:
        raise ValueError("seed must not be None; a sweep must be reproducible")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _check_names(recipe_class, list(distributions))

    samplers: list[tuple[str, Callable[[_random.Random], Any] | None, Any]] = []
    for key, value in distributions.items():
        if _is_axis(value):
            choices = [_plain(v) for v in value]
            if not choices:
                raise ValueError(f"parameter {key!r} has an empty list of values")
            samplers.append((key, lambda rng, c=choices: rng.choice(c), None))
        elif isinstance(value, Distribution):
            samplers.append((key, _drawer(value), None))
        else:
            samplers.append((key, None, _plain(value)))

    rng = _random.Random(seed)
    out: Tagged[R] = []
    for _ in range(int(n)):
        params: dict[str, Any] = {}
        tags: list[str] = []
        for key, draw, fixed in samplers:
            if draw is None:
                params[key] = fixed
                continue
            value = draw(rng)
            params[key] = value
            tags.append(_tag(key, value))
        out.append((tuple(tags), recipe_class(**params)))
    return out


def _drawer(dist: Distribution) -> Callable[[_random.Random], Any]:
    """Wrap ``dist.sample`` to return plain scalars and round floats."""

    def draw(rng: _random.Random) -> Any:
        value = _plain(dist.sample(rng))
        if isinstance(value, float):
            value = _round_sig(value)
        return value

    return draw


# ------------------------------------------------------------- early stopping

DIRECTIONS = ("max", "min")


def halving(root, trials: Tagged[Any], *, evaluate, rungs, metric: str, keep: float = 1 / 3,
            direction: str = "max", budget: str = "epochs", from_root: bool = False) -> list:
    """Successive halving over ``trials``: train every trial in rungs and keep
    only the best ``keep`` fraction after each rung.

    ``trials`` is what :func:`grid` or :func:`random` give. Each trial becomes
    a chain from ``root``: one training node per rung, trained up to
    ``rungs[i]`` in total (its ``budget`` property, ``epochs`` by default, is
    set to the difference, so ``rungs=(5, 15, 70)`` trains 5, then 10, then 55
    epochs), each followed by ``evaluate`` (a recipe, e.g. ``Evaluate(...)``,
    or an ``abgraph.function`` probe returning a dict) whose ``metric`` ranks
    the trials (``direction`` "max" or "min"). The losers' later rungs are
    stored with status ``stopped``. Every node is tagged with its trial's tags
    and ``rung:N``. The rule is stored with the experiment: ``exp.run()``
    applies it, ``exp.run(early_stopping=False)`` resumes stopped trials from
    their last stored rung, and calling ``halving`` again on the same trials
    with a larger ``keep`` replaces it. With the built-in ``Train`` a rung
    continues the run of the rung before it (the optimizer's state, e.g. Adam's
    moments, the shuffling and the random state go on), so a chain of rungs
    trains as one long run does, bit for bit on the CPU: a trial that survives
    to the last rung ends with the full grid's model. A training recipe of your
    own continues only what it keeps in the state (the model), so its chain is
    close to, not the same as, one long run. ``from_root=True`` trains every
    rung from ``root`` with the whole budget instead: the last rung is then the
    full grid's own node (same id), at the price of training the early epochs
    again (stopped trials restart from the root).

    Returns the last evaluation of every trial (the training node itself when
    ``evaluate`` is a probe), in the order of ``trials``.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep < 1:
        raise ValueError(f"keep must be a fraction between 0 and 1 (e.g. 1/3), not {keep!r}")
    return _rung_sweep("halving", root, trials, evaluate, rungs, metric, direction, budget, keep, from_root)


def median_stopping(root, trials: Tagged[Any], *, evaluate, rungs, metric: str, direction: str = "max",
                    budget: str = "epochs", from_root: bool = False) -> list:
    """Like :func:`halving`, but after each rung stop the trials whose ``metric``
    is worse than the median of the trials still running (the median rule of
    Google Vizier and Optuna's ``MedianPruner``, on whole rungs)."""
    return _rung_sweep("median", root, trials, evaluate, rungs, metric, direction, budget, 0.5, from_root)


def _rung_sweep(kind, root, trials, evaluate, rungs, metric, direction, budget, keep, from_root) -> list:
    from .recipes.base import Probe, Recipe, as_promise
    from .state import StatePromise
    from .stopping import StoppingRule

    root = as_promise(root)
    if not isinstance(root, StatePromise):
        raise TypeError(f"root must be a state promise (from spawn_new_tree or a recipe) or a stored "
                        f"node, not {root!r}")
    trials = list(trials)
    if not trials or not all(isinstance(t, tuple) and len(t) == 2 for t in trials):
        raise ValueError("trials must be a non-empty list of (tags, recipe) pairs, as sweep.grid "
                         "and sweep.random give them")
    rungs = list(rungs) if isinstance(rungs, (list, tuple, range)) else rungs
    if not isinstance(rungs, list) or not rungs or any(
            isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rungs) \
            or any(a >= b for a, b in zip(rungs, rungs[1:])):
        raise ValueError(f"rungs must be increasing positive ints, the budget reached after each "
                         f"rung (e.g. (5, 15, 70) epochs), not {rungs!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
    if not isinstance(metric, str) or not metric:
        raise TypeError(f"metric must name the evaluation's metric (e.g. 'accuracy'), not {metric!r}")
    if not isinstance(evaluate, (Recipe, Probe)):
        raise TypeError(f"evaluate must be a recipe (e.g. Evaluate(metrics=('accuracy',))) or an "
                        f"abgraph.function probe, not {evaluate!r}")
    for _, recipe in trials:
        _check_names(type(recipe), [budget])

    experiment = root.experiment
    if not from_root:
        _warn_if_rungs_restart(experiment.state_class, trials)
    chains, leaves = [], []
    for tags, recipe in trials:
        chain, state, reached = [], root, 0
        for number, total in enumerate(rungs, 1):
            with experiment.tag(*tags, f"rung:{number}"):
                start = root if from_root else state
                state = _with_budget(recipe, budget, total if from_root else total - reached)(start)
                measured = evaluate(state)
            chain.append([state.id, measured.id])
            reached = total
        chains.append(chain)
        leaves.append(measured)
    experiment._add_stopping_rule(StoppingRule(
        kind=kind, metric=metric, direction=direction, keep=keep, rungs=rungs, trials=chains,
        labels=[list(tags) for tags, _ in trials],
        probe=evaluate.name if isinstance(evaluate, Probe) else None))
    return leaves


def _warn_if_rungs_restart(state_class, trials) -> None:
    """Chained `Train` rungs continue one run only on a state that keeps `train_resume`."""
    from .recipes._resume import ATTRIBUTE
    from .recipes.train import Train

    if ATTRIBUTE not in state_class.NONHASHED_ATTRIBUTES and any(isinstance(r, Train) for _, r in trials):
        warnings.warn(f"{state_class.__name__}.NONHASHED_ATTRIBUTES has no {ATTRIBUTE!r}: each Train rung "
                      f"will start a fresh optimizer instead of continuing the rung before it; add "
                      f"{ATTRIBUTE!r} to it (as TorchState does) to train each chain as one run",
                      stacklevel=4)


def _with_budget(recipe, budget: str, amount: int):
    """A copy of `recipe` with its budget property set to `amount`."""
    values = dict(recipe.property_values(), **{budget: amount})
    try:
        return type(recipe)(**values)
    except TypeError as error:
        raise TypeError(f"{type(recipe).__name__}(**properties) cannot be rebuilt with {budget}={amount} "
                        f"({error}); halving needs a recipe whose __init__ takes its PROPERTIES as "
                        "keywords") from None
