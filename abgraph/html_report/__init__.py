"""The HTML report: one self-contained file (no server, nothing fetched) to browse
a study: its graph, each node's record, a tag filter, the node table, a plot per
metric and the diff of any two nodes. Built from the index alone: nothing is
unpickled, so a report of someone else's experiment is safe to make."""
from __future__ import annotations

import datetime
import json
import math
from importlib import resources
from pathlib import Path

from ..bulk import collector_paused
from .data import pack, tensors
from .graph_svg import drawings
from .plots import metric_plots


def write_report(nodes, path, title: str | None = None, objects=None) -> Path:
    """Write the report of `nodes` (a NodeSet) to `path`; returns the path.
    `objects`: the experiment's object store, to list each node's tensors."""
    import jinja2
    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"{path}: the report is an HTML file; give a name ending in .html")
    nodes = list(nodes)
    graph = nodes[0]._ab_graph if nodes else None
    with collector_paused():
        data = pack(nodes, graph)
        positions = {row[0]: i for i, row in enumerate(data["rows"])}
        if objects is not None:
            data["tensors"] = tensors(nodes, objects)
        pictures = drawings(nodes, positions) if nodes else {"overview": "", "groups": {}}
        data["groups"] = {key: {"members": group["members"], "subgroups": group["subgroups"]}
                          for key, group in pictures["groups"].items()}
        plots = metric_plots(nodes)
        script_data = _script_json(data)
    templates = jinja2.Environment(loader=jinja2.PackageLoader("abgraph.html_report", "templates"),
                                   autoescape=jinja2.select_autoescape(["html", "j2"]))
    page = templates.get_template("report.html.j2").render(
        title=title or "abgraph report", count=len(nodes), made=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        overview=pictures["overview"], groups=pictures["groups"], plots=plots,
        data=script_data, script=_asset("report.js"), style=_asset("report.css"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path


def _script_json(value) -> str:
    """JSON that is safe inside a <script> element (no `</script>` can end it)."""
    try:
        text = json.dumps(value, separators=(",", ":"), allow_nan=False, default=repr)
    except ValueError:  # a NaN or infinite metric: JSON has no word for it, the page shows "nan"
        text = json.dumps(_finite(value), separators=(",", ":"), default=repr)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _asset(name) -> str:
    return resources.files(__name__).joinpath("templates", name).read_text(encoding="utf-8")


__all__ = ["write_report"]
