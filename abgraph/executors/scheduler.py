"""The scheduler every executor shares, as pure functions over an explicit state.

`plan` decides what must run; `next_ready` picks what a free worker does next
(preferring a child of a state the worker holds, so chains stay in memory);
`finish` records an outcome, releasing children or blocking descendants.
"""
from __future__ import annotations

from dataclasses import dataclass, field

COMPUTE, PROBE = "compute", "probe"
AFFINITY_WINDOW = 64  # ready nodes looked at for one held by the worker


@dataclass
class SchedulerState:
    kinds: dict                      # node -> COMPUTE | PROBE, for every node to run
    probes: dict                     # node -> names of the probes to run
    cached: list                     # nodes already stored with all their results
    waiting: dict                    # node -> parents not yet finished
    dependents: dict                 # node -> nodes to run that consume it
    parents: dict                    # node -> parent ids
    ready: list = field(default_factory=list)   # a stack: depth first
    running: set = field(default_factory=set)
    executed: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    blocked: list = field(default_factory=list)
    undispatched_children: dict = field(default_factory=dict)


def plan(nodes, stored_status, stored_results) -> SchedulerState:
    """`nodes`: id -> node with `.parents` and `.probes`, in building (topological) order.
    `stored_status`: id -> status in the index; `stored_results`: id -> {name: version}."""
    kinds, probes, cached = {}, {}, []
    for node_id, node in nodes.items():
        if stored_status.get(node_id) == "done":
            have = stored_results.get(node_id, {})
            missing = [p.name for p in node.probes.values() if have.get(p.name) != p.version]
            if missing:
                kinds[node_id], probes[node_id] = PROBE, missing
            else:
                cached.append(node_id)
        else:
            kinds[node_id], probes[node_id] = COMPUTE, list(node.probes)
    waiting, dependents, parents = {}, {}, {}
    for node_id, kind in kinds.items():
        parents[node_id] = list(nodes[node_id].parents)
        upstream = set(parents[node_id]) if kind == COMPUTE else set()
        waiting[node_id] = {p for p in upstream if kinds.get(p) == COMPUTE}
        for parent in upstream:
            dependents.setdefault(parent, []).append(node_id)
    state = SchedulerState(kinds=kinds, probes=probes, cached=cached, waiting=waiting, dependents=dependents,
                           parents=parents)
    state.undispatched_children = {n: len(c) for n, c in dependents.items()}
    _push(state, [n for n in kinds if not waiting[n]])
    return state


def _push(state: SchedulerState, node_ids) -> None:
    """The first in building order ends on top of the stack."""
    for node_id in reversed(node_ids):
        del state.waiting[node_id]
        state.ready.append(node_id)


def next_ready(state: SchedulerState, held=(), only_held=False):
    """Pop the ready node to run next, or None; prefer children of `held` states
    (with `only_held`, take nothing else)."""
    if not state.ready:
        return None
    if held:
        for position in range(len(state.ready) - 1, max(-1, len(state.ready) - 1 - AFFINITY_WINDOW), -1):
            if any(p in held for p in state.parents[state.ready[position]]):
                return _dispatch(state, state.ready.pop(position))
    return None if only_held else _dispatch(state, state.ready.pop())


def _dispatch(state: SchedulerState, node_id):
    state.running.add(node_id)
    return node_id


def released_by(state: SchedulerState, node_id) -> list:
    """Parents no other pending node needs once `node_id` has started: workers may drop them."""
    released = []
    if state.kinds[node_id] == COMPUTE:
        for parent in state.parents[node_id]:
            if parent in state.undispatched_children:
                state.undispatched_children[parent] -= 1
                if state.undispatched_children[parent] == 0:
                    released.append(parent)
    return released


def has_dependents(state: SchedulerState, node_id) -> bool:
    return bool(state.dependents.get(node_id))


def finish(state: SchedulerState, node_id, ok: bool) -> list:
    """Record an outcome; return the nodes newly blocked by a failure."""
    state.running.discard(node_id)
    if ok:
        state.executed.append(node_id)
        newly_ready = []
        for child in state.dependents.get(node_id, ()):
            pending = state.waiting.get(child)
            if pending is not None:
                pending.discard(node_id)
                if not pending:
                    newly_ready.append(child)
        _push(state, newly_ready)
        return []
    state.failed.append(node_id)
    blocked, frontier = [], list(state.dependents.get(node_id, ()))
    while frontier:
        child = frontier.pop()
        if child in state.waiting:
            del state.waiting[child]
            blocked.append(child)
            frontier.extend(state.dependents.get(child, ()))
    state.blocked.extend(blocked)
    return blocked


def is_finished(state: SchedulerState) -> bool:
    return not state.ready and not state.running


def unfinished(state: SchedulerState) -> list:
    """Nodes that never ran (after an interruption)."""
    return list(state.ready) + list(state.running) + list(state.waiting)
