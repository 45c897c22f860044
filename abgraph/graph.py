"""Browsing a stored experiment: `ExperimentGraph` and `NodeSet` queries."""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import itertools
import sys
import warnings
from functools import cached_property

from .bulk import collector_paused
from .diff import measurements
from .identity import canonical, readable
from .report import last_line
from .state import ExperimentState, failed_functions
from .store import DamagedIndex


class NodeSet(list):
    """A list of nodes with queries that return NodeSets again."""

    def filter(self, pattern: str) -> "NodeSet":
        """Nodes whose tags match `pattern`: an fnmatch glob (`amount:0.*`), `!glob`
        for nodes with no such tag, `a & b` for both, `a | b` for either (`&` binds
        tighter: `method:l1 & amount:0.5 | dense`). A glob no tag matches warns,
        naming the nearest tags (a typo would otherwise look like an empty result)."""
        alternatives = parse_tag_pattern(pattern)
        if not self:
            return NodeSet()
        graph = self[0]._ab_graph
        for glob in {glob for alternative in alternatives for _, glob in alternative}:
            if not fnmatch.filter(graph._tag_index, glob):
                warnings.warn(_no_tag_matches(glob, graph._tag_index), stacklevel=2)
        matched = graph._matching(alternatives)
        if self is graph.nodes:  # the whole experiment, in the order of its ids: a loop in C
            return NodeSet(itertools.compress(self, graph._flags(matched)))
        ids = set(itertools.compress(graph._by_id, graph._flags(matched)))
        return NodeSet(n for n in self if n.id in ids)

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
        ids = {n.id for n in _node_set(other, "&")}
        return NodeSet(n for n in self if n.id in ids)

    def __or__(self, other) -> "NodeSet":
        ids = {n.id for n in self}
        return NodeSet(list(self) + [n for n in _node_set(other, "|") if n.id not in ids])

    def __sub__(self, other) -> "NodeSet":
        ids = {n.id for n in _node_set(other, "-")}
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
        function results flattened as `name.key`, status, duration. A name used
        twice keeps both: a metric named like one of these columns becomes
        `metric.name`, a state property named like a metric `property.name`, a
        recipe property named like either `recipe.name`."""
        with collector_paused():
            return self._dataframe()

    def _dataframe(self):
        """Built by columns: the columns every node has as lists, the varying ones
        (properties, measurements) as one dict per node, shared where a sweep's
        nodes share their settings."""
        import pandas
        if not self:
            return pandas.DataFrame()
        records = [node._ab_record for node in self]
        measured = {name for record in records for name in record.metrics}
        measured |= {name.split(".")[0] for record in records for name in record.results}
        depths = self[0]._ab_graph.depths()
        settings: dict = {}  # a sweep's nodes share their property dicts: convert each pair once
        properties, measures = [], []
        for record in records:
            key = (id(record.properties), id(record.recipe_properties))
            columns = settings.get(key)
            if columns is None:
                columns = settings[key] = _property_columns(record, measured)
            properties.append(columns)
            measures.append(_measure_columns(record) if record.results else record.metrics)
        front = pandas.DataFrame({"id": [r.id for r in records], "parents": [list(r.parents) for r in records],
                                  "depth": [depths[r.id] for r in records],
                                  "recipe": [r.recipe.rsplit(".", 1)[-1] for r in records]})
        tags = pandas.DataFrame({"tags": [list(r.tags) for r in records]})
        back = pandas.DataFrame({"status": [r.status for r in records], "duration": [r.duration for r in records]})
        fixed = set(_FIXED_COLUMNS)
        measures = pandas.DataFrame(measures)
        measures.columns = [f"metric.{c}" if c in fixed else c for c in measures.columns]
        properties = pandas.DataFrame(properties)
        properties.columns = [f"property.{c}" if c in fixed or c in measures.columns else c
                              for c in properties.columns]
        return pandas.concat([front, properties, tags, measures, back], axis=1)

    def draw(self, filename=None, format="pdf", label=None, color_by=None, metrics=None,
             direction=None, collapse="seed", view=False):
        """Draw these nodes (and the edges between them) with graphviz: to
        `filename.format` (pdf, svg, png), or return the graphviz object (shown
        inline in a notebook). `label(node)` replaces the default label;
        `color_by` colors nodes by a metric; `metrics` are printed in the labels
        (mean ± CI on a collapsed box); `direction` "TB" or "LR" (None: whichever
        fits an A3 page); `collapse`: replicas differing only in this property or
        tag (`seed`, `seed:N`) are drawn as one box, None draws every node.
        `view=True` (dagger's) shows the file: inline in a notebook, else in the
        system's viewer."""
        from .drawing import draw
        drawn = draw(self, filename=filename, format=format, label=label, color_by=color_by,
                     metrics=metrics, direction=direction, collapse=collapse)
        return _view(drawn) if view and filename is not None else drawn

    def to_html(self, path, title=None):
        """One self-contained HTML file to browse these nodes (no server, nothing
        fetched): graph, node records, tag filter, table, metric plots, diffs.
        Made from the index and the payloads' tensor lists: nothing is unpickled."""
        from .html_report import write_report
        objects = self[0]._ab_graph.objects if self else None
        return write_report(self, path, title=title, objects=objects)

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


def parse_tag_pattern(pattern: str) -> list:
    """`a & !b | c` -> [[(False, "a"), (True, "b")], [(False, "c")]]: alternatives
    (`|`) of conjunctions (`&`) of globs, each maybe negated (`!`)."""
    if not isinstance(pattern, str):
        raise TypeError(f"a tag pattern is a string, not {pattern!r}")
    alternatives = []
    for alternative in pattern.split("|"):
        terms = []
        for term in alternative.split("&"):
            term = term.strip()
            negate = term.startswith("!")
            glob = term[1:].strip() if negate else term
            if not glob:
                raise ValueError(f"tag pattern {pattern!r} has an empty term; write globs joined by "
                                 "'&' (both) or '|' (either), each maybe prefixed by '!' (not), "
                                 "e.g. 'method:l1 & !amount:0'")
            terms.append((negate, glob))
        alternatives.append(terms)
    return alternatives


_FIXED_COLUMNS = ("id", "parents", "depth", "recipe", "tags", "status", "duration")  # every node has them


def _property_columns(record, measured) -> dict:
    """State and recipe properties as table columns; a recipe property whose name a
    state property or a metric already uses becomes `recipe.name`."""
    columns = {k: readable(v) for k, v in record.properties.items()}
    for name, value in record.recipe_properties.items():
        clash = name in record.properties or name in measured or name in _FIXED_COLUMNS
        columns[f"recipe.{name}" if clash else name] = readable(value)
    return columns


def _measure_columns(record) -> dict:
    """Metrics and function results as columns; a function that raised gives its
    exception's line as `name.error`, not its traceback."""
    row = measurements(record)
    for name, error in failed_functions(record).items():
        for key in [k for k in row if k.startswith(f"{name}.")]:
            del row[key]
        row[f"{name}.error"] = last_line(error)
    return row


def _no_tag_matches(pattern, tags) -> str:
    close = difflib.get_close_matches(pattern, sorted(tags), n=3, cutoff=0.5)
    hint = (f"nearest: {', '.join(close)}" if close else
            f"tags here: {', '.join(sorted(tags)[:10])}{', …' if len(tags) > 10 else ''}" if tags else
            "no node here has a tag")
    return f"no tag matches {pattern!r} ({hint})"


def _node_set(other, operator):
    if not isinstance(other, NodeSet):
        raise TypeError(f"NodeSet {operator} {type(other).__name__}: combine a NodeSet with a NodeSet "
                        "(e.g. nodes.filter('a') | nodes.filter('b'))")
    return other


def _view(path):
    """A rendered file shown inline in a notebook (png, svg), else in the system's
    viewer. A notebook kernel has IPython loaded already; nothing else needs it."""
    ipython = sys.modules.get("IPython")
    in_notebook = ipython is not None and getattr(ipython.get_ipython(), "kernel", None) is not None
    if in_notebook and path.endswith((".png", ".svg")):
        display = importlib.import_module("IPython.display")
        return display.Image(filename=path) if path.endswith(".png") else display.SVG(filename=path)
    import graphviz
    graphviz.view(path)
    return path


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


_BYTE_BITS = [bytes((byte >> bit) & 1 for bit in range(8)) for byte in range(256)]  # 8 flags per byte


class ExperimentGraph:
    """Every stored node of an experiment, slim until a node is restored."""

    def __init__(self, records, objects, state_class=ExperimentState, experiment=None):
        with collector_paused():
            self._build(records, objects, state_class, experiment)

    def _build(self, records, objects, state_class, experiment):
        self.objects = objects
        self.experiment = experiment
        self._by_id = {}
        templates: dict = {}  # a sweep's records share their property dicts: one node template each
        for record in records:
            key = (id(record.properties), id(record.attributes))
            template = templates.get(key)
            if template is None:
                properties = {k: readable(v) for k, v in record.properties.items()}
                template = templates[key] = state_class._create(properties, None, self, record.attributes,
                                                                experiment)
            self._by_id[record.id] = template._copy_for(record)
        self._depth: dict[str, int] = {}

    @cached_property
    def _children(self) -> dict:
        """id -> its children's ids, built when first asked (a browse may never)."""
        children: dict[str, list] = {}
        for node_id, node in self._by_id.items():
            for parent in node._ab_record.parents:
                children.setdefault(parent, []).append(node_id)
        return children

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

    @cached_property
    def _tag_index(self) -> dict:
        """tag -> the nodes carrying it, as the bits of an int (bit i: the i-th node):
        a filter matches tags, then combines their nodes a machine word at a time."""
        carriers: dict = {}  # a sweep's nodes share their tag lists: positions per list
        for position, node in enumerate(self._by_id.values()):
            tags = node._ab_record.tags
            carriers.setdefault(id(tags), (tags, []))[1].append(position)
        index: dict = {}
        for tags, positions in carriers.values():
            bits = bytearray((len(self._by_id) + 7) // 8)
            for position in positions:
                bits[position >> 3] |= 1 << (position & 7)
            mask = int.from_bytes(bits, "little")
            for tag in tags:
                index[tag] = index.get(tag, 0) | mask
        return index

    def _matching(self, alternatives) -> int:
        """The nodes matching a parsed `NodeSet.filter` pattern, as bits (see `_tag_index`)."""
        everyone = (1 << len(self._by_id)) - 1
        matched = 0
        for alternative in alternatives:
            kept = everyone
            for negate, glob in alternative:
                found = 0
                for tag in fnmatch.filter(self._tag_index, glob):
                    found |= self._tag_index[tag]
                kept = kept & ~found if negate else kept & found
            matched |= kept
        return matched

    def _flags(self, mask: int) -> bytes:
        """One byte per node, 1 where its bit is set in `mask`, for `itertools.compress`."""
        return b"".join(map(_BYTE_BITS.__getitem__, mask.to_bytes((len(self._by_id) + 7) // 8, "little")))

    def tagged(self, pattern) -> set:
        """Ids of the nodes whose tags match a `NodeSet.filter` pattern (or its parse)."""
        alternatives = parse_tag_pattern(pattern) if isinstance(pattern, str) else pattern
        return set(itertools.compress(self._by_id, self._flags(self._matching(alternatives))))

    def children_of(self, node_id) -> NodeSet:
        return NodeSet(self._by_id[c] for c in self._children.get(node_id, ()) if c in self._by_id)

    def depths(self) -> dict:
        """Every node's depth, in one pass over the records in the order they were
        written (parents first, as a run writes them)."""
        depths = self._depth
        if len(depths) < len(self._by_id):
            for node_id, node in self._by_id.items():
                if node_id not in depths:
                    parents = node._ab_record.parents
                    if all(p in depths for p in parents):
                        depths[node_id] = 1 + max((depths[p] for p in parents), default=-1)
                    else:  # a parent written later, or not in this graph
                        self.depth(node_id)
        return depths

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

    def from_cache(self, node_id) -> bool:
        """Whether the node was already stored before this experiment object ran."""
        return self.experiment is None or node_id not in self.experiment._executed

    # -- dagger's names --------------------------------------------------------------
    @property
    def root(self):
        """The one root; an error if the experiment has several (see `roots`)."""
        roots = self.roots
        if len(roots) != 1:
            raise RuntimeError(f"this experiment has {len(roots)} roots, not one; use graph.roots")
        return roots[0]

    @property
    def node_map(self) -> dict:
        """id -> node."""
        return dict(self._by_id)

    @property
    def edge_map(self) -> dict:
        """id -> set of its children's ids, for every node (a leaf has an empty set)."""
        return {node_id: set(self._children.get(node_id, ())) for node_id in self._by_id}

    @property
    def toposort(self) -> dict:
        """depth -> set of the ids at that distance from a root."""
        levels: dict[int, set] = {}
        for node_id in self._by_id:
            levels.setdefault(self.depth(node_id), set()).add(node_id)
        return dict(sorted(levels.items()))

    def nodes_at_distance(self, k: int) -> NodeSet:
        return self.nodes.nodes_at_distance(k)

    def to_graphviz(self, **options):
        """The graph as a graphviz object (what `draw()` renders); `options` as in `draw`."""
        from .drawing import to_dot
        return to_dot(self.nodes, **options)

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
             direction=None, collapse="seed", view=False):
        """Render the graph with graphviz; see `NodeSet.draw` to draw a part of it."""
        return self.nodes.draw(filename, format=format, label=label, color_by=color_by, metrics=metrics,
                               direction=direction, collapse=collapse, view=view)

    def to_html(self, path, title=None):
        """The whole experiment as a self-contained HTML report; see `NodeSet.to_html`."""
        return self.nodes.to_html(path, title=title)

    def _repr_svg_(self):
        return self.draw()._repr_image_svg_xml()

    def __len__(self):
        return len(self._by_id)

    def __contains__(self, node_id) -> bool:
        return node_id in self._by_id

    def __repr__(self):
        statuses = {}
        for node in self._by_id.values():
            statuses[node._ab_record.status] = statuses.get(node._ab_record.status, 0) + 1
        return f"<ExperimentGraph {len(self)} nodes {statuses}>"
