"""What a worker does for one node: load the inputs, run the recipe, store the
payload, run the probes, and hand back the slim record. Shared by every executor."""
from __future__ import annotations

import json
import os
import platform
import socket
import sys
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field

from .. import payloads
from ..device import using_device
from ..identity import canonical
from ..recipes.base import undeclared_fingerprint
from ..state import FAILED_PROBE, ExperimentState
from ..store import NodeRecord
from .scheduler import COMPUTE


@dataclass
class Task:
    node_id: str
    kind: str
    state_class: type
    recipe: object = None                 # None: the root, built by initialize_state
    recipe_record: tuple = ("root", {}, "")  # (type name, encoded properties, code version)
    parents: list = field(default_factory=list)
    parent_payloads: list = field(default_factory=list)
    properties: dict = field(default_factory=dict)
    encoded_properties: dict | None = None  # as stored, when the node was adopted from the index
    arguments: dict = field(default_factory=dict)  # a root's keywords beyond PROPERTIES
    tags: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    payload: str | None = None            # the node's own payload, for a probe-only task
    keep: bool = False                    # children will follow: keep the state in memory
    release: list = field(default_factory=list)  # states no pending node needs any more


class RecipeResultError(TypeError):
    """A recipe returned something that is not a state."""


class StateCache:
    """States a worker holds in memory, so a chain does not reload from disk.
    Bounded: the least recently used state is dropped first."""

    def __init__(self, capacity: int = 8):
        self.capacity = capacity
        self._states: OrderedDict = OrderedDict()
        self.loads = 0  # payloads read from disk, for benchmarks and tests

    def held(self) -> set:
        return set(self._states)

    def __contains__(self, node_id) -> bool:
        return node_id in self._states

    def put(self, node_id, state) -> None:
        self._states[node_id] = state
        self._states.move_to_end(node_id)
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def drop(self, node_ids) -> None:
        for node_id in node_ids:
            self._states.pop(node_id, None)

    def get(self, node_id, digest, state_class, properties, objects):
        state = self._states.get(node_id)
        if state is not None and payloads.untouched(state):
            self._states.move_to_end(node_id)
            return state
        self._states.pop(node_id, None)  # written through an alias since: read its blobs again
        self.loads += 1
        return payloads.load(state_class, properties, digest, objects)


_ENVIRONMENT: dict = {}


def environment(device) -> dict:
    if not _ENVIRONMENT:
        import torch
        from .. import __version__
        _ENVIRONMENT.update(python=platform.python_version(), torch=torch.__version__,
                            abgraph=__version__, host=socket.gethostname(), platform=sys.platform)
    return dict(_ENVIRONMENT, pid=os.getpid(), device=str(device))  # a forked worker has its own pid


def record_for(task: Task, **fields) -> NodeRecord:
    """The record of a task's node, before (or instead of) running it."""
    recipe_type, recipe_properties, recipe_version = task.recipe_record
    cls = task.state_class
    return NodeRecord(id=task.node_id, parents=list(task.parents), recipe=recipe_type,
                      recipe_properties=recipe_properties, recipe_version=recipe_version,
                      properties=(task.encoded_properties if task.encoded_properties is not None
                                  else canonical(task.properties, cls.__name__)["map"]), tags=list(task.tags),
                      state_class=f"{cls.__module__}.{cls.__qualname__}",
                      attributes=list(cls.NONHASHED_ATTRIBUTES), derived_from=list(task.parent_payloads),
                      **fields)


def execute(task: Task, objects, cache: StateCache, device="cpu", reraise=False) -> NodeRecord:
    """Run one task; a failure becomes a failed record. With `reraise` the error
    propagates too (for pdb), carrying that record as `error.abgraph_record`."""
    record = record_for(task, environment=environment(device), started=time.time())
    clock = time.perf_counter()
    try:
        with using_device(device):
            if task.kind == COMPUTE:
                state = _compute(task, objects, cache, record)
            else:
                state = cache.get(task.node_id, task.payload, task.state_class, task.properties, objects)
                record.payload = task.payload
            for probe in task.probes:
                _probe(probe, state, task.node_id, record)
        if task.keep:
            cache.put(task.node_id, state)
        record.status = "done"
    except (Exception, SystemExit) as error:  # sys.exit() in a recipe fails its node, not the run
        record.status, record.error = "failed", traceback.format_exc()
        if reraise:
            record.finished, record.duration = time.time(), time.perf_counter() - clock
            error.abgraph_record = record
            raise
    cache.drop(task.release)
    record.finished = time.time()
    record.duration = time.perf_counter() - clock
    return record


def _probe(probe, state, node_id, record: NodeRecord) -> None:
    """A function that raises records its error on itself; the node stays done
    and nothing is blocked (it runs again next time)."""
    view, _ = payloads.fork(state)
    view.id, view.metrics = node_id, dict(state.metrics)
    try:
        record.results[probe.name] = _jsonable(probe.fn(view), probe.name)
        record.result_versions[probe.name] = probe.version
    except Exception:
        record.results[probe.name] = {"error": traceback.format_exc()}
        record.result_versions[probe.name] = FAILED_PROBE + probe.version


def _compute(task: Task, objects, cache: StateCache, record: NodeRecord):
    if task.recipe is None:
        state = payloads.new(task.state_class, task.properties)
        state.id = task.node_id
        state.initialize_state(**task.properties, **task.arguments)
        known = {}
    else:
        inputs = [cache.get(p, d, task.state_class, task.properties, objects)
                  for p, d in zip(task.parents, task.parent_payloads)]
        others = [payloads.fork(other)[0] for other in inputs[1:]]
        first = task.parents[0]
        if first not in cache or first in task.release:
            state, known = payloads.take(inputs[0])  # no one else will use this parent object
        else:
            state, known = payloads.fork(inputs[0])
        state.id = task.node_id
        produced = task.recipe.run(state, *others)
        if not isinstance(produced, ExperimentState):
            raise RecipeResultError(
                f"{type(task.recipe).__name__}.run returned {type(produced).__name__}, not a state: "
                "end run() with `return state`")
        if produced is not state:
            if not any(produced is other for other in others):
                raise RecipeResultError(
                    f"{type(task.recipe).__name__}.run returned a {type(produced).__name__} it built "
                    "itself; change the state run() was given and return it (abgraph makes states)")
            known = {}
        state = produced
        if fingerprint := undeclared_fingerprint(task.recipe):
            record.environment["recipe_attributes"] = fingerprint
    record.payload, record.blobs = payloads.dump(state, objects, known)
    written = payloads.written_properties(state)
    if written:  # a recipe's `state.a = 7` is kept with the payload, and inherited
        record.properties = dict(record.properties, **canonical(written, type(state).__name__)["map"])
    record.metrics = _jsonable(dict(state.metrics), "state.metrics")
    return state


def _jsonable(value, name):
    """Results and metrics live in the index as JSON: refuse what cannot be stored."""
    try:
        return json.loads(json.dumps(value, default=_scalar))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} returned {type(value).__name__}, which is not JSON-able ({error}); "
                        "return numbers, strings, lists or dicts of them") from None


def _scalar(value):
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
