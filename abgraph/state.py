"""Experiment states (the nodes) and the promises that stand for them before a run."""
from __future__ import annotations

import contextlib
import inspect
import weakref
from types import MethodType

from . import identity
from .identity import readable

HOOKS = ("save_pre_hooks", "save_post_hooks", "load_post_hooks")


def _hook_list(name):
    """A list made on first use: most states never have a hook."""
    def get(self):
        return self.__dict__.setdefault(name, [])

    def put(self, hooks):
        self.__dict__[name] = list(hooks)
    return property(get, put)


class ExperimentState:
    """A model plus its data at one point of an experiment.

    Subclasses declare `PROPERTIES` (small, JSON-able, inherited by every
    descendant, part of the root's identity, queryable) and `NONHASHED_ATTRIBUTES`
    (the payload, stored as blobs), and build the root in `initialize_state`.

    Hooks (dagger's): `save_pre_hooks` run before the payload is stored,
    `save_post_hooks` after, `load_post_hooks` after it is loaded back. Each is a
    method of the state or a function of the state (or of nothing); they are
    stored with the payload and inherited by the children.
    """

    PROPERTIES: list = []
    NONHASHED_ATTRIBUTES: list = []
    VERSION = None

    save_pre_hooks = _hook_list("save_pre_hooks")
    save_post_hooks = _hook_list("save_post_hooks")
    load_post_hooks = _hook_list("load_post_hooks")

    def __init__(self, parent_sha=None, experiment_object=None):
        """A state made by hand, as in dagger: every property and payload attribute
        reads None. The nodes of an experiment are made by the framework."""
        cls = type(self)
        check_declarations(cls)
        self.__dict__.update(cls._internals(dict.fromkeys(cls.PROPERTIES), None, None, None,
                                            experiment_object))
        self.__dict__.update(dict.fromkeys(cls.PROPERTIES))
        self._ab_parent_sha = parent_sha

    def initialize_state(self, **properties):
        """Build the root's payload from its properties (override)."""

    # -- built by the framework, never by users --------------------------------
    @classmethod
    def _internals(cls, properties, record, graph, attributes, experiment=None) -> dict:
        """The framework's own attributes. `properties` and `attributes` are kept,
        not copied (never changed: a browsed graph shares them between nodes)."""
        return {"id": record.id if record else None, "metrics": dict(record.metrics) if record else {},
                "_ab_record": record, "_ab_graph": graph, "_ab_snapshot": None, "_ab_properties": properties,
                "_ab_attributes": attributes if attributes is not None else list(cls.NONHASHED_ATTRIBUTES),
                "_ab_parent_sha": None, "experiment_object": experiment}

    @classmethod
    def _create(cls, properties: dict, record=None, graph=None, attributes=None, experiment=None):
        state = cls.__new__(cls)
        values = cls._internals(properties, record, graph, attributes, experiment)
        values.update(properties)
        state.__dict__ = values
        return state

    def _copy_for(self, record):
        """This slim node's twin for another record with the same properties (a
        browsed sweep: copying one dict is cheaper than building it)."""
        values = self.__dict__.copy()
        values["id"], values["metrics"], values["_ab_record"] = record.id, dict(record.metrics), record
        state = type(self).__new__(type(self))
        state.__dict__ = values
        return state

    def _current_properties(self) -> dict:
        return {name: self.__dict__.get(name) for name in self._ab_properties}

    def _changed_properties(self) -> dict:
        """Properties a recipe (or initialize_state) set: kept on the node and its descendants."""
        cls, planned = type(self).__name__, self._ab_properties
        return {name: value for name, value in self._current_properties().items()
                if value is not planned[name] and identity.canonical(value, f"{cls}.{name}")
                != identity.canonical(planned[name], f"{cls}.{name}")}

    def _payload(self) -> dict:
        """What is stored: the payload attributes, properties a recipe changed, and
        hooks. Any other attribute would be lost without a word, so it is refused."""
        kept = self._ab_attributes
        lost = [name for name in self.__dict__ if name not in kept and name not in self._ab_properties
                and name not in STATE_INTERNALS and not name.startswith("_ab_")]
        if lost:
            raise AttributeError(
                f"{type(self).__name__} has attribute {lost[0]!r}, which is not in NONHASHED_ATTRIBUTES "
                f"{list(kept)} and would not be stored; add it there (or delete it before returning)")
        payload = {name: self.__dict__[name] for name in kept if name in self.__dict__}
        payload.update(self._changed_properties())
        for name in HOOKS:
            if self.__dict__.get(name):
                payload[name] = [_StateMethod(h.__func__.__name__) if _bound_to(h, self) else h
                                 for h in self.__dict__[name]]
        return payload

    @property
    def properties(self) -> dict:
        return self._current_properties()

    def _load(self, digest, objects, verify=False):
        """Fill the payload from the store (unpickles: trusts the experiment's author)."""
        from .store import payload as payload_io   # torch: imported once a payload is needed
        payload, self._ab_snapshot = payload_io.load(digest, objects, verify)
        self._adopt_payload(payload)
        self._run_hooks("load_post_hooks")
        return self

    def _adopt_payload(self, payload) -> None:
        self.__dict__.update(payload)
        for name in HOOKS:
            if name in payload:
                self.__dict__[name] = [h.bind(self) if isinstance(h, _StateMethod) else h for h in payload[name]]

    def _run_hooks(self, name) -> None:
        for hook in list(self.__dict__.get(name, ())):
            takes_state = _positional_count(hook) >= 1 and not _bound_to(hook, self)
            hook(self) if takes_state else hook()

    def _child(self, payload):
        child = type(self)._create(self._ab_properties, attributes=self._ab_attributes)
        child.__dict__.update(self._current_properties())
        child._adopt_payload(payload)
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
        # Only called for attributes that are missing. A payload attribute never
        # set reads None (as in dagger) unless the node is slim: then say why.
        state = self.__dict__
        if not name.startswith("_") and name in state.get("_ab_attributes", ()):
            if state.get("_ab_record") is not None and state.get("_ab_snapshot") is None:
                raise AttributeError(f"{name!r} is not loaded: this node was restored slim; "
                                     f"call .restore() first (node {state.get('id')})")
            return None
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self):
        """A pickled state leaves its experiment and graph behind (dagger's rule)."""
        state = dict(self.__dict__)
        state.pop("experiment_object", None)
        state.update(_ab_graph=None, _ab_snapshot=None)
        return state

    def __setstate__(self, state):
        self.__dict__ = state
        self.experiment_object = None

    def _record(self):
        if self._ab_record is None:
            raise RuntimeError("this state is not a stored node; restore the experiment to browse it")
        return self._ab_record

    def sha(self) -> str:
        """The node's id (dagger's name); for a state made by hand, the id it would
        have as a root."""
        if self.id is not None:
            return self.id
        cls = type(self)
        return identity.root_id(cls, self._current_properties(), identity.code_version(cls, ExperimentState))

    @property
    def tags(self) -> list:
        return list(self._ab_record.tags) if self._ab_record is not None else []

    @property
    def results(self) -> dict:
        return dict(self._record().results)

    @property
    def probe_errors(self) -> dict:
        """function name -> traceback, for the functions that raised on this node."""
        return failed_functions(self._record())

    @property
    def status(self) -> str:
        return self._record().status

    @property
    def error(self):
        return self._record().error

    @property
    def recipe(self):
        """The recipe that made this node: its type name and property values (None
        for a state made by hand)."""
        record = self._ab_record
        if record is None:
            return None
        return RecipeInfo(record.recipe, {k: readable(v) for k, v in record.recipe_properties.items()})

    @property
    def parents(self) -> list:
        if self._ab_graph is None:
            return []
        return [self._ab_graph.node(p) for p in self._record().parents]

    @property
    def parent(self):
        parents = self.parents
        return parents[0] if parents else None

    @property
    def parent_sha(self):
        """The first parent's id (dagger's name)."""
        if self._ab_record is None:
            return self._ab_parent_sha
        return self._ab_record.parents[0] if self._ab_record.parents else None

    @property
    def root_state(self) -> bool:
        return self._ab_record is not None and not self._ab_record.parents

    @property
    def root(self):
        """The root this node descends from (through first parents)."""
        if self._ab_graph is None:
            return self.experiment_object.root if self.experiment_object is not None else None
        node = self
        while node._ab_record.parents:
            node = node.parents[0]
        return node

    @property
    def children(self):
        return self._ab_graph.children_of(self.id) if self._ab_graph is not None else []

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

    @property
    def slim_loaded(self) -> bool:
        """A stored node whose payload is not in memory (dagger's name)."""
        return self._ab_record is not None and not self.is_restored

    @property
    def from_cache(self) -> bool:
        """A stored node that this experiment object did not compute (dagger's name)."""
        return self._ab_graph is not None and self._ab_graph.from_cache(self.id)

    def to_promise(self) -> "StatePromise":
        """This stored node as a promise, to grow the graph from it: `Recipe(...)(node.to_promise())`."""
        if self.experiment_object is None:
            raise RuntimeError("this state belongs to no experiment; restore one with "
                               "Experiment.restore(directory, state_class=...) and take its nodes")
        return self.experiment_object._adopt(self)

    def new_state(self, recipe):
        """The node `recipe` makes from this one, computed if it is not stored yet."""
        return recipe(self.to_promise()).get()

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
            return f"<{type(self).__name__} (running)>" if self.id else f"<{type(self).__name__} (made by hand)>"
        level = self._ab_graph.depth(self.id) if self._ab_graph else "?"
        tags = ", ".join(repr(t) for t in self.tags)
        return f"<{type(self).__name__} {self.id[:12]} {self._ab_record.recipe} (level={level}" \
               f"{', tags=' + tags if tags else ''}, {self._ab_record.status})>"


