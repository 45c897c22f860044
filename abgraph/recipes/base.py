"""Recipes (the edges) and probe functions."""
from __future__ import annotations

import difflib
import inspect

from .. import identity


class Recipe:
    """Turns one state (plus read-only extra inputs) into a new state.

    Subclass, list the values that define the recipe in `PROPERTIES` (they are
    part of the node's identity), and implement `run(state, *others)`, returning
    the state. Set `VERSION` to decide yourself when the cache is invalidated;
    without it any change of the class's code is a new recipe. `REQUIRES` names
    payload attributes the input state must declare, checked when the graph is
    built.
    """

    PROPERTIES: list = []
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


def _closest(name, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Probe:
    """A function run on a node after it is made; its JSON-able result is stored
    on the node under the function's name. It makes no node of its own."""

    def __init__(self, fn):
        self.fn = fn
        self.name = fn.__name__
        self.version = "src:" + identity.digest(identity.normalized_source(fn))
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __call__(self, promise):
        experiment = getattr(promise, "experiment", None)
        if experiment is None:
            raise TypeError(f"{self.name} was called on {type(promise).__name__}; "
                            "call it on a state promise")
        experiment._add_probe(promise.id, self)
        return promise

    def __repr__(self):
        return f"<abgraph.function {self.name}>"


def function(fn):
    """Decorator: `@abgraph.function def eval_fn(state): return {...}`."""
    return Probe(fn)
