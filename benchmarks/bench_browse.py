#!/usr/bin/env python
"""Browsing benchmarks for abgraph (issue 16, "Measure"): a random sweep with seeds
at 10,000 and 100,000 nodes.

    python benchmarks/bench_browse.py                 # 10k and 100k, with the browser
    python benchmarks/bench_browse.py --sizes 10000   # one size
    python benchmarks/bench_browse.py --no-browser    # without headless Chromium

The experiment is written into a fresh index by `Index.write` (what a sweep's
`run()` would leave, minus the payloads: browsing never reads them). Each figure is
the median of repeats, printed with a baseline measured in the same process, the
issue's target at 100,000 nodes, and the growth from the smaller size. Linear is 10x
the time for 10x the nodes, or the growth of the floor (a bare read of the rows,
O(n) by construction) where that is more: 100,000 nodes no longer fit the caches
10,000 fit, and the machine's pace drifts between the two sizes. Exits 1 when a
target is missed.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pandas

import abgraph
from abgraph.cli import main as cli_main
from abgraph.store import Index, NodeRecord

sys.path.insert(0, str(Path(__file__).parent))
from machine_load import Meter, quiet  # noqa: E402

PATTERN = "lr:0.01* & !seed:0 | method:none"
TARGETS = {"slim restore": 1.0, "tag filter": 0.05, "to_dataframe()": 1.0, "abgraph ls --filter": None,
           "report written": 10.0, "report ready in Chromium": 3.0}


def write_sweep(directory: Path, nodes: int, seed: int = 0) -> None:
    """A root, then Train nodes of a random sweep (lr, weight decay, method, seed),
    each followed by an Evaluate with metrics: `nodes` nodes in all. Each node
    lists its blobs as a run stores them: the data's 4 tensors, shared by all,
    and 15 of its model's own (an Evaluate's are its Train's)."""
    rng = random.Random(seed)
    environment = {"python": "3.11.7", "torch": "2.13.0", "abgraph": abgraph.__version__,
                   "host": "bench", "platform": "linux", "device": "cpu", "pid": 1}
    records = []
    data = [_digest(f"data {n}") for n in range(4)]

    def model(number):
        return sorted(data + [_digest(f"model {number} {n}") for n in range(15)])

    def add(node_id, recipe, recipe_properties, metrics, parents, node_tags, status="done", error=None, blobs=()):
        started = 1.7e9 + len(records) + 1
        records.append(NodeRecord(
            node_id, parents, recipe, recipe_properties, "v1", {"dataset": "digits", "hidden": 64},
            "study.State", node_tags, status, error, started, started + 1.5, 1.5,
            _digest(f"payload {node_id}") if blobs else None, ["model"], list(blobs), metrics,
            environment=environment))

    root = _id(0)
    add(root, "root", {}, {}, [], [], blobs=model("root"))
    trains = (nodes - 1) // 2
    for number in range(trains):
        lr, wd = rng.choice([0.001, 0.003, 0.01, 0.03, 0.1]), rng.choice([0.0, 1e-4, 1e-3])
        method = rng.choice(["none", "l1", "random"])
        node_tags = [f"lr:{lr}", f"wd:{wd}", f"method:{method}", f"seed:{number % 10}"]
        train_id = _id(2 * number + 1)
        blobs = model(number)
        add(train_id, "study.Train", {"lr": lr, "weight_decay": wd, "seed": number % 10, "method": method},
            {"loss": rng.random()}, [root], node_tags, blobs=blobs)
        failed = rng.random() < 0.01
        add(_id(2 * number + 2), "abgraph.recipes.evaluate.Evaluate", {"split": "test"},
            {} if failed else {"accuracy": 0.5 + 0.4 * rng.random(), "loss": rng.random()}, [train_id],
            node_tags, status="failed" if failed else "done",
            error="Traceback (most recent call last):\nValueError: diverged" if failed else None,
            blobs=() if failed else blobs)
    while len(records) < nodes:
        add(_id(len(records) + 1), "abgraph.recipes.evaluate.Evaluate", {"split": "val"}, {}, [root], [])
    index = Index(directory, create=True)
    try:
        index.write(records)  # as a run stores them
    finally:
        index.close()


QUIET = {"seconds": 600.0, "waited": 0.0}  # how long, in all, to wait for other processes to calm down
LOAD: list = []  # cores other processes used during the last timed figure


def _id(number) -> str:
    return hashlib.sha256(str(number).encode()).hexdigest()[:32]


def _digest(text) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def timed(fn, *args, repeats=3):
    """Median seconds of `repeats` calls, and the last result. Each call waits
    (bounded) until other processes use under half a core, and their load while it
    ran is kept in LOAD: these machines are shared."""
    times, result = [], None
    LOAD.clear()
    for _ in range(repeats):
        result = None
        quiet(QUIET, limit=0.5)
        gc.collect()
        with Meter() as meter:
            result = fn(*args)
        times.append(meter.seconds)
        LOAD.append(meter.others)
    return statistics.median(times), result


def slim_restore(directory):
    experiment = abgraph.Experiment.restore(directory)
    graph = experiment.graph
    experiment.index.close()
    return graph


