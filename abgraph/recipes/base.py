"""Recipes (the edges) and probe functions."""
from __future__ import annotations

import difflib
import inspect
import pickle

from .. import identity
from ..state import ExperimentState, refuse_reserved


class Recipe:
    """Turns one state (plus read-only extra inputs) into a new state.

    Subclass, list the values that define the recipe in `PROPERTIES` (they are
    part of the node's identity), and implement `run(state, *others)`, returning
    the state. Set `VERSION` to decide yourself when the cache is invalidated;
    without it any change of the class's code is a new recipe. `REQUIRES` names
    payload attributes the input state must declare, checked when the graph is
    built.

    Any other attribute the recipe keeps is outside its identity: two recipes of
    one class on one input that differ there are refused (one would silently
    never run) unless the attribute is listed in `NONHASHED_ATTRIBUTES`, for
    what does not change what `run` makes (a logger, a verbosity).
    """

    PROPERTIES: list = []
    NONHASHED_ATTRIBUTES: list = []
    REQUIRES: tuple = ()
    VERSION = None

    def __init_subclass__(cls, **kwargs):
        """A malformed PROPERTIES is refused where the class is written."""
        super().__init_subclass__(**kwargs)
        names = identity.declared_names(cls, "PROPERTIES")
        taken = [name for name in names if hasattr(Recipe, name)]
        if taken:
            raise TypeError(f"{cls.__name__}.PROPERTIES names {taken[0]!r}, which every recipe already "
                            f"has (its {'method' if callable(getattr(Recipe, taken[0])) else 'attribute'}); "
                            "give the property another name")

    def __init__(self, *positional, **properties):
        if positional:
            raise TypeError(f"{type(self).__name__} takes its properties as keywords: "
                            f"{type(self).__name__}({', '.join(f'{p}=...' for p in self.PROPERTIES)})")
        unknown = [name for name in properties if name not in self.PROPERTIES]
        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown propert{'ies' if len(unknown) > 1 else 'y'} "
                            f"{', '.join(map(repr, unknown))}; its PROPERTIES are {list(self.PROPERTIES)}"
                            + _closest(unknown[0], self.PROPERTIES))
        for name, value in properties.items():
            setattr(self, name, value)

    def run(self, state, *others):
        raise NotImplementedError(f"{type(self).__name__} must implement run(state)")

    def check(self, state_class, *inputs) -> None:
        """Validate against the input promises at graph-building time (override to add checks)."""
        declared = list(state_class.NONHASHED_ATTRIBUTES)
        for name in self.REQUIRES:
            if name not in declared:
                raise ValueError(f"{type(self).__name__} needs the state attribute {name!r}, but "
                                 f"{state_class.__name__}.NONHASHED_ATTRIBUTES is {declared}")

    # -- identity --------------------------------------------------------------
    @property
    def type_name(self) -> str:
        cls = type(self)
        return f"{cls.__module__}.{cls.__qualname__}"

    def property_values(self) -> dict:
        values = {}
        for name in self.PROPERTIES:
            if not hasattr(self, name):
                raise TypeError(f"{type(self).__name__} has no value for its property {name!r}: "
                                "set it in __init__ or pass it as a keyword")
            values[name] = getattr(self, name)
        return values

    def encoded_properties(self):
        return {name: identity.canonical(value, f"{type(self).__name__}.{name}")
                for name, value in self.property_values().items()}

    def code_version(self) -> str:
        return identity.code_version(type(self), Recipe)

    def input_count(self):
        """(minimum, maximum or None) number of states `run` takes."""
        parameters = list(inspect.signature(self.run).parameters.values())
        if any(p.kind is p.VAR_POSITIONAL for p in parameters):
            return max(1, len(parameters) - 1), None
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        required = [p for p in positional if p.default is p.empty]
        return len(required), len(positional)

    def __call__(self, *inputs):
        if not inputs:
            raise TypeError(f"{type(self).__name__} needs at least one input state")
        inputs = tuple(as_promise(i) for i in inputs)
        experiment = getattr(inputs[0], "experiment", None)
        if experiment is None:
            raise TypeError(f"{type(self).__name__} was called on {type(inputs[0]).__name__}; "
                            "call it on a state promise (from spawn_new_tree or another recipe)")
        return experiment._add_node(self, inputs)

    def __repr__(self):
        try:
            args = ", ".join(f"{k}={v!r}" for k, v in self.property_values().items())
        except TypeError:
            args = "…"
        return f"{type(self).__name__}({args})"


