"""The `abgraph` command: browse, draw, check and clean an experiment folder.

It reads the SQLite index only, so it never imports torch (and pandas only for
`report`): a command answers at once. Each subcommand is a small `cmd_*`
function plus its arguments in `parser()`; add one the same way.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sqlite3
import sys
import warnings

RECORD_TIMES = ("started", "finished")


def _open(directory):
    from .experiment import Experiment
    return Experiment.restore(directory)


def _say(command, message) -> None:
    print(f"abgraph {command}: {message}", file=sys.stderr)


def _selected(args):
    """The nodes `ls` lists: tag filters (AND), statuses (OR), leaves (a filter
    no tag matches warns: `main` says so on stderr)."""
    nodes = _open(args.directory).graph.nodes
    for pattern in args.filter or ():
        nodes = nodes.filter(pattern)
    if args.status:
        nodes = type(nodes)(n for n in nodes if n._ab_record.status in args.status)
    if args.leaves:
        nodes = nodes.leaves
    return nodes


def cmd_ls(args):
    from .identity import printable
    nodes = _selected(args)
    print(f"{'id':12}  {'status':7}  {'depth':>5}  {'recipe':18} tags")
    for node in nodes:
        record = node._ab_record
        name = record.recipe.rsplit(".", 1)[-1]
        print(f"{printable(record.id[:12])}  {record.status:7}  {node._ab_graph.depth(node.id):>5}  "
              f"{printable(name):18} {printable(','.join(record.tags))}")
    if not nodes:
        chosen = args.filter or args.status or args.leaves
        _say("ls", "no node matches" if chosen else "no node stored yet")
        return 1 if chosen else 0


def _iso(seconds) -> str | None:
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def _fields(record, blobs) -> dict:
    hidden = ("blobs", "seq", "derived_from")  # derived_from is a run's, never stored
    fields = {k: v for k, v in record.fields().items() if k not in hidden}
    fields.update({name: _iso(fields[name]) for name in RECORD_TIMES})
    fields["blobs"] = len(blobs)
    return fields


def _shown(value) -> str:
    from .identity import printable, readable
    value = readable(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_shown, value)) + "]"
    return "—" if value is None else printable(value)


def cmd_show(args):
    from .report import last_line
    from .state import failed_functions
    experiment = _open(args.directory)
    record = experiment.graph.node(args.id)._ab_record
    fields = _fields(record, experiment.index.blobs_of(record.id))
    if args.json:
        print(json.dumps(fields, indent=2, default=str))
        return
    error = fields.pop("error")
    raised = failed_functions(record)  # each on one line here, its traceback at the end
    fields["results"] = {name: f"raised {last_line(raised[name])}" if name in raised else value
                         for name, value in fields["results"].items()}
    if fields["duration"] is not None:
        fields["duration"] = f"{fields['duration']:.3f} s"
    nested = [len(k) + 2 for value in fields.values() if isinstance(value, dict) for k in value]
    width = max(*nested, *map(len, fields))
    for name, value in fields.items():
        if isinstance(value, dict):   # properties, metrics, results...: one line each
            print(name if value else f"{name:{width}}  —")
            for key, inner in value.items():
                print(f"  {key:{width - 2}}  {_shown(inner)}")
        else:
            print(f"{name:{width}}  {_shown(', '.join(value)) if isinstance(value, list) else _shown(value)}")
    if error:
        print(f"\nerror:\n{error.rstrip()}")
    for name, traceback in raised.items():
        print(f"\nfunction {name} raised:\n{traceback.rstrip()}")


def cmd_draw(args):
    graph = _open(args.directory).graph
    path = graph.draw(args.output, format=args.format, color_by=args.color_by,
                      metrics=args.metric or None,
                      collapse=None if args.every_node else "seed")
    print(path)


def cmd_report(args):
    if args.html:
        return cmd_report_html(args)
    import pandas

    from .diff import brief
    from .identity import printable
    frame = _open(args.directory).graph.to_dataframe()
    fixed = {"id", "parents", "depth", "recipe", "tags", "status", "duration"}
    frame["id"] = frame["id"].str[:12]
    frame["tags"] = frame["tags"].map(",".join)

    def cell(value):  # a loss history in brief; stored text as text, never as escapes
        value = brief(value) if isinstance(value, (list, tuple, dict)) else value
        return printable(value) if isinstance(value, str) else value
    for column in frame.columns:
        frame[column] = frame[column].map(cell)
    wanted = ["id", "recipe", "tags", "status"] + [c for c in frame.columns if c not in fixed]
    with pandas.option_context("display.max_rows", None, "display.max_columns", None, "display.width", 200):
        print(frame[wanted].to_string(index=False))


def cmd_report_html(args):
    graph = _open(args.directory).graph
    path = graph.to_html(args.html, title=args.title or f"abgraph: {args.directory}")
    print(f"{path} ({len(graph)} nodes, {path.stat().st_size / 2**20:.1f} MiB)")


def cmd_diff(args):
    graph = _open(args.directory).graph
    difference = graph.node(args.a).diff(graph.node(args.b))
    print(json.dumps(difference.to_dict(), indent=2, default=str) if args.json else difference)


def cmd_verify(args):
    from .store.maintenance import repair, verify
    if args.repair:
        fixed = repair(args.directory)
        print(f"index rebuilt: {fixed.kept} node(s) kept; the old index is {fixed.backup}")
        for what, why in fixed.lost.items():
            print(f"lost {what}: {why}")
        for node_id, digests in fixed.damaged.items():
            print(f"node {node_id} kept as damaged ({len(digests)} blob(s) missing or corrupted): "
                  "the next run recomputes it")
    experiment = _open(args.directory)
    graph = experiment.graph  # every row well formed, the graph acyclic
    for node in graph.nodes:
        graph.depth(node.id)
    report = verify(experiment.index, experiment.objects)
    print(f"{report.blobs} blobs checked")
    for digest in report.corrupted:
        print(f"corrupted blob {digest}")
    for node_id, digests in report.missing.items():
        print(f"node {node_id} is missing {len(digests)} blob(s): {', '.join(d[:12] for d in digests)}")
    for digest in report.orphans:
        print(f"orphan blob {digest} (no record uses it; `abgraph gc` deletes it)")
    print("clean" if report.clean else "PROBLEMS FOUND")
    return 0 if report.clean else 1


def cmd_gc(args):
    from .experiment import LOCK_NAME
    from .store.maintenance import collect_garbage
    experiment = _open(args.directory)
    if args.forget:
        found = experiment.objects.forget_user(args.forget)
        print(f"{args.forget} {'forgotten' if found else 'was not listed'} "
              f"as a user of {experiment.objects.location}")
        return 0 if found else 1
    garbage, size = collect_garbage(experiment.directory, experiment.index, experiment.objects, LOCK_NAME,
                                    dry_run=args.dry_run)
    if args.dry_run:
        for digest in garbage:
            print(f"would delete {digest}")
        print(f"{len(garbage)} unreferenced blob(s), {size / 2**20:.1f} MiB: run without --dry-run to delete")
    else:
        print(f"deleted {len(garbage)} unreferenced blob(s), {size / 2**20:.1f} MiB freed")


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="abgraph", description="Browse and maintain abgraph experiments.")
    commands = main.add_subparsers(dest="command", required=True)
    ls = commands.add_parser("ls", help="list nodes")
    ls.add_argument("directory")
    ls.add_argument("--filter", action="append", help="tag pattern (fnmatch, !negates); repeat to AND")
    ls.add_argument("--status", action="append", help="done, failed, blocked...; repeat to OR")
    ls.add_argument("--leaves", action="store_true", help="only nodes without children")
    ls.set_defaults(run=cmd_ls)
    show = commands.add_parser("show", help="one node's record")
    show.add_argument("directory")
    show.add_argument("id", help="node id or a unique prefix")
    show.add_argument("--json", action="store_true", help="the record as JSON")
    show.set_defaults(run=cmd_show)
    draw = commands.add_parser("draw", help="render the graph with graphviz")
    draw.add_argument("directory")
    draw.add_argument("-o", "--output", required=True, help="file name (.pdf, .svg or .png)")
    draw.add_argument("--format", default="pdf", help="pdf, svg or png when -o has no suffix")
    draw.add_argument("--color-by", help="metric that colors the nodes")
    draw.add_argument("--metric", action="append", help="metric shown in the labels; repeatable")
    draw.add_argument("--every-node", action="store_true",
                      help="draw seed replicas separately instead of as one node")
    draw.set_defaults(run=cmd_draw)
    report = commands.add_parser("report", help="metrics table, or with --html a report to browse")
    report.add_argument("directory")
    report.add_argument("--html", metavar="FILE", help="write a self-contained HTML report to FILE (.html)")
    report.add_argument("--title", help="the HTML report's title")
    report.set_defaults(run=cmd_report)
    compare = commands.add_parser("diff", help="what differs between two nodes (nothing is unpickled)")
    compare.add_argument("directory")
    compare.add_argument("a", help="node id or a unique prefix")
    compare.add_argument("b", help="node id or a unique prefix")
    compare.add_argument("--json", action="store_true", help="print the diff as JSON")
    compare.set_defaults(run=cmd_diff)
    check = commands.add_parser("verify", help="re-hash every blob and check every record")
    check.add_argument("directory")
    check.add_argument("--repair", action="store_true",
                       help="rebuild a damaged index from its intact rows, listing what was lost")
    check.set_defaults(run=cmd_verify)
    gc = commands.add_parser("gc", help="delete blobs no experiment using the location references")
    gc.add_argument("directory")
    gc.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    gc.add_argument("--forget", metavar="EXPERIMENT",
                    help="drop a deleted experiment from the users of the shared objects location")
    gc.set_defaults(run=cmd_gc)
    return main


def command() -> int:
    """The `abgraph` program. A command reads, prints and exits: Python's cycle
    collector would only cost it time (a third of a second at 100,000 nodes)."""
    gc.disable()
    return main()


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        with warnings.catch_warnings():   # a warning is said in one line, as the errors are
            warnings.simplefilter("always")
            warnings.showwarning = lambda message, *_, **__: _say(args.command, message)
            return args.run(args) or 0
    except BrokenPipeError:
        # the reader stopped early (`abgraph ls DIR | head`): not an error of ours; say
        # nothing, and let no later flush of stdout complain either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a command killed by the closed pipe reports
    except (KeyError, ValueError, RuntimeError, TypeError, OSError, sqlite3.Error) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        _say(args.command, message)
        return 2


if __name__ == "__main__":
    sys.exit(command())
