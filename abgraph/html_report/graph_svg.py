"""The report's graph as graphviz SVG: every node when there are few, otherwise
one box per (depth, recipe) with its count, each expanding on click into its
nodes or, for a large group, into its tag groups."""
from __future__ import annotations

import functools
import html

from ..drawing import to_dot

MAX_DRAWN = 300   # nodes (or boxes) in one drawing: graphviz and the eye both give up beyond
HEADLINE = 3      # metrics shown in a node's box; the panel shows them all


def tag_group(tags) -> str:
    """The tags that say what a node is, without its seed: what varies inside a
    group of repeated runs (`seed:3`, `data_seed:1`)."""
    return _tag_group(tuple(tags))


@functools.lru_cache(maxsize=65536)  # a sweep's nodes repeat a few hundred tag sets
def _tag_group(tags: tuple) -> str:
    kept = [t for t in tags if "seed" not in t.partition(":")[0].lower()]
    return ", ".join(sorted(kept))


def headline(record) -> list:
    """The names of a node's first few numbers, metrics then function results
    (`eval_fn.accuracy`): what its box shows."""
    named = list(record.metrics.items())
    for function, value in record.results.items():
        named += [(f"{function}.{key}", v) for key, v in value.items()] if isinstance(value, dict) else [
            (function, value)]
    return [name for name, value in named if isinstance(value, (int, float)) and not isinstance(value, bool)
            ][:HEADLINE]


def drawings(nodes, positions) -> dict:
    """`nodes`: a NodeSet; `positions`: node id -> row in the page's data.

    Returns {"overview": svg, "groups": {key: {"svg", "members", "subgroups"}}}:
    a collapsed overview, and per box what clicking it shows."""
    if len(nodes) <= MAX_DRAWN:
        return {"overview": _svg(to_dot(nodes, metrics=headline, collapse=None)), "groups": {}}
    by_recipe: dict = {}
    depths = nodes[0]._ab_graph.depths()
    for node in nodes:
        by_recipe.setdefault((depths[node.id], node._ab_record.recipe), []).append(node)
    groups: dict = {}  # two modules' `Train` at one depth share a box
    for (depth, recipe), members in by_recipe.items():
        groups.setdefault(f"group/{depth}/{recipe.rsplit('.', 1)[-1]}", []).extend(members)
    return {"overview": _svg(_overview(groups)),
            "groups": {key: _expansion(key, members, positions) for key, members in groups.items()}}


def _overview(groups):
    import graphviz
    dot = _digraph(graphviz)
    group_of = {node.id: key for key, members in groups.items() for node in members}
    edges: dict = {}
    for key, members in groups.items():
        _, depth, recipe = key.split("/", 2)
        failed = sum(1 for n in members if n._ab_record.status != "done")
        lines = [f"<B>{html.escape(recipe)}</B>", f"{_count(len(members))} · depth {depth}"]
        if failed:
            lines.append(f'<FONT COLOR="#c0392b">{failed:,} not done</FONT>')
        lines.append('<FONT POINT-SIZE="8" COLOR="#666666">click to expand</FONT>')
        dot.node(key, "<" + "<BR/>".join(lines) + ">", style="rounded,filled", fillcolor="#eef3fb",
                 peripheries="2")
        for node in members:
            for parent in node._ab_record.parents:
                source = group_of.get(parent)
                if source is not None:
                    edges[(source, key)] = edges.get((source, key), 0) + 1
    for (source, target), count in edges.items():
        dot.edge(source, target, label=f"{count:,}", fontsize="8")
    return dot


def _expansion(key, members, positions) -> dict:
    rows = [positions[n.id] for n in members]
    if len(members) <= MAX_DRAWN:
        return {"svg": _svg(to_dot(members, metrics=headline, collapse=None)), "members": rows, "subgroups": {}}
    import graphviz
    dot = _digraph(graphviz)
    by_tags: dict = {}
    for node in members:
        by_tags.setdefault(tag_group(node._ab_record.tags), []).append(node)
    ranked = sorted(by_tags.items(), key=lambda item: (-len(item[1]), item[0]))
    subgroups = {}
    for number, (tags, nodes) in enumerate(ranked[:MAX_DRAWN - 1]):
        name = f"sub/{key}/{number}"
        subgroups[name] = [positions[n.id] for n in nodes]
        label = f"<{html.escape(tags or '(no tags)')}<BR/>{_count(len(nodes))}>"
        dot.node(name, label, style="rounded,filled", fillcolor="#eef3fb")
    if len(ranked) > MAX_DRAWN - 1:
        rest = sum(len(nodes) for _, nodes in ranked[MAX_DRAWN - 1:])
        dot.node(f"more/{key}", f"{len(ranked) - MAX_DRAWN + 1:,} more tag groups\n{rest:,} nodes",
                 style="dashed")
    return {"svg": _svg(dot), "members": rows, "subgroups": subgroups}


def _count(number) -> str:
    return f"{number:,} node" + ("" if number == 1 else "s")


def _digraph(graphviz):
    return graphviz.Digraph("experiment", graph_attr={"rankdir": "TB", "nodesep": "0.25", "ranksep": "0.35"},
                            node_attr={"shape": "box", "fontname": "Helvetica", "fontsize": "10"},
                            edge_attr={"color": "#666666", "arrowsize": "0.6"})


def _svg(dot) -> str:
    """The <svg> element alone (no XML prolog), to inline in the page."""
    import graphviz
    try:
        text = dot.pipe(format="svg", encoding="utf-8")
    except graphviz.ExecutableNotFound as error:
        raise RuntimeError("the HTML report draws its graph with graphviz's `dot` program: install it "
                           "with `apt-get install graphviz` (Debian/Ubuntu), `brew install graphviz` "
                           "(macOS) or `conda install graphviz`") from error
    return text[text.index("<svg"):]

