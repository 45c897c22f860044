"""Drawing an experiment graph with graphviz, readable enough for a paper.

A study repeats every branch over seeds; drawn node by node, the demo's 105
nodes make a strip five metres wide. So by default replicas that differ only
by their seed are drawn as one node marked "×3" whose metrics are the mean and
confidence interval over the replicas, the layout direction is the one that
fits an A3 page best, long values are wrapped, and a caption says what was
collapsed. A drawing still larger than A3 warns and names how to draw a part.
"""
from __future__ import annotations

import html
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .identity import printable, readable
from .store.objects import write_atomically

FORMATS = ("pdf", "svg", "png")
A3_INCHES = (11.7, 16.5)
WRAP = 28              # characters per label line
_STATUS_STYLE = {
    "done": {"style": "rounded,filled", "color": "#4d4d4d"},
    "failed": {"style": "rounded,filled,bold", "color": "#c0392b", "fillcolor": "#f5b7b1"},
    "blocked": {"style": "rounded,dashed", "color": "#999999", "fontcolor": "#777777"},
    "stopped": {"style": "rounded,dotted", "color": "#b9770e", "fontcolor": "#777777"},
}
# a light sequential scale (low -> high) that keeps black text readable
_SCALE = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6"]


def _tail_color(fill) -> str:
    """The grey of the id line, darker on the darker fills of the scale (grey on
    mid blue is unreadable)."""
    return "#262626" if fill in _SCALE[-2:] else "#666666"


@dataclass
class Group:
    """One drawn box: a node, or the replicas of one node over seeds."""
    members: list
    parents: list = field(default_factory=list)     # ids of the parent groups

    @property
    def id(self) -> str:
        return self.members[0].id

    @property
    def record(self):
        return self.members[0]._ab_record

    @property
    def status(self) -> str:
        statuses = sorted({m._ab_record.status for m in self.members})
        if len(statuses) == 1:
            return statuses[0]
        return "failed" if "failed" in statuses else "blocked"


def group_replicas(nodes, over: str | None = "seed") -> list:
    """The boxes to draw: nodes equal but for the property or tag named `over`
    (`seed`, `seed:N`), and descended from equal boxes, become one Group."""
    nodes = list(nodes)
    present = {node.id: node for node in nodes}
    keys, groups, group_of = {}, {}, {}

    def key(node):
        if node.id not in keys:
            record = node._ab_record
            parents = tuple(key(present[p]) if p in present else p for p in record.parents)
            keys[node.id] = (record.recipe, _without(record.properties, over),
                             _without(record.recipe_properties, over),
                             tuple(t for t in record.tags if not _is_over_tag(t, over)), parents)
            if over is None:
                keys[node.id] += (node.id,)
        return keys[node.id]

    for node in sorted(nodes, key=lambda n: n._ab_graph.depth(n.id)):
        group = groups.setdefault(key(node), Group([]))
        group.members.append(node)
        group_of[node.id] = group
    for group in groups.values():
        parents = {group_of[p].id: None for m in group.members for p in m._ab_record.parents if p in present}
        group.parents = list(parents)
    return list(groups.values())


def _without(values: dict, over) -> str:
    return json.dumps({k: v for k, v in values.items() if k != over}, sort_keys=True, default=str)


def _is_over_tag(tag: str, over) -> bool:
    return over is not None and tag.partition(":")[0] == over


def distinguishing(nodes, over=None) -> dict:
    """recipe type -> the property names worth printing: those that vary among
    its nodes (constant settings would repeat on every box), or all non-None
    ones for a recipe used once; never `over`, which a collapsed box averages."""
    values: dict = {}
    counts: dict = {}
    for node in nodes:
        record = node._ab_record
        counts[record.recipe] = counts.get(record.recipe, 0) + 1
        for key, value in _shown_values(record).items():
            values.setdefault(record.recipe, {}).setdefault(key, set()).add(repr(value))
    return {recipe: {k for k, seen in keys.items() if k != over and (counts[recipe] == 1 or len(seen) > 1)}
            for recipe, keys in values.items()}


def _shown_values(record) -> dict:
    values = record.properties if record.recipe == "root" else record.recipe_properties
    return {k: v for k, v in values.items() if v is not None}


