"""Experiment states (the nodes) and the promises that stand for them before a run."""
from __future__ import annotations

import contextlib

from .identity import readable


class ExperimentState:
    """A model plus its data at one point of an experiment.

    Subclasses declare `PROPERTIES` (small, JSON-able, inherited by every
    descendant, part of the root's identity, queryable) and `NONHASHED_ATTRIBUTES`
    (the payload, stored as blobs), and build the root in `initialize_state`.
    """

    PROPERTIES: list = []
    NONHASHED_ATTRIBUTES: list = []
    VERSION = None

    def initialize_state(self, **properties):
        """Build the root's payload from its properties (override)."""

    # -- built by the framework, never by users --------------------------------
    @classmethod
    def _create(cls, properties: dict, record=None, graph=None, attributes=None):
        state = cls.__new__(cls)
        internals = {"id": record.id if record else None, "metrics": {}, "_ab_record": record,
                     "_ab_graph": graph, "_ab_snapshot": None, "_ab_properties": dict(properties),
                     "_ab_attributes": list(attributes if attributes is not None
                                            else cls.NONHASHED_ATTRIBUTES)}
        state.__dict__.update(internals)
        state.__dict__.update(properties)
        if record is not None:
            state.metrics = dict(record.metrics)
        return state

    def _payload(self) -> dict:
        """What is stored; an attribute set outside NONHASHED_ATTRIBUTES would be
        lost without a word, so it is refused."""
        kept = self._ab_attributes
        lost = [name for name in self.__dict__ if name not in kept and name not in self._ab_properties
                and name not in ("id", "metrics") and not name.startswith("_ab_")]
        if lost:
            raise AttributeError(
                f"{type(self).__name__} has attribute {lost[0]!r}, which is not in NONHASHED_ATTRIBUTES "
                f"{list(kept)} and would not be stored; add it there (or delete it before returning)")
        return {name: self.__dict__[name] for name in kept if name in self.__dict__}

    @property
    def properties(self) -> dict:
        return dict(self._ab_properties)

    def _load(self, digest, objects, verify=False):
        """Fill the payload from the store (unpickles: trusts the experiment's author)."""
        from .store import payload as payload_io   # torch: imported once a payload is needed
        payload, self._ab_snapshot = payload_io.load(digest, objects, verify)
        self.__dict__.update(payload)
        return self

    def _child(self, payload):
        child = type(self)._create(self._ab_properties, attributes=self._ab_attributes)
        child.__dict__.update(payload)
        return child

    def _fork(self):
        """A private copy for a child, and what it shares with its parent's saved tensors."""
        from .store import payload as payload_io
        payload, known = payload_io.clone(self._payload(), self._ab_snapshot)
        return self._child(payload), known

    def _take(self):
        """The child takes this state's objects (no copy of the model): for a parent
        no other node will read. Only the tensors are copied, to tell afterwards
        which ones the recipe changed."""
        from .store import payload as payload_io
        child = self._child(self._payload())
        known = payload_io.references(self._ab_snapshot) if self._ab_snapshot else {}
        self.deflate()
        return child, known

    # -- what users read -------------------------------------------------------
    def __getattr__(self, name):
        # Only called for attributes that are missing: say why a payload one is.
        if not name.startswith("_") and name in self.__dict__.get("_ab_attributes", ()):
            raise AttributeError(f"{name!r} is not loaded: this node was restored slim; "
                                 f"call .restore() first (node {self.__dict__.get('id')})")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _record(self):
        if self._ab_record is None:
            raise RuntimeError("this state is not a stored node; restore the experiment to browse it")
        return self._ab_record

    @property
    def tags(self) -> list:
        return list(self._record().tags)

    @property
    def results(self) -> dict:
        return dict(self._record().results)

    @property
    def status(self) -> str:
        return self._record().status

    @property
    def error(self):
        return self._record().error

    @property
    def recipe(self):
        """The recipe that made this node: its type name and property values."""
        record = self._record()
        return RecipeInfo(record.recipe, {k: readable(v) for k, v in record.recipe_properties.items()})

    @property
    def parents(self) -> list:
        return [self._ab_graph.node(p) for p in self._record().parents]

    @property
    def parent(self):
        parents = self.parents
        return parents[0] if parents else None

    @property
    def children(self):
        return self._ab_graph.children_of(self.id)

    def diff(self, other):
        """What differs between this node and `other`: common ancestor, recipes and
        code versions on each side, tags, metrics, and which tensors changed (read
        from the store without unpickling). `print()` it, or `.to_dict()`."""
        from .diff import diff
        self._record()
        other._record()
        return diff(self, other)

    @property
    def is_restored(self) -> bool:
        return self._ab_snapshot is not None

    def restore(self, verify: bool = False):
        """Load the full payload (unpickles: trusts the experiment's author).

        `verify=True` also re-hashes every tensor blob; sizes are always checked.
        """
        record = self._record()
        if record.payload is None:
            raise RuntimeError(f"node {self.id} has no payload (status {record.status})")
        return self._load(record.payload, self._ab_graph.objects, verify)

    def deflate(self):
        """Drop the payload from memory; the slim record stays."""
        for name in self._ab_attributes:
            self.__dict__.pop(name, None)
        self._ab_snapshot = None
        return self

    @contextlib.contextmanager
    def lazy_load(self):
        """`with node.lazy_load(): ...` restores for the block, then deflates."""
        was_restored = self.is_restored
        if not was_restored:
            self.restore()
        try:
            yield self
        finally:
            if not was_restored:
                self.deflate()

    def __repr__(self):
        if self._ab_record is None:
            return f"<{type(self).__name__} (running)>"
        level = self._ab_graph.depth(self.id) if self._ab_graph else "?"
        tags = ", ".join(repr(t) for t in self.tags)
        return f"<{type(self).__name__} {self.id[:12]} {self._ab_record.recipe} (level={level}" \
               f"{', tags=' + tags if tags else ''}, {self._ab_record.status})>"


class RecipeInfo(tuple):
    """(type, properties) of the recipe that made a node, as stored."""

    def __new__(cls, type_name, properties):
        return super().__new__(cls, (type_name, properties))

    type = property(lambda self: self[0])
    properties = property(lambda self: self[1])

    @property
    def name(self) -> str:
        return self[0].rsplit(".", 1)[-1]

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self[1].items())
        return f"{self.name}({args})"


class StatePromise:
    """A node that will exist after `Experiment.run()`; its id is known now."""

    __slots__ = ("experiment", "id")

    def __init__(self, experiment, node_id: str):
        self.experiment = experiment
        self.id = node_id

    @property
    def tags(self) -> list:
        return list(self.experiment._nodes[self.id].tags)

    @property
    def properties(self) -> dict:
        return dict(self.experiment._nodes[self.id].properties)

    def __eq__(self, other):
        return isinstance(other, StatePromise) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        node = self.experiment._nodes[self.id]
        return f"<StatePromise {self.id[:12]} {node.recipe_name}>"
