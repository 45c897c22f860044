"""What differs between two nodes: how they were made, what they measured, which
tensors changed. Reads the index and the raw tensor bytes; unpickles nothing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .identity import readable
from .store.manifest import TensorEntry, read as read_manifest

RESUME_PREFIX = "train_resume."  # Train's record: one printed line (a line per optimizer tensor drowns the model)


@dataclass
class StepDiff:
    """One recipe on each side of the common ancestor, paired by position."""

    position: int
    a: str | None               # "Prune(amount=0.5)" or None where that side is shorter
    b: str | None
    properties: dict = field(default_factory=dict)  # name -> [value in a, value in b], differing only
    code_changed: bool = False  # same recipe type, made by different code


@dataclass
class TensorDiff:
    name: str
    status: str                 # equal, changed, reshaped, only in a, only in b
    dtype: str
    shape_a: tuple | None
    shape_b: tuple | None
    changed: float | None = None    # fraction of elements that differ (bit for bit)
    zeros_a: float | None = None
    zeros_b: float | None = None


@dataclass
class NodeDiff:
    a: str
    b: str
    ancestor: str | None
    path_a: list                # recipes from the ancestor (excluded) down to a
    path_b: list
    steps: list                 # StepDiff
    properties: dict            # state property -> [a, b], differing only
    tags_a: list
    tags_b: list
    metrics: dict               # name -> [a, b, b - a or None]
    tensors: list               # TensorDiff, changed ones first

    @property
    def changed_tensors(self) -> list:
        return [t for t in self.tensors if t.status != "equal"]

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self):
        lines = [f"a: {self.a}", f"b: {self.b}",
                 f"common ancestor: {self.ancestor or 'none (different roots)'}",
                 f"  a side: {' -> '.join(self.path_a) or '(the ancestor itself)'}",
                 f"  b side: {' -> '.join(self.path_b) or '(the ancestor itself)'}"]
        for step in self.steps:
            if step.a != step.b or step.code_changed or step.properties:
                what = f"{step.a or '–'} vs {step.b or '–'}"
                if step.code_changed:
                    what += f"  [{_name(step.a)}'s code changed between the runs]"
                lines.append(f"step {step.position}: {what}")
        for name, (left, right) in self.properties.items():
            lines.append(f"property {name}: {left!r} vs {right!r}")
        only_a = [t for t in self.tags_a if t not in self.tags_b]
        only_b = [t for t in self.tags_b if t not in self.tags_a]
        if only_a or only_b:
            lines.append(f"tags only in a: {', '.join(only_a) or '-'}; only in b: {', '.join(only_b) or '-'}")
        if self.metrics:
            lines.append("metrics:")
            width = max(len(name) for name in self.metrics)
            for name, (left, right, delta) in self.metrics.items():
                shown = f"{brief(left):>12} {brief(right):>12}"
                lines.append(f"  {name:{width}}  {shown}" + (f"  {delta:+.4g}" if delta is not None else ""))
        if self.tensors:
            same = len(self.tensors) - len(self.changed_tensors)
            lines.append(f"tensors: {len(self.changed_tensors)} differ, {same} equal")
            records = [t for t in self.changed_tensors if t.name.startswith(RESUME_PREFIX)]
            for tensor in [t for t in self.changed_tensors if not t.name.startswith(RESUME_PREFIX)]:
                shape = _shape(tensor.shape_a) if tensor.shape_a == tensor.shape_b else \
                    f"{_shape(tensor.shape_a)} -> {_shape(tensor.shape_b)}"
                line = f"  {tensor.name}  {tensor.dtype} {shape}  {tensor.status}"
                if tensor.changed is not None:
                    line += f": {tensor.changed:.1%} of elements changed"
                if tensor.zeros_a is not None or tensor.zeros_b is not None:
                    line += f", zeros {_percent(tensor.zeros_a)} -> {_percent(tensor.zeros_b)}"
                lines.append(line)
            if records:
                lines.append(f"  {RESUME_PREFIX}*  {len(records)} changed (Train's optimizer and random "
                             "state, see .to_dict())")
        return "\n".join(lines)


def diff(a, b) -> NodeDiff:
    """Compare two nodes of one restored experiment (slim: nothing is unpickled)."""
    graph = a._ab_graph
    if b._ab_graph is not graph:
        raise ValueError("diff compares two nodes of one experiment; restore it once and pick both from it")
    record_a, record_b = a._ab_record, b._ab_record
    ancestor = common_ancestor(graph, a.id, b.id)
    side_a, side_b = _path(graph, ancestor, a.id), _path(graph, ancestor, b.id)
    steps = [_step(i, graph, x, y) for i, (x, y) in enumerate(_zip_longest(side_a, side_b), start=1)]
    properties = {k: [readable(record_a.properties.get(k)), readable(record_b.properties.get(k))]
                  for k in sorted(set(record_a.properties) | set(record_b.properties))
                  if record_a.properties.get(k) != record_b.properties.get(k)}
    return NodeDiff(a.id, b.id, ancestor, [_label(graph, n) for n in side_a], [_label(graph, n) for n in side_b],
                    steps, properties, list(record_a.tags), list(record_b.tags),
                    _metrics(record_a, record_b), tensor_diffs(graph.objects, record_a, record_b))


def common_ancestor(graph, a_id: str, b_id: str) -> str | None:
    """The deepest node both descend from (themselves included), or None."""
    mine = _ancestors(graph, a_id)
    shared = mine & _ancestors(graph, b_id)
    if not shared:
        return None
    return max(shared, key=lambda n: (graph.depth(n), n))


def _ancestors(graph, node_id) -> set:
    seen, frontier = {node_id}, [node_id]
    while frontier:
        for parent in graph._by_id[frontier.pop()]._ab_record.parents:
            if parent not in seen and parent in graph._by_id:
                seen.add(parent)
                frontier.append(parent)
    return seen


def _path(graph, ancestor, node_id) -> list:
    """Nodes from below `ancestor` down to `node_id` (the whole chain from a root
    when there is no common ancestor), following first parents where possible."""
    chain, current = [], node_id
    while current != ancestor and current is not None:
        chain.append(current)
        parents = [p for p in graph._by_id[current]._ab_record.parents if p in graph._by_id]
        toward = [p for p in parents if ancestor is None or ancestor in _ancestors(graph, p)]
        current = toward[0] if toward else None
    return chain[::-1]


def _zip_longest(left, right):
    for i in range(max(len(left), len(right))):
        yield (left[i] if i < len(left) else None), (right[i] if i < len(right) else None)


def _label(graph, node_id) -> str:
    record = graph._by_id[node_id]._ab_record
    values = record.properties if record.recipe == "root" else record.recipe_properties
    args = ", ".join(f"{k}={readable(v)!r}" for k, v in values.items())
    return f"{record.recipe.rsplit('.', 1)[-1]}({args})"


def _step(position, graph, x, y) -> StepDiff:
    rx = graph._by_id[x]._ab_record if x else None
    ry = graph._by_id[y]._ab_record if y else None
    step = StepDiff(position, _label(graph, x) if x else None, _label(graph, y) if y else None)
    if rx and ry and rx.recipe == ry.recipe:
        values_x = rx.properties if rx.recipe == "root" else rx.recipe_properties
        values_y = ry.properties if ry.recipe == "root" else ry.recipe_properties
        step.properties = {k: [readable(values_x.get(k)), readable(values_y.get(k))]
                           for k in sorted(set(values_x) | set(values_y)) if values_x.get(k) != values_y.get(k)}
        step.code_changed = rx.recipe_version != ry.recipe_version
    return step


def measurements(record) -> dict:
    """Metrics and probe results, flattened as `name.key`."""
    values = dict(record.metrics)
    for name, value in record.results.items():
        values.update(_flatten(name, value))
    return values


def _flatten(prefix, value) -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flatten(f"{prefix}.{key}", inner))
        return flat
    return {prefix: value}


def _metrics(record_a, record_b) -> dict:
    left, right = measurements(record_a), measurements(record_b)
    rows = {}
    for name in sorted(set(left) | set(right)):
        x, y = left.get(name), right.get(name)
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y))
        rows[name] = [x, y, (y - x) if numbers else None]
    return rows


def manifest(objects, record) -> list[TensorEntry]:
    """The tensors of a node's payload (none for a node without one)."""
    if not record.payload:
        return []
    return read_manifest(objects.get(record.payload, verify=True))