def raw_rows(directory):
    """The floor: SQLite's rows, decoded from JSON, and nothing else."""
    db = sqlite3.connect(directory / "abgraph.sqlite")
    rows = [(r[0], json.loads(r[1]), json.loads(r[2]), json.loads(r[3]))
            for r in db.execute("SELECT nodes.id, recipe_properties, properties, metrics "
                                "FROM nodes JOIN kinds ON kinds.id = nodes.kind")]
    db.close()
    return rows


def ls_filter(directory):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        cli_main(["ls", str(directory), "--filter", PATTERN])
    return out.getvalue().count("\n")


def browser_ready(path: Path) -> float:
    """Seconds from navigation to the page's script having drawn table and graph."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait
    quiet(QUIET, limit=0.5)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.set_page_load_timeout(120)
        driver.get(path.as_uri())
        WebDriverWait(driver, 120).until(lambda d: d.execute_script("return document.body.dataset.ready"))
        return driver.execute_script("return window.abgraphReadyMs") / 1000
    finally:
        driver.quit()


def measure(work: Path, nodes: int, browser: bool) -> dict:
    directory = work / f"sweep-{nodes}"
    directory.mkdir()
    start = time.perf_counter()
    write_sweep(directory, nodes)
    print(f"\n{nodes:,} nodes (index written in {time.perf_counter() - start:.2f} s)")
    figures = {}

    def figure(name, seconds, baseline=None, note=""):
        figures[name] = seconds
        ratio = f" ratio {seconds / baseline:5.2f} vs {baseline * 1000:8.1f} ms {note}" if baseline else f" {note}"
        others = f"  [others used {min(max(LOAD), os.cpu_count()):.1f} cores]" if LOAD else ""
        print(f"  {name:28} {seconds * 1000:9.1f} ms{ratio}{others}")

    # each baseline's objects are dropped once measured: only the graph stays alive
    t_floor, rows = timed(raw_rows, directory)
    assert len(rows) == nodes
    del rows
    t, graph = timed(slim_restore, directory)
    assert len(graph) == nodes
    figure("slim restore", t, t_floor, "(SQLite rows + json.loads, the floor)")
    figures["floor"] = t_floor

    naive = [(n, set(n._ab_record.tags)) for n in graph.nodes]

    def naive_filter():  # the pattern by hand: fnmatch over each node's tags
        import fnmatch
        return [n for n, tags in naive if (any(fnmatch.fnmatchcase(t, "lr:0.01*") for t in tags)
                                           and "seed:0" not in tags) or "method:none" in tags]
    t_naive, expected = timed(naive_filter)
    t, selected = timed(graph.nodes.filter, PATTERN, repeats=7)
    assert {n.id for n in selected} == {n.id for n in expected} and selected
    figure("tag filter", t, t_naive, f"(fnmatch per node; {len(selected):,} hits)")
    del naive, expected, selected

    records = [n._ab_record.fields() for n in graph.nodes]
    t_naive, _ = timed(pandas.json_normalize, records)
    del records
    graph._depth.clear()
    t, frame = timed(graph.to_dataframe)
    assert len(frame) == nodes
    figure("to_dataframe()", t, t_naive, "(pandas.json_normalize of the records)")

    t, count = timed(ls_filter, directory)
    figure("abgraph ls --filter", t, None, f"(in process, {count:,} lines printed)")

    report = work / f"report-{nodes}.html"
    t, _ = timed(graph.to_html, report, repeats=1)
    figure("report written", t, None, f"({report.stat().st_size / 2**20:.1f} MiB)")
    figures["report size MiB"] = report.stat().st_size / 2**20
    if browser:
        LOAD.clear()
        ready = statistics.median(browser_ready(report) for _ in range(3))
        figure("report ready in Chromium", ready, None, "(headless, navigation to script done)")
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--dir", default=None, help="where the temporary folder goes")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        results = {n: measure(Path(work), n, not args.no_browser) for n in args.sizes}
    largest, smallest = max(results), min(results)
    # "linear" on this machine in this run: the growth of the floor, a read that is O(n) by
    # construction (memory and the machine's pace make it more than the node count)
    floor_growth = results[largest]["floor"] / results[smallest]["floor"]
    print(f"\nThe floor grew {floor_growth:.1f}x from {smallest:,} to {largest:,} nodes.")
    print(f"\n| figure | {' | '.join(f'{n:,} nodes' for n in sorted(results))} | growth | target at "
          f"{largest:,} | result |\n|---|{'---|' * len(results)}---|---|---|")
    failed = False
    for name, target in TARGETS.items():
        if name not in results[largest]:
            continue
        values = [results[n][name] for n in sorted(results)]
        growth = results[largest][name] / results[smallest][name] if largest != smallest else None
        linear = max(largest / smallest, floor_growth)
        ok = (target is None or values[-1] <= target) and (growth is None or growth <= linear)
        failed |= not ok
        print(f"| {name} | {' | '.join(f'{v * 1000:.{1 if v < 0.01 else 0}f} ms' for v in values)} | "
              f"{f'{growth:.1f}x, bound {linear:.1f}x' if growth else '-'} | "
              f"{f'<= {target:g} s' if target else 'linear'} | {'PASS' if ok else 'FAIL'} |")
    sizes = " | ".join(f"{results[n]['report size MiB']:.1f} MiB" for n in sorted(results))
    print(f"| report size | {sizes} | | | |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
