"""Drawing an experiment graph with graphviz, readable enough for a paper."""
from __future__ import annotations

import html
from pathlib import Path

from .identity import printable, readable

FORMATS = ("pdf", "svg", "png")
_STATUS_STYLE = {
    "done": {"style": "rounded,filled", "color": "#4d4d4d"},
    "failed": {"style": "rounded,filled,bold", "color": "#c0392b", "fillcolor": "#f5b7b1"},
    "blocked": {"style": "rounded,dashed", "color": "#999999", "fontcolor": "#777777"},
    "stopped": {"style": "rounded,dotted", "color": "#b9770e", "fontcolor": "#777777"},
}
# a light sequential scale (low -> high) that keeps black text readable
_SCALE = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6"]


def distinguishing(nodes) -> dict:
    """recipe type -> the property names worth printing: those that vary among
    its nodes (constant settings would repeat on every box), or all non-None
    ones for a recipe used once."""
    values: dict = {}
    for node in nodes:
        record = node._ab_record
        for key, value in _shown_values(record).items():
            values.setdefault(record.recipe, {}).setdefault(key, set()).add(repr(value))
    counts: dict = {}
    for node in nodes:
        counts[node._ab_record.recipe] = counts.get(node._ab_record.recipe, 0) + 1
    return {recipe: {k for k, seen in keys.items() if counts[recipe] == 1 or len(seen) > 1}
            for recipe, keys in values.items()}


def _shown_values(record) -> dict:
    values = record.properties if record.recipe == "root" else record.recipe_properties
    return {k: v for k, v in values.items() if v is not None}


def default_label(node, metrics=(), shown=None) -> str:
    """Recipe and its distinguishing properties, tags, chosen metrics, short id
    (a graphviz HTML label)."""
    record = node._ab_record
    name = record.recipe.rsplit(".", 1)[-1]
    values = {k: v for k, v in _shown_values(record).items() if shown is None or k in shown}
    lines = [f"<B>{_escape(name)}</B>"]
    lines += [_escape(f"{k}={_short(readable(v))}") for k, v in values.items()]
    if record.tags:
        lines.append(f"<I>{_escape(', '.join(record.tags))}</I>")
    for metric in metrics:
        value = measured(record, metric)
        if value is not None:
            lines.append(_escape(f"{metric}={_short(value)}"))
    if record.status != "done":
        lines.append(f"<B>{record.status.upper()}</B>")
    lines.append(f'<FONT POINT-SIZE="8" COLOR="#666666">{record.id[:8]}</FONT>')
    return "<" + "<BR/>".join(lines) + ">"


def _escape(text) -> str:
    """Any stored text as graphviz HTML-label text (a crafted tag cannot break the label)."""
    return html.escape(printable(text))


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
    text = str(value)
    return text if len(text) <= 24 else text[:21] + "..."


def to_dot(nodes, label=None, color_by=None, metrics=None, direction="TB"):
    """`nodes`: a graph's nodes or any subset (a NodeSet); edges between them are drawn."""
    import graphviz
    metrics = list(metrics or ([color_by] if color_by else []))
    dot = graphviz.Digraph("experiment", graph_attr={"rankdir": direction, "nodesep": "0.25", "ranksep": "0.35"},
                           node_attr={"shape": "box", "fontname": "Helvetica", "fontsize": "10",
                                      "fillcolor": "#ffffff"},
                           edge_attr={"color": "#666666", "arrowsize": "0.6"})
    nodes = list(nodes)
    _check_measured(nodes, metrics)
    colors = _colors(nodes, color_by) if color_by else {}
    shown = distinguishing(nodes)
    present = {node.id for node in nodes}
    for node in nodes:
        record = node._ab_record
        style = dict(_STATUS_STYLE.get(record.status, {}))
        if node.id in colors and record.status == "done":
            style["fillcolor"] = colors[node.id]
        text = label(node) if label else default_label(node, metrics, shown.get(node._ab_record.recipe))
        dot.node(node.id, text, **style)
        for parent in record.parents:
            if parent in present:
                dot.edge(parent, node.id)
    return dot


def _colors(nodes, metric) -> dict:
    values = {}
    for node in nodes:
        value = measured(node._ab_record, metric)
        if isinstance(value, (int, float)) and value == value:
            values[node.id] = float(value)
    if not values:
        raise ValueError(f"no node has a numeric {metric!r}; metrics and results here: {measurable(nodes)}")
    low, high = min(values.values()), max(values.values())
    span = (high - low) or 1.0
    return {k: _SCALE[min(len(_SCALE) - 1, int((v - low) / span * len(_SCALE)))] for k, v in values.items()}


def draw(nodes, filename=None, format="pdf", label=None, color_by=None, metrics=None, direction="TB"):
    """Write `filename.format` (pdf, svg or png) and return its path; with no
    filename, return the graphviz object (a notebook shows it inline)."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r} is not supported; choose one of {FORMATS}")
    import graphviz
    dot = to_dot(nodes, label=label, color_by=color_by, metrics=metrics, direction=direction)
    if filename is None:
        return dot
    path = Path(filename)
    if path.suffix:
        if path.suffix.lstrip(".") not in FORMATS:
            raise ValueError(f"{filename}: drawing writes {', '.join(FORMATS)}; "
                             f"not {path.suffix!r}")
        format, path = path.suffix.lstrip("."), path.with_suffix("")
    try:
        return dot.render(str(path), format=format, cleanup=True)
    except graphviz.ExecutableNotFound as error:
        raise RuntimeError("drawing needs the graphviz `dot` program: install it with "
                           "`apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
                           "(macOS) or `conda install graphviz`") from error