def tensor_diffs(objects, record_a, record_b) -> list[TensorDiff]:
    left = {t.name: t for t in manifest(objects, record_a)}
    right = {t.name: t for t in manifest(objects, record_b)}
    diffs = []
    for name in list(left) + [n for n in right if n not in left]:
        x, y = left.get(name), right.get(name)
        if x is None or y is None:
            only = x or y
            diffs.append(TensorDiff(name, "only in a" if x else "only in b", only.dtype,
                                    x.shape if x else None, y.shape if y else None))
        elif x.digest == y.digest:
            diffs.append(TensorDiff(name, "equal", x.dtype, x.shape, y.shape))
        else:
            bytes_x, bytes_y = _bytes(objects, x), _bytes(objects, y)
            same_layout = x.shape == y.shape and x.dtype == y.dtype
            diffs.append(TensorDiff(name, "changed" if same_layout else "reshaped", x.dtype, x.shape, y.shape,
                                    changed=changed_fraction(bytes_x, bytes_y, x) if same_layout else None,
                                    zeros_a=zero_fraction(bytes_x, x), zeros_b=zero_fraction(bytes_y, y)))
    diffs.sort(key=lambda t: t.status == "equal")
    return diffs


def _bytes(objects, entry: TensorEntry):
    import numpy
    raw = objects.get(entry.digest, entry.numel * entry.itemsize)
    return numpy.frombuffer(raw, dtype=numpy.uint8)


def changed_fraction(bytes_a, bytes_b, entry: TensorEntry) -> float:
    """Fraction of elements whose bits differ."""
    if not entry.numel:
        return 0.0
    rows_a = bytes_a.reshape(entry.numel, entry.itemsize)
    rows_b = bytes_b.reshape(entry.numel, entry.itemsize)
    return float((rows_a != rows_b).any(axis=1).mean())


def zero_fraction(raw, entry: TensorEntry) -> float:
    """Fraction of elements equal to zero (-0.0 included), what a prune leaves."""
    import numpy
    if not entry.numel:
        return 0.0
    if entry.numpy_dtype is not None:
        return float((numpy.frombuffer(raw, dtype=entry.numpy_dtype) == 0).mean())
    rows = raw.reshape(entry.numel, entry.itemsize)  # bfloat16, float8: zero but for the sign bit
    return float(((rows[:, :-1] == 0).all(axis=1) & ((rows[:, -1] & 0x7F) == 0)).mean())


def _name(label):
    return (label or "").split("(", 1)[0]


def brief(value) -> str:
    """A metric in one column: a list (a loss history) as its length, first and
    last values; the whole of it is in `.to_dict()`."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) > 3:
        return f"[{len(value)}: {brief(value[0])} … {brief(value[-1])}]"
    text = str(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _shape(shape) -> str:
    return "-" if shape is None else "x".join(map(str, shape)) or "scalar"


def _percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"
