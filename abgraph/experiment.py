"""`Experiment`: build the graph lazily, run what is missing, restore what is stored."""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import inspect
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import identity
from .graph import ExperimentGraph
from .state import ExperimentState, NodeFailedError, StatePromise, check_declarations
from .store import OBJECTS_NAME, DamagedIndex, Index, ObjectStore, maintenance, open_store

LOCK_NAME = ".abgraph.lock"


@dataclass
class PlannedNode:
    id: str
    parents: list
    recipe: object                      # None for a root
    recipe_record: tuple                # (type name, encoded properties, code version)
    properties: dict
    tags: list = field(default_factory=list)
    probes: dict = field(default_factory=dict)
    arguments: dict = field(default_factory=dict)  # a root's keywords beyond PROPERTIES
    encoded_properties: dict | None = None          # as stored, for a node adopted from the index

    @property
    def recipe_name(self) -> str:
        return self.recipe_record[0].rsplit(".", 1)[-1]


class TagScope:
    """What `Experiment.tag` returns: a `with` block or a decorator. Left unused
    (`exp.tag("x")` on its own line) it warns, since it would tag nothing."""

    def __init__(self, experiment, tags: tuple):
        self.experiment, self.tags, self.used = experiment, tags, False

    def __enter__(self):
        self.used = True
        self.experiment._tags.extend(self.tags)
        return self.experiment

    def __exit__(self, *exc_info):
        active = self.experiment._tags
        del active[len(active) - len(self.tags):]

    def __call__(self, function):
        self.used = True

        @functools.wraps(function)
        def tagged(*args, **kwargs):
            with TagScope(self.experiment, self.tags):
                return function(*args, **kwargs)
        return tagged

    def __del__(self):
        if not self.used:
            warnings.warn(f"exp.tag({', '.join(map(repr, self.tags))}) tagged nothing: use it as "
                          "`with exp.tag(...):` or as a decorator `@exp.tag(...)`", stacklevel=2)