def _new_tags(group: Group, by_id: dict, shown: dict, over) -> list:
    """Tags this box adds to its parents', minus those that repeat a shown
    property (`amount:0.5` next to `amount=0.5`) or the collapsed seed."""
    inherited = {t for p in group.parents for t in by_id[p].record.tags}
    repeated = {f"{k}:{readable(v)}" for k, v in shown.items()}
    return [t for t in group.record.tags
            if t not in inherited and t not in repeated and not _is_over_tag(t, over)]


def default_label(node, metrics=(), shown=None) -> str:
    """Recipe and its distinguishing properties, tags, chosen metrics, short id
    (a graphviz HTML label) of one node."""
    group = Group([node])
    return _label(group, {group.id: group}, metrics, shown, over=None)


def _label(group: Group, by_id: dict, metrics, shown_names, over, tail_color="#666666") -> str:
    record = group.record
    name = record.recipe.rsplit(".", 1)[-1]
    shown = {k: v for k, v in _shown_values(record).items() if shown_names is None or k in shown_names}
    lines = [f"<B>{html.escape(printable(name))}</B>"]
    lines += _wrapped(f"{k}={_short(readable(v))}" for k, v in shown.items())
    tags = _new_tags(group, by_id, shown, over)
    if tags:
        lines += [f"<I>{line}</I>" for line in _wrapped([", ".join(tags)])]
    for metric in metrics:
        text = _metric_text(group, metric)
        if text is not None:
            lines += _wrapped([f"{metric}={text}"])
    if group.status != "done":
        counts = {}
        for member in group.members:
            counts[member._ab_record.status] = counts.get(member._ab_record.status, 0) + 1
        lines.append("<B>" + ", ".join(f"{n} {s}" if len(group.members) > 1 else s
                                       for s, n in sorted(counts.items())).upper() + "</B>")
    tail = record.id[:8] if len(group.members) == 1 else f"×{len(group.members)} · {record.id[:8]}"
    size = 10 if len(group.members) > 1 else 8
    lines.append(f'<FONT POINT-SIZE="{size}" COLOR="{tail_color}">{html.escape(printable(tail))}</FONT>')
    return "<" + "<BR/>".join(lines) + ">"


def _wrapped(texts) -> list:
    """Label lines of at most WRAP characters, broken after a space, `_`, `.`, `=`
    or `,` where possible (`model_fn=` / `base_model_generator`), escaped (a
    crafted tag's control characters shown as escapes: they cannot break the label)."""
    lines = []
    for text in texts:
        text, line = printable(text), ""
        for piece in re.findall(r"[^ _.=,]*[ _.=,]?", text):
            if line and len(line) + len(piece.rstrip()) > WRAP:
                lines.append(line.rstrip())
                line = ""
            while len(piece) > WRAP:
                lines.append(piece[:WRAP])
                piece = piece[WRAP:]
            line += piece
        if line.strip():
            lines.append(line.rstrip())
    return [html.escape(line) for line in lines]


def _metric_text(group: Group, metric):
    values = [measured(m._ab_record, metric) for m in group.members]
    values = [v for v in values if v is not None]
    if not values:
        return None
    if len(group.members) == 1 or not all(isinstance(v, (int, float)) for v in values):
        return _short(values[0])
    from . import stats
    summary = stats.describe(values, bounds=stats.bounds_of(metric, values))
    if summary.ci_low != summary.ci_low:   # NaN: under 3 values, no interval
        return f"{summary.mean:.4g} (n={summary.n})"
    half = (summary.ci_high - summary.ci_low) / 2
    if abs(summary.mean - summary.ci_low - half) < 1e-12 * max(1.0, abs(summary.mean)):
        return f"{summary.mean:.4g} ± {half:.2g}"
    return f"{summary.mean:.4g} [{summary.ci_low:.4g}, {summary.ci_high:.4g}]"   # clipped