FAILED_PROBE = "failed:"  # prefix of a result version: the function raised (run it again next time)


def failed_functions(record) -> dict:
    """function name -> traceback, for the functions that raised on a node."""
    return {name: record.results[name]["error"] for name, version in record.result_versions.items()
            if version.startswith(FAILED_PROBE)}


class _StateMethod:
    """A hook that is a method of its state, stored by name and bound to the
    state it is loaded into (a child is a copy: its hooks act on the child)."""

    def __init__(self, name):
        self.name = name

    def bind(self, state):
        return getattr(state, self.name)


def _bound_to(hook, state) -> bool:
    return isinstance(hook, MethodType) and hook.__self__ is state


def _positional_count(function) -> int:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return 0
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
               for p in parameters)


_checked: "weakref.WeakSet[type]" = weakref.WeakSet()


def check_declarations(cls) -> None:
    """Refuse a state class whose PROPERTIES or NONHASHED_ATTRIBUTES name one of
    the framework's own attributes (`PROPERTIES = ["status"]` would shadow
    `node.status`), or name one attribute twice."""
    refuse_reserved(cls, ExperimentState, ("PROPERTIES", "NONHASHED_ATTRIBUTES"), STATE_INTERNALS)


def refuse_reserved(cls, base, lists, extra=()) -> None:
    """Raise TypeError if a name in `cls`'s declaration `lists` is an attribute
    of `base` (or in `extra`), or is declared twice."""
    if cls in _checked:
        return
    reserved = {n for n in dir(base) if not n.startswith("_")} | set(extra)
    seen = {}
    for list_name in lists:
        declared = getattr(cls, list_name, ())
        if isinstance(declared, str):
            continue  # a string where a list belongs is reported where the list is read
        for name in declared:
            if name in reserved:
                raise TypeError(f"{cls.__name__}.{list_name} names {name!r}, which is an attribute "
                                f"abgraph itself gives every {base.__name__}; rename it "
                                f"(reserved: {', '.join(sorted(n for n in reserved if not n.isupper()))})")
            if name in seen:
                raise TypeError(f"{cls.__name__} declares {name!r} in both {seen[name]} and {list_name}")
            seen[name] = list_name
    _checked.add(cls)


STATE_INTERNALS = ("id", "metrics", "experiment_object", *HOOKS)


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
    def experiment_object(self):
        """The experiment this promise belongs to (dagger's name)."""
        return self.experiment

    @property
    def tags(self) -> list:
        return list(self.experiment._nodes[self.id].tags)

    @property
    def properties(self) -> dict:
        return dict(self.experiment._nodes[self.id].properties)

    def get(self, executor=None):
        """Run this node (and what it needs) if it is not stored yet, and return it
        as a stored node (slim: `.restore()` loads it). In this process by default,
        as dagger does; raises `NodeFailedError` if the node could not be made."""
        return self.experiment._get(self.id, executor)

    def __eq__(self, other):
        return isinstance(other, StatePromise) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        node = self.experiment._nodes[self.id]
        return f"<StatePromise {self.id[:12]} {node.recipe_name}>"


ExperimentStatePromise = StatePromise  # dagger's name for the same thing


class NodeFailedError(RuntimeError):
    """A node asked for with `get()` failed (or was blocked); its traceback is the message."""
