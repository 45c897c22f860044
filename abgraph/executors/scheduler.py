"""The scheduler every executor shares, as pure functions over an explicit state.

`plan` decides what must run; `next_ready` picks what a free worker does next
(preferring a child of a state the worker holds, so chains stay in memory);
`finish` records an outcome, releasing children or blocking descendants.
`gate` holds a node until other nodes have settled (whatever their outcome),
so an early-stopping rule can compare a rung of every trial before the next
rung starts; `stop` drops pending nodes and everything below them.
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
    stopped: list = field(default_factory=list)
    undispatched_children: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)     # node -> nodes that must settle before it starts
    gated_by: dict = field(default_factory=dict)  # node -> nodes gated on it


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


def is_pending(state: SchedulerState, node_id) -> bool:
    """Planned to run and not started yet."""
    return node_id in state.waiting or node_id in state.ready


def is_settled(state: SchedulerState, node_id) -> bool:
    """Nothing more will happen to it in this run (done, failed, blocked, stopped, or not planned)."""
    return not is_pending(state, node_id) and node_id not in state.running


def gate(state: SchedulerState, node_id, until) -> None:
    """Hold the pending `node_id` until every node of `until` has settled."""
    if not is_pending(state, node_id):
        return
    holding = {other for other in until if not is_settled(state, other)}
    if not holding:
        return
    if node_id in state.ready:  # its parents are stored: it waits on the gate alone
        state.ready.remove(node_id)
        state.waiting[node_id] = set()
    gates = state.gates.setdefault(node_id, set())
    for other in holding - gates:
        state.gated_by.setdefault(other, []).append(node_id)
    gates |= holding


def _can_start(state: SchedulerState, node_id) -> bool:
    return not state.waiting.get(node_id) and not state.gates.get(node_id)


def _settle(state: SchedulerState, node_ids) -> list:
    """Open the gates `node_ids` held; return the nodes that became ready."""
    opened = []
    for node_id in node_ids:
        for gated in state.gated_by.pop(node_id, ()):
            state.gates[gated].discard(node_id)
            if gated in state.waiting and _can_start(state, gated):
                opened.append(gated)
    return opened


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
                if _can_start(state, child):
                    newly_ready.append(child)
        _push(state, dict.fromkeys(newly_ready + _settle(state, [node_id])))
        return []
    state.failed.append(node_id)
    blocked = _remove_below(state, state.dependents.get(node_id, ()))
    state.blocked.extend(blocked)
    _push(state, _settle(state, [node_id] + blocked))
    return blocked


def stop(state: SchedulerState, node_ids) -> list:
    """Drop the pending nodes of `node_ids` and every pending node below them
    (an early-stopping rule's losers); return what was dropped."""
    stopped = _remove_below(state, [n for n in node_ids if is_pending(state, n)])
    state.stopped.extend(stopped)
    _push(state, _settle(state, stopped))
    return stopped


def _remove_below(state: SchedulerState, node_ids) -> list:
    """Take `node_ids` and their pending descendants out of the plan, in order."""
    removed, frontier = [], list(node_ids)
    while frontier:
        node_id = frontier.pop()
        if node_id in state.waiting:
            del state.waiting[node_id]
        elif node_id in state.ready:
            state.ready.remove(node_id)
        else:
            continue
        removed.append(node_id)
        frontier.extend(state.dependents.get(node_id, ()))
    return removed


def is_finished(state: SchedulerState) -> bool:
    return not state.ready and not state.running


def unfinished(state: SchedulerState) -> list:
    """Nodes that never ran (after an interruption)."""
    return list(state.ready) + list(state.running) + list(state.waiting)