class Experiment:
    """One folder, one DAG of states. Build it with `spawn_new_tree` and recipes,
    then `run()`; come back later with `Experiment.restore(folder)`.

    `objects` puts the payload blobs elsewhere than `directory/objects`: a folder
    every machine of a cluster reaches, or an fsspec URL (``s3://bucket/exp``);
    `storage_options` go to fsspec (endpoint, credentials) and are never stored.
    """

    def __init__(self, directory, state_class=ExperimentState, objects=None, storage_options=None):
        _check_state_class(state_class)
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory} is a file, not a folder: an experiment is a "
                                     "folder (give a new path, or the folder of an existing experiment)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state_class = state_class
        self.index = Index(self.directory, create=True)
        self.objects = _objects(self.index, self.directory, objects, storage_options)
        self.objects.claim(self.directory.resolve())
        self._start_building()

    def _start_building(self):
        self._nodes: dict[str, PlannedNode] = {}
        self._tags: list[str] = []
        self._stopping_rules: dict = {}
        self._graph = None
        self._roots: list[str] = []      # spawned in this session
        self._root_choice = None          # the id `exp.root = ...` picked
        self._root_object = None          # the state made by hand that became that root
        self._executed: set[str] = set()  # computed by this object's runs (the rest came from the store)
        self.experiment_arguments = None  # the keywords of the last spawn_new_tree (dagger's name)

    # -- an Experiment travels as its folder ---------------------------------------
    def __getstate__(self):
        """A recipe that keeps its experiment is sent to workers: only the folder
        travels (no connection, no lock); the copy browses what is stored."""
        return {"directory": str(self.directory), "state_class": self.state_class, "roots": self._roots,
                "root_choice": self._root_choice}

    def __setstate__(self, state):
        self.directory = Path(state["directory"])
        self.state_class = state["state_class"]
        self.index = Index(self.directory)
        self.objects = _objects(self.index, self.directory, None, create=False)
        self._start_building()
        self._roots = list(state["roots"])
        self._root_choice = state.get("root_choice")

    # -- building ----------------------------------------------------------------
    def tag(self, *tags) -> "TagScope":
        """Label every node created inside `with exp.tag(...):` (blocks nest), or
        by a function decorated with `@exp.tag(...)`; `tag("a", "b")` and dagger's
        `tag(["a", "b"])` are the same."""
        tags = tuple(t for tag in tags for t in (tag if isinstance(tag, (list, tuple)) else [tag]))
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise TypeError(f"a tag is a non-empty string, not {tag!r}")
            if not tag.isprintable():
                raise ValueError(f"tag {tag!r} holds a control character or a lone surrogate; "
                                 "a tag is printable text (it is shown in terminals and drawings)")
        return TagScope(self, tags)

    @property
    def tags(self) -> list:
        """The tags of the `with exp.tag(...)` blocks open now (dagger's name)."""
        return list(self._tags)

    def spawn_new_tree(self, **arguments) -> StatePromise:
        """The root of a tree: `state_class.initialize_state(**arguments)` builds it.

        Every name in PROPERTIES needs a value; other keywords go to
        `initialize_state` only (if it takes them) and are part of the root's
        identity, but are not properties (not inherited, not queryable)."""
        cls = self.state_class
        declared = list(cls.PROPERTIES)
        properties = {name: value for name, value in arguments.items() if name in declared}
        extra = {name: value for name, value in arguments.items() if name not in declared}
        missing = [name for name in declared if name not in properties]
        for name in extra:  # a typo of a missing property, or a keyword initialize_state does not take
            close = difflib.get_close_matches(name, missing or declared, n=1)
            if (close and missing) or not _accepts(cls.initialize_state, name):
                raise MissingPropertyError(
                    f"{cls.__name__} has no property {name!r}"
                    + ("" if missing else " and its initialize_state takes no such keyword")
                    + f"; its PROPERTIES are {declared}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if missing:
            raise MissingPropertyError(f"{cls.__name__} needs a value for {', '.join(map(repr, missing))} "
                                       f"(its PROPERTIES are {declared})")
        version = identity.code_version(cls, ExperimentState)
        node_id = identity.root_id(cls, properties, version, extra)
        record = ("root", identity.canonical(extra, f"{cls.__name__}.spawn_new_tree")["map"], version)
        self.experiment_arguments = dict(arguments)
        if node_id not in self._roots:
            self._roots.append(node_id)
        return self._register(PlannedNode(node_id, [], None, record, properties, arguments=extra))

    def _add_node(self, recipe, inputs) -> StatePromise:
        from .recipes.base import check_recipe_class  # the recipes package imports torch
        name = type(recipe).__name__
        check_recipe_class(type(recipe))
        for position, promise in enumerate(inputs):
            if not isinstance(promise, StatePromise) or promise.experiment is not self:
                raise TypeError(f"{name} input {position} is {promise!r}, not a state promise "
                                "of this experiment")
        least, most = recipe.input_count()
        if len(inputs) < least or (most is not None and len(inputs) > most):
            expected = f"{least}" if least == most else f"{least} to {most or 'any'}"
            raise TypeError(f"{name}.run takes {expected} state(s); it was called on {len(inputs)}")
        recipe.check(self.state_class, *inputs)
        encoded = recipe.encoded_properties()
        version = recipe.code_version()
        parents = [p.id for p in inputs]
        node_id = identity.node_id(parents, recipe.type_name, encoded, version)
        properties = self._nodes[parents[0]].properties
        return self._register(PlannedNode(node_id, parents, recipe,
                                          (recipe.type_name, encoded, version), properties))

    def _register(self, node: PlannedNode) -> StatePromise:
        """Two promises with one id are one node; their tags are merged. Two recipes
        that would be one node but differ outside PROPERTIES are refused: the
        second would silently never run."""
        existing = self._nodes.setdefault(node.id, node)
        if existing is not node and existing.recipe is not None and node.recipe is not None:
            from .recipes.base import undeclared_difference
            difference = undeclared_difference(existing.recipe, node.recipe)
            if difference:
                raise ValueError(difference)
        for tag in self._tags:
            if tag not in existing.tags:
                existing.tags.append(tag)
        return StatePromise(self, node.id)

    def _add_probe(self, node_id, probe) -> None:
        self._nodes[node_id].probes[probe.name] = probe

    def _adopt(self, node) -> StatePromise:
        """A stored node as a promise of this experiment, to grow the graph from it."""
        record = node._ab_record
        if record.status != "done":
            raise RuntimeError(f"node {record.id[:12]} is {record.status}, not done: rebuild it with its "
                               "recipe (its code is not stored) and run again")
        made_with = record.state_class.rsplit(".", 1)[-1]
        if self.state_class.__qualname__ != made_with:
            raise TypeError(f"node {record.id[:12]} is a {made_with}; to grow from it, restore with "
                            f"Experiment.restore({str(self.directory)!r}, state_class={made_with})")
        if record.id not in self._nodes:
            properties = self._real_properties(record) or dict(node._ab_properties)
            recipe_record = (record.recipe, record.recipe_properties, record.recipe_version)
            self._nodes[record.id] = PlannedNode(record.id, list(record.parents), None, recipe_record,
                                                 properties, encoded_properties=record.properties)
        return StatePromise(self, record.id)  # not tagged: it was made before, under its own tags

    def _real_properties(self, record):
        """The properties as Python objects (not as stored: a function is stored by
        name), when a root spawned in this session has the same ones."""
        for node_id in self._roots:
            properties = self._nodes[node_id].properties
            if identity.canonical(properties, self.state_class.__name__)["map"] == record.properties:
                return dict(properties)
        return None

    # -- dagger's views of what was built ------------------------------------------
    @property
    def nodes(self) -> dict:
        """id -> promise of every node built in this session."""
        return {node_id: StatePromise(self, node_id) for node_id in self._nodes}

    @property
    def leaves(self) -> dict:
        """id -> promise of the nodes built in this session that no other built node uses."""
        used = {parent for node in self._nodes.values() for parent in node.parents}
        return {node_id: StatePromise(self, node_id) for node_id in self._nodes if node_id not in used}

    @property
    def root(self):
        """The root (dagger's name). Spawned in this session: computed if it is not
        stored yet, and loaded. Otherwise the stored root, slim. None if there is none."""
        if self._root_choice is not None:
            if self._root_object is not None:
                return self._root_object
            return self._root_node(self._root_choice)
        if len(self._roots) > 1:
            raise RuntimeError(f"this experiment has {len(self._roots)} roots; pick one with "
                               "`exp.root = promise`, or use the promises spawn_new_tree returned")
        if self._roots:
            return self._root_node(self._roots[0])
        roots = self.graph.roots
        if len(roots) > 1:
            raise RuntimeError(f"{self.directory} holds {len(roots)} roots; pick one with "
                               "`exp.root = exp.graph.roots[i]`")
        return roots[0] if roots else None

    @root.setter
    def root(self, state):
        """dagger's `exp.root = state`. A root promise or stored root of this
        experiment picks which root `exp.root` (and `state.root`) means. A state
        made by hand with only its PROPERTIES set becomes the root: spawned with
        those properties, built by `initialize_state` and stored now, and from
        then on that object is the stored node."""
        if isinstance(state, StatePromise) and state.experiment is self:
            node_id = state.id
        elif isinstance(state, ExperimentState) and state.id is not None:
            node_id = state.id
        elif isinstance(state, ExperimentState):
            self._adopt_hand_made_root(state)
            return
        else:
            raise TypeError(f"exp.root takes a root promise, a stored root or a state made by hand, "
                            f"not {type(state).__name__}")
        known = self._nodes.get(node_id)
        stored = self.graph.node(node_id) if known is None and node_id in self.graph else None
        parents = known.parents if known else stored._ab_record.parents if stored else None
        if parents is None or parents:
            raise ValueError(f"node {node_id[:12]} is not a root of {self.directory}; its roots are "
                             f"{[n[:12] for n in self._roots] or [n.id[:12] for n in self.graph.roots]}")
        self._root_choice, self._root_object = node_id, None

    def _adopt_hand_made_root(self, state) -> None:
        if not isinstance(state, self.state_class) or state.experiment_object not in (None, self):
            raise TypeError(f"exp.root = state takes a {self.state_class.__name__} of this experiment, "
                            f"not a {type(state).__name__} of {state.experiment_object!r}")
        given = [name for name in state._ab_attributes if state.__dict__.get(name) is not None]
        if given:
            raise ValueError(f"a root's payload is built by initialize_state from its properties; "
                             f"{', '.join(given)} would be lost: set only PROPERTIES "
                             f"{list(type(state).PROPERTIES)} on a state given as the root")
        promise = self.spawn_new_tree(**state._current_properties())
        node = self._root_node(promise.id)
        state.__dict__.update(node.__dict__)
        state.experiment_object = self
        self._root_choice, self._root_object = promise.id, state

    def _root_node(self, root_id):
        """A root spawned in this session is computed if need be and loaded; a stored one stays slim."""
        built_here = root_id in self._nodes
        node = self.graph.node(root_id) if root_id in self.graph else None
        if built_here and (node is None or node.status != "done"):
            node = self._get(root_id)
        return node.restore() if built_here and not node.is_restored else node

    def _get(self, node_id, executor=None):
        """Run `node_id` and its ancestors if they are not stored (in this process by
        default), and return the stored node."""
        from .executors import SerialExecutor
        if self.index.statuses().get(node_id, (None, None))[0] != "done":
            everything, wanted = self._nodes, self._ancestry(node_id)
            self._nodes = {n: node for n, node in everything.items() if n in wanted}
            try:
                self.run(executor or SerialExecutor(), raise_on_failure=False)  # get() says why
            finally:
                self._nodes = everything
        node = self.graph.node(node_id)
        if node.status != "done":
            raise NodeFailedError(f"node {node_id[:12]} ({self._nodes[node_id].recipe_name}) "
                                  f"{node.status}:\n{node.error}")
        return node

    def _ancestry(self, node_id) -> set:
        seen, frontier = set(), [node_id]
        while frontier:
            current = frontier.pop()
            if current not in seen:
                seen.add(current)
                frontier.extend(self._nodes[current].parents)
        return seen

    # -- running -----------------------------------------------------------------
    def run(self, executor=None, progress=None, early_stopping: bool = True, raise_on_failure: bool = True):
        """Run every node not yet stored; return a `RunReport`.

        `executor` defaults to a `ProcessExecutor` using every core or GPU (kept
        between runs in a notebook or REPL); `progress` (None: only on a
        terminal) shows a progress line; `early_stopping=False` ignores the
        sweep's stopping rules, so stopped branches resume from their last rung.
        A run that leaves failed, blocked or unrun nodes prints a summary to
        stderr and, once everything is stored, raises `RunFailed` (its `.report`
        is the report) unless `raise_on_failure=False`.
        """
        # the run machinery imports torch: not needed to build or browse a graph
        from . import stopping
        from .executors import default_executor
        from .run import RunLoop
        rules = stopping.rules_for_run(self, early_stopping)
        self._warn_undeclared_changes(self.index.statuses())
        with self._run_lock():
            maintenance.damaged_nodes(self.index, self.objects, self._nodes)  # the loop recomputes them
            report = RunLoop(self, executor or default_executor(), progress, rules).run()
        self._graph = None
        self._executed.update(report.executed)
        report.directory = str(self.directory)
        return report.raise_for_failures(raise_on_failure)

    def _add_stopping_rule(self, rule) -> None:
        self._stopping_rules[rule.key] = rule

    @contextlib.contextmanager
    def _run_lock(self):
        """Shared while running, so `abgraph gc` never deletes blobs a run is writing."""
        with open(self.directory / LOCK_NAME, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _warn_undeclared_changes(self, stored) -> None:
        """A stored node reused although its recipe now differs outside PROPERTIES:
        the stored result was made with other values. Say so."""
        from .recipes.base import undeclared_fingerprint
        reused = [n for n in self._nodes.values() if n.recipe is not None
                  and stored.get(n.id, (None,))[0] == "done" and undeclared_fingerprint(n.recipe)]
        if not reused:
            return
        records = {r.id: r for r in self.index.records([n.id for n in reused])}
        for node in reused:
            before = records[node.id].environment.get("recipe_attributes", {})
            now = undeclared_fingerprint(node.recipe)
            changed = sorted(name for name in before.keys() & now.keys() if before[name] != now[name])
            if changed:
                warnings.warn(f"node {node.id[:12]} ({node.recipe_name}) is reused from the store, but "
                              f"{node.recipe_name}.{changed[0]} differs from the value it was made with; "
                              f"{changed[0]!r} is not in {node.recipe_name}.PROPERTIES, so it is not part "
                              "of the node's identity: add it to PROPERTIES to make a new node",
                              UndeclaredChangeWarning, stacklevel=3)

    # -- browsing ----------------------------------------------------------------
    @property
    def graph(self) -> ExperimentGraph:
        """Every stored node (slim); refreshed after each `run()`."""
        if self._graph is None:
            self._graph = self._read_graph(blobs=False)
        return self._graph

    def _read_graph(self, blobs: bool) -> ExperimentGraph:
        """The stored nodes; `blobs=True` also reads (and checks) each node's blob digests."""
        return ExperimentGraph(self.index.records(blobs=blobs), self.objects, self.state_class, self)

    @classmethod
    def restore(cls, directory, state_class=None, slim: bool = True, storage_options=None) -> "Experiment":
        """Open a stored experiment. Slim (the default) reads only the index and
        unpickles nothing; `slim=False` also loads every payload. Give the
        `state_class` the nodes were made with to grow it: `Recipe(...)(node)`,
        then `run()` computes only the new nodes."""
        if state_class is not None:
            _check_state_class(state_class)
        directory = Path(directory).expanduser()
        index = Index(directory)  # raises if this is not an experiment
        experiment = cls.__new__(cls)
        experiment.directory, experiment.index = directory, index
        experiment.objects = _objects(index, directory, None, storage_options, create=False)
        experiment._start_building()
        # Without a state_class, nodes are generic ExperimentStates: importing the
        # class the index names would run someone's code just to browse.
        experiment.state_class = state_class or ExperimentState
        if not slim:
            experiment._graph = experiment._read_graph(blobs=True)  # every column checked, the blobs too
            for node in experiment.graph.nodes:
                if node.status == "done":
                    node.restore()
        return experiment

    def __repr__(self):
        return f"<Experiment {self.directory} ({len(self._nodes)} nodes built)>"


class MissingPropertyError(TypeError, KeyError):
    """spawn_new_tree without a value for a property (a KeyError too, as in dagger)."""

    def __str__(self):
        return str(self.args[0])


class UndeclaredChangeWarning(UserWarning):
    """A stored node was reused though its recipe differs outside PROPERTIES."""


def _check_state_class(state_class) -> None:
    if not (isinstance(state_class, type) and issubclass(state_class, ExperimentState)):
        raise TypeError(f"state_class must be a subclass of abgraph.ExperimentState, "
                        f"not {state_class!r}")
    for attribute in ("PROPERTIES", "NONHASHED_ATTRIBUTES"):
        identity.declared_names(state_class, attribute)
    check_declarations(state_class)


def _accepts(function, name) -> bool:
    parameters = inspect.signature(function).parameters.values()
    return any(p.kind is p.VAR_KEYWORD or (p.name == name and p.kind is not p.POSITIONAL_ONLY)
               for p in parameters)


def _objects(index: Index, directory: Path, location, storage_options=None, create: bool = True):
    """The experiment's blobs: `directory/objects` unless the experiment was made
    with another location (a shared folder or an fsspec URL), kept in the index.
    Browsing (`create=False`) creates and changes nothing."""
    recorded = index.meta("objects")
    if recorded is not None and not isinstance(recorded, str):
        raise DamagedIndex(f"{index.path} names its objects location {str(recorded)[:60]!r}, not a path")
    if location is not None and recorded is not None and str(location) != recorded:
        raise ValueError(f"{directory} keeps its blobs in {recorded}, not {location}")
    new_location = location is not None and recorded is None
    location = recorded or location
    if location is None:
        if storage_options:
            raise ValueError(f"storage_options are for blobs behind an fsspec URL (objects='s3://...'); "
                             f"{directory} keeps its blobs in its own folder")
        objects = ObjectStore(directory / OBJECTS_NAME, create)
    else:
        objects = open_store(location, storage_options, create)  # checked before it is recorded
        if new_location:
            index.set_meta("objects", str(location))
    return objects