def as_promise(value):
    """A stored node (from `exp.graph`) grows the graph as its promise does."""
    return value.to_promise() if isinstance(value, ExperimentState) else value


def check_recipe_class(cls) -> None:
    """Refuse PROPERTIES naming the recipe's own methods (`PROPERTIES = ["run"]`)."""
    refuse_reserved(cls, Recipe, ("PROPERTIES", "NONHASHED_ATTRIBUTES"))


_MISSING = object()


def _undeclared(recipe) -> dict:
    """The attributes a recipe keeps beyond its PROPERTIES (private ones excepted)."""
    skipped = set(recipe.PROPERTIES) | set(recipe.NONHASHED_ATTRIBUTES)
    return {name: value for name, value in vars(recipe).items()
            if not name.startswith("_") and name not in skipped}


def _same(first, second) -> bool:
    """Equal encodings; else equal (`==`), else equal pickles (two `nn.MSELoss()`
    made by re-running a notebook cell are the same setting)."""
    if first is second:
        return True
    try:
        return identity.canonical(first) == identity.canonical(second)
    except identity.UnsupportedValue:
        pass
    try:
        if bool(first == second):
            return True
    except Exception:  # e.g. tensors of other shapes: not comparable that way
        pass
    try:
        return pickle.dumps(first) == pickle.dumps(second)
    except Exception:
        return False


def undeclared_difference(first, second):
    """Why two recipes that make the same node id must not be merged, or None."""
    mine, theirs = _undeclared(first), _undeclared(second)
    for name in sorted(mine.keys() | theirs.keys()):
        a, b = mine.get(name, _MISSING), theirs.get(name, _MISSING)
        if not _same(a, b):
            cls = type(first).__name__
            shown = ", ".join(f"{name}={'(unset)' if v is _MISSING else f'{v!r:.40}'}" for v in (a, b))
            return (f"{first!r} is built twice on the same input, with {shown}; {name!r} is not in "
                    f"{cls}.PROPERTIES, so both would be one node and the second would never run. "
                    f"Add {name!r} to {cls}.PROPERTIES (then it is part of the node's identity), or to "
                    f"{cls}.NONHASHED_ATTRIBUTES if it does not change what run() makes")
    return None


def undeclared_fingerprint(recipe) -> dict:
    """name -> digest of each attribute beyond PROPERTIES that has a canonical
    encoding, stored with the node to tell a later run that reuses it with other values."""
    fingerprint = {}
    for name, value in _undeclared(recipe).items():
        try:
            fingerprint[name] = identity.digest(identity.canonical(value))
        except identity.UnsupportedValue:
            continue
    return fingerprint


def _closest(name, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Probe:
    """A function run on a node after it is made; its JSON-able result is stored
    on the node under the function's name. It makes no node of its own."""

    def __init__(self, fn):
        if not callable(fn):
            raise TypeError(f"abgraph.function wraps a function of the state, not {fn!r}")
        self.fn = fn
        self.version = "src:" + identity.digest(identity.normalized_source(fn))
        # the result's key; two lambdas on one node must not overwrite each other
        self.name = fn.__name__ if fn.__name__ != "<lambda>" else f"lambda_{self.version[4:12]}"
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, promise):
        promise = as_promise(promise)
        experiment = getattr(promise, "experiment", None)
        if experiment is None:
            raise TypeError(f"{self.name} was called on {type(promise).__name__}; "
                            "call it on a state promise")
        experiment._add_probe(promise.id, self)
        return promise

    def apply(self, node):
        """Run the function on a stored node now, in this process, with the node
        loaded for the call only; return its result."""
        with node.lazy_load():
            return self.fn(node)

    _safe_op = apply  # dagger's name

    def __repr__(self):
        return f"<abgraph.function {self.name}>"


def function(fn):
    """Decorator: `@abgraph.function def eval_fn(state): return {...}`."""
    return Probe(fn)


Function = Probe  # dagger's name: `Function(fn)(promise)`
