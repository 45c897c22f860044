"""Ablators: which trials an ablation study runs.

An ablator turns what a study includes (features, single layers, layer groups,
custom models) into a list of `Trial`s. Write a new one by subclassing `Ablator`
and implementing `trials(study)`:

    class EveryFeatureAlone(Ablator):
        def trials(self, study):
            return [Trial.feature(f) for f in study.features.included]

The study always adds the base trial (nothing removed) when an ablator leaves it
out: every result is a difference to the base.
"""
from __future__ import annotations

import difflib
import itertools
from dataclasses import dataclass

from abgraph.ablation.errors import AblationError
from abgraph.ablation.surgery import Prefix

__all__ = ["ABLATORS", "Ablator", "LOCO", "LeaveKOut", "Trial", "get_ablator"]

KINDS = ("base", "feature", "layer", "model", "mixed")


@dataclass(frozen=True)
class Trial:
    """One configuration of a study: what is removed from the base.

    kind: "base" (nothing), "feature" (components: features removed together),
    "layer" (components: layer targets removed together: names, indices or a
    `Prefix`), "model" (components: the name of one custom model generator), or
    "mixed" (components: `(kind, target)` pairs, e.g. a feature and a layer).
    """

    name: str
    kind: str
    components: tuple = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise AblationError(f"trial {self.name!r}: kind {self.kind!r} is not one of {KINDS}")
        if not isinstance(self.name, str) or not self.name:
            raise AblationError(f"a trial needs a non-empty name, not {self.name!r}")
        object.__setattr__(self, "components", tuple(self.components))
        if self.kind == "base" and self.components:
            raise AblationError(f"the base trial {self.name!r} removes nothing; it has components "
                                f"{self.components}")
        if self.kind != "base" and not self.components:
            raise AblationError(f"trial {self.name!r} ({self.kind}) names nothing to remove")
        if self.kind == "model" and len(self.components) != 1:
            raise AblationError(f"trial {self.name!r}: a model trial names one custom model, "
                                f"not {self.components}")
        if self.kind == "mixed":
            for pair in self.components:
                if not (isinstance(pair, tuple) and len(pair) == 2 and pair[0] in ("feature", "layer")):
                    raise AblationError(f"trial {self.name!r}: a mixed trial's components are "
                                        f"('feature' | 'layer', target) pairs, not {pair!r}")

    def removals(self) -> list:
        """Every removal as a `(kind, target)` pair."""
        if self.kind == "mixed":
            return list(self.components)
        if self.kind == "base":
            return []
        return [(self.kind, c) for c in self.components]

    @property
    def features(self) -> list:
        return [target for kind, target in self.removals() if kind == "feature"]

    @property
    def layers(self) -> list:
        return [target for kind, target in self.removals() if kind == "layer"]

    @property
    def model(self):
        """The custom model's name, or None for the base model."""
        return self.components[0] if self.kind == "model" else None

    # -- constructors for ablator authors ----------------------------------------
    @classmethod
    def base(cls) -> "Trial":
        return cls("base", "base", ())

    @classmethod
    def feature(cls, *names) -> "Trial":
        """Features removed together; a tuple among them is a feature group."""
        return cls(" + ".join(_feature_label(n) for n in names), "feature", names)

    @classmethod
    def layer(cls, target) -> "Trial":
        return cls(_layer_label(target), "layer", (target,))

    @classmethod
    def layer_group(cls, targets) -> "Trial":
        targets = tuple(targets)
        if len(targets) == 1 and isinstance(targets[0], Prefix):
            return cls(_layer_label(targets[0]), "layer", targets)
        return cls(f"layers {list(targets)}", "layer", targets)

    @classmethod
    def custom_model(cls, name) -> "Trial":
        return cls(f"model {name}", "model", (name,))

    @classmethod
    def combine(cls, trials) -> "Trial":
        """One trial removing everything the given feature/layer trials remove."""
        trials = list(trials)
        if any(t.kind in ("base", "model") for t in trials):
            raise AblationError("only feature and layer trials can be combined")
        name = " + ".join(t.name for t in trials)
        kinds = {t.kind for t in trials}
        if len(kinds) == 1 and "mixed" not in kinds:
            components = tuple(itertools.chain.from_iterable(t.components for t in trials))
            return cls(name, kinds.pop(), tuple(dict.fromkeys(components)))
        pairs = tuple(dict.fromkeys(itertools.chain.from_iterable(t.removals() for t in trials)))
        return cls(name, "mixed", pairs)

    def describe(self) -> dict:
        """What is removed, in Maggy's words (`ablated_feature`, `ablated_layer`, `custom_model`)."""
        features, layers = self.features, self.layers
        return {"ablated_feature": _listed(features), "ablated_layer": _listed(layers),
                **({"custom_model": self.model} if self.kind == "model" else {})}


