"""Browsing a stored experiment: `ExperimentGraph` and `NodeSet` queries."""
from __future__ import annotations

import difflib
import fnmatch
from functools import cached_property

from .identity import canonical, readable
from .state import ExperimentState
from .store import DamagedIndex


class NodeSet(list):
    """A list of nodes with queries that return NodeSets again."""

    def filter(self, pattern: str) -> "NodeSet":
        """Nodes with a tag matching the fnmatch `pattern`; `!pattern` negates."""
        negate = pattern.startswith("!")
        pattern = pattern[1:] if negate else pattern
        tags = {t for node in self for t in node._ab_record.tags}
        matching = set(fnmatch.filter(tags, pattern))
        return NodeSet(n for n in self if negate != bool(matching.intersection(n._ab_record.tags)))

    def where(self, **conditions) -> "NodeSet":
        """Nodes whose state properties (or recipe properties) equal the given values;
        a callable value is used as a predicate."""
        known = {"recipe", "status"}
        for node in self:
            known.update(node._ab_record.properties, node._ab_record.recipe_properties)
        unknown = [name for name in conditions if name not in known]
        if unknown and self:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            raise ValueError(f"no node here has a property {unknown[0]!r}"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; properties: {sorted(known)}")

        def matches(node):
            record = node._ab_record
            for name, wanted in conditions.items():
                if name in record.properties:
                    value = record.properties[name]
                elif name in record.recipe_properties:
                    value = record.recipe_properties[name]
                elif name == "recipe":
                    value = record.recipe.rsplit(".", 1)[-1]
                elif name == "status":
                    value = record.status
                else:
                    return False
                if callable(wanted):
                    if not wanted(readable(value)):
                        return False
                elif value != _encoded(wanted):
                    return False
            return True
        return NodeSet(n for n in self if matches(n))

    def __and__(self, other) -> "NodeSet":
        ids = {n.id for n in other}
        return NodeSet(n for n in self if n.id in ids)

    def __or__(self, other) -> "NodeSet":
        ids = {n.id for n in self}
        return NodeSet(list(self) + [n for n in other if n.id not in ids])

    def __sub__(self, other) -> "NodeSet":
        ids = {n.id for n in other}
        return NodeSet(n for n in self if n.id not in ids)

    def __getitem__(self, item):
        result = super().__getitem__(item)
        return NodeSet(result) if isinstance(item, slice) else result

    @property
    def leaves(self) -> "NodeSet":
        """Nodes of this set with no child in the experiment."""
        return NodeSet(n for n in self if not n._ab_graph._children.get(n.id))

    @property
    def ids(self) -> list:
        return [n.id for n in self]

    @property
    def iterator(self):
        """Each node restored in turn and deflated after, so memory holds one payload."""
        for node in self:
            with node.lazy_load():
                yield node

    def nodes_at_distance(self, k: int) -> "NodeSet":
        return NodeSet(n for n in self if n._ab_graph.depth(n.id) == k)

    def to_dataframe(self):
        """One row per node: id, parents, depth, recipe, its properties, tags, metrics,
        function results flattened as `name.key`, status, duration."""
        import pandas
        measured = {name for node in self for name in node._ab_record.metrics}
        measured |= {name.split(".")[0] for node in self for name in node._ab_record.results}
        rows = []
        for node in self:
            record = node._ab_record
            row = {"id": record.id, "parents": list(record.parents),
                   "depth": node._ab_graph.depth(record.id),
                   "recipe": record.recipe.rsplit(".", 1)[-1]}
            row.update({k: readable(v) for k, v in record.properties.items()})
            for name, value in record.recipe_properties.items():
                clash = name in record.properties or name in measured
                row[f"recipe.{name}" if clash else name] = readable(value)
            row["tags"] = list(record.tags)
            row.update(record.metrics)
            for name, value in record.results.items():
                row.update(_flatten(name, value))
            row["status"], row["duration"] = record.status, record.duration
            rows.append(row)
        return pandas.DataFrame(rows)

    def draw(self, filename=None, format="pdf", label=None, color_by=None, metrics=None,
             direction="TB"):
        """Draw these nodes (and the edges between them) with graphviz: to
        `filename.format` (pdf, svg, png), or return the graphviz object (shown
        inline in a notebook). `label(node)` replaces the default label;
        `color_by` colors nodes by a metric; `metrics` are printed in the labels;
        `direction="LR"` lays a wide study out left to right."""
        from .drawing import draw
        return draw(self, filename=filename, format=format, label=label, color_by=color_by,
                    metrics=metrics, direction=direction)

    def summarize(self, metric: str, by, confidence: float = 0.95):
        """n, mean, std and confidence interval of `metric` per group of nodes.

        Each name in `by` is looked up on the node (state or recipe property),
        then in its `name:value` tags, then on its nearest ancestor that has it:
        so Evaluate nodes group by the `amount` of the Prune above them. Seeds are
        what varies inside a group: leave them out of `by`.
        """
        from . import stats
        by = [by] if isinstance(by, str) else list(by)
        frame = self.to_dataframe()
        for name in by:
            frame[name] = [_lookup(node, name) for node in self]
        return stats.summarize(frame, metric, by, confidence)

    def plot(self, metric: str, by, kind: str = "point", filename=None, title=None, ax=None,
             confidence: float = 0.95):
        """Points (or bars) with confidence intervals of `metric` grouped `by`;
        saved to `filename` (.pdf, .svg, .png) when given. Returns the figure."""
        from .plotting import plot_summary
        by = [by] if isinstance(by, str) else list(by)
        summary = self.summarize(metric, by, confidence)
        return plot_summary(summary, metric, by, kind=kind, filename=filename, title=title, ax=ax)


def _encoded(value):
    """Compare as stored: canonical encodings (a set stays a set)."""
    try:
        return canonical(value)
    except TypeError:
        return value


def _lookup(node, name):
    """`name` on the node, in its `name:value` tags, or on its nearest ancestor."""
    seen, frontier = set(), [node]
    while frontier:
        current = frontier.pop(0)
        record = current._ab_record
        for source in (record.properties, record.recipe_properties):
            if name in source:
                return readable(source[name])
        if current is node:
            for tag in record.tags:
                key, _, value = tag.partition(":")
                if key == name and value:
                    return _number(value)
        seen.add(current.id)
        frontier.extend(p for p in current.parents if p.id not in seen)
    return None


def _number(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _flatten(prefix, value) -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flatten(f"{prefix}.{key}", inner))
        return flat
    return {prefix: value}


class ExperimentGraph:
    """Every stored node of an experiment, slim until a node is restored."""

    def __init__(self, records, objects, state_class=ExperimentState):
        self.objects = objects
        self._by_id = {}
        self._children: dict[str, list] = {}
        for record in records:
            properties = {k: readable(v) for k, v in record.properties.items()}
            node = state_class._create(properties, record, self, attributes=record.attributes)
            self._by_id[record.id] = node
            for parent in record.parents:
                self._children.setdefault(parent, []).append(record.id)
        self._depth: dict[str, int] = {}

    @cached_property
    def nodes(self) -> NodeSet:
        return NodeSet(self._by_id.values())

    def node(self, id_or_prefix: str):
        """A node by its id or a unique prefix of it."""
        found = self._by_id.get(id_or_prefix)
        if found is not None:
            return found
        matches = [node_id for node_id in self._by_id if node_id.startswith(id_or_prefix)]
        if len(matches) == 1:
            return self._by_id[matches[0]]
        if not matches:
            raise KeyError(f"no node id starts with {id_or_prefix!r} "
                           f"({len(self._by_id)} nodes in this experiment)")
        shown = ", ".join(m[:len(id_or_prefix) + 4] for m in sorted(matches)[:5])
        raise KeyError(f"node id prefix {id_or_prefix!r} is ambiguous: {len(matches)} nodes match "
                       f"({shown}{', …' if len(matches) > 5 else ''}); give more characters")

    def children_of(self, node_id) -> NodeSet:
        return NodeSet(self._by_id[c] for c in self._children.get(node_id, ()) if c in self._by_id)

    def depth(self, node_id) -> int:
        """Longest distance from a root (the level Dagger draws)."""
        depth = self._depth.get(node_id)
        if depth is None:
            stack, visiting = [node_id], set()  # visiting: on the path being walked
            while stack:
                current = stack[-1]
                parents = [p for p in self._by_id[current]._ab_record.parents if p in self._by_id]
                pending = [p for p in parents if p not in self._depth]
                if pending and current not in visiting:
                    visiting.add(current)
                    cycle = visiting.intersection(pending)
                    if cycle:
                        raise DamagedIndex(f"the stored graph has a cycle through node {min(cycle)[:12]}: "
                                           "the index is damaged or crafted")
                    stack.extend(pending)
                    continue
                if pending:  # reached again through another parent while its own are pending
                    raise DamagedIndex(f"the stored graph has a cycle through node {current[:12]}: "
                                       "the index is damaged or crafted")
                stack.pop()
                visiting.discard(current)
                self._depth[current] = 1 + max((self._depth[p] for p in parents), default=-1)
            depth = self._depth[node_id]
        return depth

    @property
    def roots(self) -> NodeSet:
        return NodeSet(n for n in self.nodes if not n._ab_record.parents)

    @property
    def leaves(self) -> NodeSet:
        return self.nodes.leaves

    @cached_property
    def nx(self):
        """The graph as a networkx DiGraph; node attributes are the slim records."""
        import networkx
        graph = networkx.DiGraph()
        for node_id, node in self._by_id.items():
            record = node._ab_record
            graph.add_node(node_id, recipe=record.recipe.rsplit(".", 1)[-1], tags=list(record.tags),
                           status=record.status, metrics=dict(record.metrics), state=node)
            for parent in record.parents:
                graph.add_edge(parent, node_id)
        return graph

    def to_dataframe(self):
        return self.nodes.to_dataframe()

    def draw(self, filename=None, format="pdf", label=None, color_by=None, metrics=None,
             direction="TB"):
        """Render the graph with graphviz; see `NodeSet.draw` to draw a part of it."""
        return self.nodes.draw(filename, format, label, color_by, metrics, direction)

    def _repr_svg_(self):
        from .drawing import to_dot
        return to_dot(self.nodes)._repr_image_svg_xml()

    def __len__(self):
        return len(self._by_id)

    def __repr__(self):
        statuses = {}
        for node in self._by_id.values():
            statuses[node._ab_record.status] = statuses.get(node._ab_record.status, 0) + 1
        return f"<ExperimentGraph {len(self)} nodes {statuses}>"