def measured(record, name):
    """A metric, a function result (`eval_fn.accuracy`), or a result key named
    alone (`accuracy` found in `eval_fn`'s dict); None where the node has none."""
    if name in record.metrics:
        return record.metrics[name]
    function, _, key = name.partition(".")
    value = record.results.get(function)
    if key:
        return value.get(key) if isinstance(value, dict) else None
    if value is not None:
        return value
    for result in record.results.values():
        if isinstance(result, dict) and name in result:
            return result[name]
    return None


def measurable(nodes) -> list:
    """Every metric and result name that `measured` understands, for error messages."""
    names = set()
    for node in nodes:
        record = node._ab_record
        names.update(record.metrics)
        for function, value in record.results.items():
            if isinstance(value, dict):
                names.update(f"{function}.{key}" for key in value)
            else:
                names.add(function)
    return sorted(names)


def _check_measured(nodes, names) -> None:
    for name in names:
        if not any(measured(node._ab_record, name) is not None for node in nodes):
            raise ValueError(f"no node has the metric {name!r}; metrics and results here: "
                             f"{measurable(nodes)}")


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return ", ".join(map(_short, value)) or "none"
    text = str(value).removeprefix("__main__.")   # a script's function: its name says enough
    return text if len(text) <= 3 * WRAP else text[:3 * WRAP - 3] + "..."


def to_dot(nodes, label=None, color_by=None, metrics=None, direction="TB", collapse="seed"):
    """`nodes`: a graph's nodes or any subset (a NodeSet); edges between them are drawn.
    `metrics`: the names shown in every box, or a function of a box's record
    that names them. `collapse`: the property/tag whose replicas become one box
    (None: every node)."""
    import graphviz
    nodes = list(nodes)
    if not callable(metrics):
        named = list(metrics or ([color_by] if color_by else []))
        _check_measured(nodes, named)
        metrics = lambda record: named  # noqa: E731
    over = collapse or None
    groups = group_replicas(nodes, over)
    by_id = {group.id: group for group in groups}
    colors, scale = _colors(groups, color_by) if color_by else ({}, "")
    shown = distinguishing([g.members[0] for g in groups], over)
    dot = graphviz.Digraph("experiment", graph_attr={"rankdir": direction, "nodesep": "0.15", "ranksep": "0.22",
                                                     "fontname": "Helvetica", "fontsize": "10"},
                           node_attr={"shape": "box", "fontname": "Helvetica", "fontsize": "10",
                                      "fillcolor": "#ffffff", "margin": "0.08,0.04"},
                           edge_attr={"color": "#666666", "arrowsize": "0.6"})
    for group in groups:
        style = dict(_STATUS_STYLE.get(group.status, {}))
        if group.id in colors and group.status == "done":
            style["fillcolor"] = colors[group.id]
        if label and len(group.members) == 1:
            text = label(group.members[0])
        else:
            text = _label(group, by_id, metrics(group.record), shown.get(group.record.recipe), over,
                          tail_color=_tail_color(style.get("fillcolor")))
        dot.node(group.id, text, **style)
        for parent in group.parents:
            dot.edge(parent, group.id)
    caption = [line for line in (collapsed_caption(groups, over), scale) if line]
    if caption:  # `\l`: each line left-justified
        dot.attr(label="\\l".join(caption) + "\\l", labelloc="b", labeljust="l")
    return dot


def collapsed_caption(groups, over) -> str:
    """What the drawing collapsed, in a sentence (empty when nothing was)."""
    replicated = [g for g in groups if len(g.members) > 1]
    if not replicated:
        return ""
    values = sorted({str(readable(_over_value(m, over))) for g in replicated for m in g.members} - {"None"},
                    key=lambda v: (len(v), v))
    drawn = sum(len(g.members) for g in replicated)
    return (f"×N: {drawn} nodes that differ only in {over} ({', '.join(values[:8])}"
            f"{', …' if len(values) > 8 else ''}) drawn as {len(replicated)}; metrics: mean ± 95% t CI "
            f"(clipped to [0, 1] for proportions), mean alone under 3 runs")


def _over_value(node, over):
    record = node._ab_record
    for source in (record.recipe_properties, record.properties):
        if over in source:
            return source[over]
    return next((t.partition(":")[2] for t in record.tags if _is_over_tag(t, over)), None)


