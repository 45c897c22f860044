"""The payload API executors use: load a stored state, fork or take it for a
child, dump a new one. Executors go through these four functions and never
touch a state's private fields, so a new executor needs to know nothing of
how a state keeps its payload.

`fork` and `take` return `(child, known)`: `known` names the tensors the child
shares with its parent's stored payload, so `dump` re-hashes only what changed.
"""
from __future__ import annotations

from .store import payload as payload_io


def load(state_class, properties: dict, digest: str, objects):
    """A state of `state_class` with `properties`, its payload read from `objects`
    (unpickles: trusts the experiment's author) and re-hashed: no recipe starts
    from a payload that fails its check."""
    return state_class._create(properties)._load(digest, objects, verify=True)


def new(state_class, properties: dict):
    """A root state before `initialize_state` builds its payload."""
    return state_class._create(properties)


def fork(state):
    """A private copy for a child: the parent stays as it was."""
    return state._fork()


def take(state):
    """The child takes the parent's objects (no copy of the model), for a parent
    no other node will read; the parent is left empty."""
    return state._take()


def dump(state, objects, known: dict) -> tuple:
    """Store the state's payload, its save hooks run around it; return (payload
    digest, blob digests). The state remembers what it stored, so its own
    children fork cheaply."""
    state._run_hooks("save_pre_hooks")
    digest, blobs, state._ab_snapshot = payload_io.dump(state._payload(), objects, known)
    state._run_hooks("save_post_hooks")
    return digest, blobs


def written_properties(state) -> dict:
    """The properties a recipe (or `initialize_state`) set: stored with the
    payload, recorded on the node and inherited by its descendants."""
    return state._changed_properties()


def untouched(state) -> bool:
    """The state's tensors are as it stored or loaded them (see `Snapshot.untouched`)."""
    snapshot = state._ab_snapshot
    return snapshot is None or snapshot.untouched()
