"""`Experiment`: build the graph lazily, run what is missing, restore what is stored."""
from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import identity
from .graph import ExperimentGraph
from .state import ExperimentState, StatePromise
from .store import FANOUT, OBJECTS_NAME, SCHEMA_VERSION, DamagedIndex, Index, ObjectStore, maintenance, open_store

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
        if not (isinstance(state_class, type) and issubclass(state_class, ExperimentState)):
            raise TypeError(f"state_class must be a subclass of abgraph.ExperimentState, "
                            f"not {state_class!r}")
        for attribute in ("PROPERTIES", "NONHASHED_ATTRIBUTES"):
            identity.declared_names(state_class, attribute)
        self.directory = Path(directory).expanduser()
        if self.directory.exists() and not self.directory.is_dir():
            raise NotADirectoryError(f"{self.directory} is a file, not a folder: an experiment is a "
                                     "folder (give a new path, or the folder of an existing experiment)")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.state_class = state_class
        self.index = Index(self.directory, create=True)
        self.objects = _objects(self.index, self.directory, objects, storage_options)
        self.objects.claim(self.directory.resolve())
        self._nodes: dict[str, PlannedNode] = {}
        self._tags: list[str] = []
        self._stopping_rules: dict = {}
        self._graph = None

    # -- building ----------------------------------------------------------------
    def tag(self, *tags) -> "TagScope":
        """Label every node created inside `with exp.tag(...):` (blocks nest), or
        by a function decorated with `@exp.tag(...)`."""
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise TypeError(f"a tag is a non-empty string, not {tag!r}")
            if not tag.isprintable():
                raise ValueError(f"tag {tag!r} holds a control character or a lone surrogate; "
                                 "a tag is printable text (it is shown in terminals and drawings)")
        return TagScope(self, tags)

    def spawn_new_tree(self, **properties) -> StatePromise:
        """The root of a tree: `state_class.initialize_state(**properties)` builds it."""
        cls = self.state_class
        declared = list(cls.PROPERTIES)
        unknown = [name for name in properties if name not in declared]
        missing = [name for name in declared if name not in properties]
        if unknown:
            close = difflib.get_close_matches(unknown[0], declared, n=1)
            raise TypeError(f"{cls.__name__} has no property {unknown[0]!r}; its PROPERTIES are "
                            f"{declared}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        if missing:
            raise TypeError(f"{cls.__name__} needs a value for {', '.join(map(repr, missing))} "
                            f"(its PROPERTIES are {declared})")
        version = identity.code_version(cls, ExperimentState)
        node_id = identity.root_id(cls, properties, version)
        record = ("root", {}, version)
        return self._register(PlannedNode(node_id, [], None, record, dict(properties)))

    def _add_node(self, recipe, inputs) -> StatePromise:
        name = type(recipe).__name__
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
        """Two promises with one id are one node; their tags are merged."""
        existing = self._nodes.setdefault(node.id, node)
        for tag in self._tags:
            if tag not in existing.tags:
                existing.tags.append(tag)
        return StatePromise(self, node.id)

    def _add_probe(self, node_id, probe) -> None:
        self._nodes[node_id].probes[probe.name] = probe

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
        with self._run_lock():
            maintenance.damaged_nodes(self.index, self.objects, self._nodes)  # the loop recomputes them
            report = RunLoop(self, executor or default_executor(), progress, rules).run()
        self._graph = None
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

    # -- browsing ----------------------------------------------------------------
    @property
    def graph(self) -> ExperimentGraph:
        """Every stored node (slim); refreshed after each `run()`."""
        if self._graph is None:
            self._graph = ExperimentGraph(self.index.records(), self.objects, self.state_class)
        return self._graph

    @classmethod
    def restore(cls, directory, state_class=None, slim: bool = True, storage_options=None) -> "Experiment":
        """Open a stored experiment. Slim (the default) reads only the index and
        unpickles nothing; `slim=False` also loads every payload."""
        directory = Path(directory).expanduser()
        index = Index(directory)  # raises if this is not an experiment
        experiment = cls.__new__(cls)
        experiment.directory, experiment.index = directory, index
        experiment.objects = _objects(index, directory, None, storage_options, create=False)
        experiment._nodes, experiment._tags, experiment._graph = {}, [], None
        experiment._stopping_rules = {}
        # Without a state_class, nodes are generic ExperimentStates: importing the
        # class the index names would run someone's code just to browse.
        experiment.state_class = state_class or ExperimentState
        if not slim:
            for node in experiment.graph.nodes:
                if node.status == "done":
                    node.restore()
        return experiment

    def __repr__(self):
        return f"<Experiment {self.directory} ({len(self._nodes)} nodes built)>"


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
    if create and index.schema_version < SCHEMA_VERSION and objects.fanout == FANOUT:
        # no blob yet in an old experiment: it takes the new layout, which older abgraph must not write to
        index.set_meta("schema_version", SCHEMA_VERSION)
    return objects