def _colors(groups, metric) -> tuple[dict, str]:
    """Each group's fill on the scale, and the caption line that reads it."""
    values = {}
    for group in groups:
        numbers = [measured(m._ab_record, metric) for m in group.members]
        numbers = [float(v) for v in numbers if isinstance(v, (int, float)) and v == v]
        if numbers:
            values[group.id] = sum(numbers) / len(numbers)
    if not values:
        nodes = [m for g in groups for m in g.members]
        raise ValueError(f"no node has a numeric {metric!r}; metrics and results here: {measurable(nodes)}")
    low, high = min(values.values()), max(values.values())
    span = (high - low) or 1.0
    fills = {k: _SCALE[min(len(_SCALE) - 1, int((v - low) / span * len(_SCALE)))] for k, v in values.items()}
    return fills, (f"fill: {printable(metric)} (mean of a box) from {low:.4g}, lightest, to {high:.4g}, "
                   f"darkest, in {len(_SCALE)} steps; white: not measured")


def layout_size(dot) -> tuple[float, float]:
    """Width and height in inches of the laid-out drawing (runs `dot`)."""
    first = dot.pipe(format="plain").decode().split("\n", 1)[0].split()
    return float(first[2]), float(first[3])


def page_scale(size) -> float:
    """How much the drawing must shrink to fit A3 in its better orientation (<= 1: it fits)."""
    width, height = size
    short, long = A3_INCHES
    return min(max(width / short, height / long), max(width / long, height / short))


def _fitted(nodes, direction, **options):
    """The dot graph in the given direction, or the one of TB/LR that fits A3
    best, with its size in inches (None where not laid out yet)."""
    if direction is not None:
        return to_dot(nodes, direction=direction, **options), None
    candidates = [(dot, layout_size(dot)) for dot in (to_dot(nodes, direction=d, **options) for d in ("TB", "LR"))]
    return min(candidates, key=lambda candidate: page_scale(candidate[1]))


def draw(nodes, filename=None, format="pdf", label=None, color_by=None, metrics=None, direction=None,
         collapse="seed"):
    """Write `filename.format` (pdf, svg or png) and return its path; with no
    filename, return the graphviz object (a notebook shows it inline).
    `direction` None picks TB or LR, whichever fits an A3 page better."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not supported; choose one of {FORMATS}")
    import graphviz
    path = Path(filename) if filename is not None else None
    if path is not None:
        if path.suffix:
            if path.suffix.lstrip(".") not in FORMATS:
                raise ValueError(f"{filename}: drawing writes {', '.join(FORMATS)}; "
                                 f"not {path.suffix!r}")
            format, path = path.suffix.lstrip("."), path.with_suffix("")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {filename}: there is no folder {path.parent}")
    nodes = list(nodes)
    try:
        dot, size = _fitted(nodes, direction, label=label, color_by=color_by, metrics=metrics, collapse=collapse)
        if filename is None:
            return dot
        _warn_if_larger_than_a3(dot, size or layout_size(dot), len(nodes), collapse)
        # rendered in memory: graphviz's render() would write its dot source to `path`
        # (without the suffix) and delete it, taking a file of that name with it
        drawn = path.with_name(f"{path.name}.{format}")
        write_atomically(drawn, dot.pipe(format=format))
        return str(drawn)
    except graphviz.ExecutableNotFound as error:
        raise RuntimeError("drawing needs the graphviz `dot` program: install it with "
                           "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
                           "(macOS) or `conda install graphviz`") from error


def _warn_if_larger_than_a3(dot, size, count, over) -> None:
    width, height = size
    if page_scale(size) > 1:
        boxes = len(re.findall(r"^\s*\S+ \[label=<", dot.source, flags=re.M))
        collapsed = f", {over} replicas collapsed" if boxes < count else ""
        warnings.warn(f"the drawing of {count} nodes ({boxes} boxes{collapsed}) is {width:.0f} x {height:.0f} in, "
                      f"larger than A3 ({A3_INCHES[1]} x {A3_INCHES[0]} in) at a readable font: "
                      "draw a part, e.g. graph.nodes.filter('tag').draw(...) or "
                      "graph.nodes.where(recipe='Evaluate').draw(...)", stacklevel=3)