def _feature_label(name) -> str:
    return f"features {list(name)}" if isinstance(name, tuple) else f"feature {name}"


def _layer_label(target) -> str:
    if isinstance(target, Prefix):
        return f"layers prefixed {target.prefix}"
    return f"layer {target}"


def _listed(items):
    if not items:
        return "None"
    shown = [f"prefix {i.prefix}" if isinstance(i, Prefix) else list(i) if isinstance(i, tuple) else i
             for i in items]
    return str(shown[0]) if len(shown) == 1 else str(shown)


class Ablator:
    """Decides the trials of a study. Implement `trials(study) -> list[Trial]`.

    `study.features.included` (names; a tuple is a feature group removed
    together), `study.model.layers.included` (single layers),
    `study.model.layers.groups` (tuples of targets removed together; a prefix
    group is `(Prefix(...),)`) and `study.model.custom_models` (name ->
    generator) are what the user included.
    """

    label = "custom"  # the title of the results ("------ LOCO Results ------")

    def trials(self, study) -> list:
        raise NotImplementedError(f"{type(self).__name__} must implement trials(study)")

    def __repr__(self):
        return f"{type(self).__name__}()"


def _units(study) -> list:
    """Every included feature, single layer and layer group, as one trial each."""
    return ([Trial.feature(f) for f in study.features.included]
            + [Trial.layer(t) for t in study.model.layers.included]
            + [Trial.layer_group(g) for g in study.model.layers.groups])


def _models(study) -> list:
    return [Trial.custom_model(name) for name in study.model.custom_models]


class LOCO(Ablator):
    """Leave One Component Out: the base, then one trial per included feature,
    single layer, layer group and custom model."""

    label = "LOCO"

    def trials(self, study) -> list:
        return [Trial.base()] + _units(study) + _models(study)


class LeaveKOut(Ablator):
    """The base, then one trial per combination of `k` included components
    (features, single layers and layer groups, each group counting as one).

    Custom models replace the whole model, so they are not combined: each is one
    trial, as in LOCO. `LeaveKOut(1)` is LOCO.
    """

    def __init__(self, k: int = 2):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise AblationError(f"LeaveKOut needs a positive int k, not {k!r}")
        self.k = k
        self.label = f"LEAVE-{k}-OUT"

    def trials(self, study) -> list:
        units = _units(study)
        if units and self.k > len(units):
            raise AblationError(f"LeaveKOut(k={self.k}) needs at least {self.k} included features, "
                                f"layers or layer groups; the study has {len(units)}")
        combined = [Trial.combine(c) for c in itertools.combinations(units, self.k)]
        return [Trial.base()] + combined + _models(study)

    def __repr__(self):
        return f"LeaveKOut(k={self.k})"


ABLATORS = {"loco": LOCO, "leave_k_out": LeaveKOut}


def get_ablator(spec) -> Ablator:
    """An `Ablator` from a name ("loco", "leave_k_out"), an instance or a subclass."""
    if isinstance(spec, Ablator):
        return spec
    if isinstance(spec, type) and issubclass(spec, Ablator):
        return spec()
    if isinstance(spec, str):
        key = spec.strip().lower().replace("-", "_")
        if key in ABLATORS:
            return ABLATORS[key]()
        close = difflib.get_close_matches(key, list(ABLATORS), n=1)
        raise AblationError(f"unknown ablator {spec!r}; valid ablators: {list(ABLATORS)}"
                            + (f" (did you mean {close[0]!r}?)" if close else "")
                            + ", or an Ablator instance such as LeaveKOut(3)")
    raise AblationError(f"ablator must be a name ({list(ABLATORS)}) or an Ablator, not "
                        f"{type(spec).__name__}")
