"""What the HTML report's page knows: every node's slim record, packed for size.

Strings that repeat across nodes (recipes, tags, environments, code versions) are
kept once in tables and referred to by position, so 100,000 nodes stay a few
megabytes of JSON. Tensor manifests come from the payload pickles' opcodes
(nothing is unpickled), for experiments small enough to read them all.
"""
from __future__ import annotations

from ..diff import TensorEntry, changed_fraction, manifest, measurements, zero_fraction, _bytes
from ..identity import readable
from ..store.objects import BlobError

TENSOR_NODE_LIMIT = 2000   # above this, the page lists no tensors: `abgraph diff` has them
TENSOR_BYTES_LIMIT = 1 << 30  # tensor bytes read for zeros and changes; past it they show as n/a


class _Table:
    """Values kept once, referred to by position. Records read from one index share
    their repeated dicts, so a dict is known by identity (no encoding per node)."""

    def __init__(self, convert=None):
        self.values, self._positions, self._convert = [], {}, convert
        self._held = []  # what an id was taken of stays alive, so the id stays its own

    def __call__(self, value):
        key = id(value) if isinstance(value, (dict, list)) else value
        position = self._positions.get(key)
        if position is None:
            position = self._positions[key] = len(self.values)
            self.values.append(self._convert(value) if self._convert else value)
            self._held.append(value)
        return position


def _readable_values(values: dict) -> dict:
    return {k: readable(v) for k, v in values.items()}


def pack(nodes, graph) -> dict:
    """nodes: a NodeSet. Each node becomes one row, columns named in `columns`."""
    positions = {node.id: i for i, node in enumerate(nodes)}
    recipes, versions, tags, statuses, environments = (_Table() for _ in range(5))
    properties = _Table(_readable_values)
    children: dict = {}
    depths = graph.depths() if graph is not None else {}
    rows = []
    for node in nodes:
        record = node._ab_record
        parents = [positions[p] for p in record.parents if p in positions]
        for parent in parents:
            children.setdefault(parent, []).append(len(rows))
        recipe_properties = record.recipe_properties
        if any(type(v) in (dict, list) for v in recipe_properties.values()):  # encoded sets, tuples, ...
            recipe_properties = _readable_values(recipe_properties)
        rows.append([
            record.id, recipes(record.recipe), recipe_properties, versions(record.recipe_version),
            properties(record.properties), [tags(t) for t in record.tags], statuses(record.status),
            depths[record.id], parents, measurements(record) if record.results else record.metrics,
            environments(record.environment), record.duration, record.error, record.started,
            [p for p in record.parents if p not in positions]])
    columns = ["id", "recipe", "recipe_properties", "version", "properties", "tags", "status", "depth",
               "parents", "metrics", "environment", "duration", "error", "started", "outside_parents"]
    return {"columns": columns, "rows": rows, "children": {str(k): v for k, v in children.items()},
            "recipes": recipes.values, "versions": versions.values, "properties": properties.values,
            "tags": tags.values, "statuses": statuses.values, "environments": environments.values}


def tensors(nodes, objects, limit: int = TENSOR_NODE_LIMIT) -> dict:
    """Per node its tensors (name, digest), per digest dtype/shape/zeros, and the
    fraction of elements changed between each node and its first parent."""
    if len(nodes) > limit:
        return {"skipped": f"{len(nodes)} nodes: more than {limit}, so the report lists no tensors; "
                           "`abgraph diff DIR A B` compares the tensors of any two nodes"}
    names, digests, blobs = _Table(), _Table(), {}
    per_node, entries_by_id, unreadable = {}, {}, {}
    for node in nodes:
        try:
            entries = manifest(objects, node._ab_record)
        except (BlobError, OSError, ValueError) as error:
            unreadable[node.id] = str(error)
            continue
        entries_by_id[node.id] = {e.name: e for e in entries}
        per_node[node.id] = [[names(e.name), digests(e.digest)] for e in entries]
        for entry in entries:
            blobs.setdefault(entry.digest, entry)
    budget = [TENSOR_BYTES_LIMIT]
    zeros = {digest: _zeros(objects, entry, budget) for digest, entry in blobs.items()}
    changed = {}
    for node in nodes:
        parents = node._ab_record.parents
        mine = entries_by_id.get(node.id)
        theirs = entries_by_id.get(parents[0]) if parents else None
        if not mine or not theirs:
            continue
        for name, entry in mine.items():
            other = theirs.get(name)
            if (other is not None and other.digest != entry.digest and other.shape == entry.shape
                    and other.dtype == entry.dtype):
                key = "|".join(sorted((other.digest, entry.digest)))
                if key not in changed and _spend(budget, 2 * entry.numel * entry.itemsize):
                    changed[key] = changed_fraction(_bytes(objects, other), _bytes(objects, entry), entry)
    return {"names": names.values, "digests": digests.values, "nodes": per_node,
            "blobs": {d: [e.dtype, list(e.shape), zeros[d]] for d, e in blobs.items()},
            "changed": changed, "unreadable": unreadable}


def _spend(budget: list, size: int) -> bool:
    """Whether `size` more bytes may be read (a study of big models stays quick to report)."""
    if size > budget[0]:
        return False
    budget[0] -= size
    return True


def _zeros(objects, entry: TensorEntry, budget: list):
    if not _spend(budget, entry.numel * entry.itemsize):
        return None
    try:
        return zero_fraction(_bytes(objects, entry), entry)
    except (BlobError, OSError, ValueError):
        return None
