#!/usr/bin/env python
"""CLI start-up and README benchmark (issue 14, "Measure").

    python benchmarks/bench_cli.py              # 7 repeats of each command, then the README
    python benchmarks/bench_cli.py --quick      # 3 repeats, no README
    python benchmarks/bench_cli.py --nodes 500  # a smaller experiment

1. A 2,000-node experiment (a root, 40 chains of 50 cheap nodes, tags on each) is
   run once into a temporary folder. Then each `abgraph` command (the installed
   console script, in a fresh process, as a user types it) is timed against the
   baseline `python -c "import torch"` measured in the same process, alternating
   the two; figures are medians. Target: `abgraph ls` at most 0.35x the baseline.
   Every command is also run once with `-X importtime` to report whether it
   imported torch or pandas.
2. Every ```python block of README.md runs as a script, in order, in an empty
   folder (what tests/test_readme.py checks): the time of each and the total,
   also as a multiple of the baseline (a block pays for Python and torch at least).

The machine may be shared: before each timing the benchmark waits (at most
`--wait` seconds in all) until other processes use under 0.3 cores, and prints
the load they caused meanwhile ("others"). Exit status 1 if the target is missed.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine_load import Meter, quiet  # noqa: E402

ROOT = HERE.parent
CLI = Path(sys.executable).with_name("abgraph")
TARGET = 0.35
BUILD = r'''
import sys
import abgraph as dg


class Counter(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["value"]

    def initialize_state(self, **properties):
        self.value = 0


class Step(dg.Recipe):
    PROPERTIES = ["chain", "step"]

    def run(self, state):
        state.value += 1
        state.metrics["value"] = state.value
        return state


exp = dg.Experiment(sys.argv[1], state_class=Counter)
root = exp.spawn_new_tree(name="bench")
chains, length = int(sys.argv[2]), int(sys.argv[3])
for chain in range(chains):
    node = root
    with exp.tag(f"chain:{chain}"):
        for step in range(length):
            with exp.tag(f"step:{step}"):
                node = Step(chain=chain, step=step)(node)
print(exp.run(executor=dg.SerialExecutor(), progress=False))
'''


def build(folder: Path, nodes: int) -> None:
    chains = 40
    length = max(1, -(-(nodes - 1) // chains))
    subprocess.run([sys.executable, "-c", BUILD, str(folder), str(chains), str(length)], check=True)


def timed(command, budget) -> tuple:
    others = quiet(budget)
    with Meter() as meter:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return meter.seconds, max(others, meter.others)


def imported(command) -> list:
    """Which of torch and pandas the command imported (from `-X importtime`)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command[1:]], capture_output=True, text=True)
    names = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return [name for name in ("torch", "pandas") if name in names]


def bench_commands(folder: Path, repeats: int, budget) -> bool:
    listing = subprocess.run([str(CLI), "ls", str(folder)], capture_output=True, text=True).stdout
    first = listing.splitlines()[1].split()[0]   # under the header
    commands = {
        "--help": ["--help"], "ls": ["ls", str(folder)], "ls --filter": ["ls", str(folder), "--filter", "step:4*"],
        "show": ["show", str(folder), first], "report": ["report", str(folder)],
        "verify": ["verify", str(folder)], "draw": ["draw", str(folder), "-o", str(folder.parent / "g.svg")],
    }
    baseline = [sys.executable, "-c", "import torch"]
    times = {name: [] for name in commands}
    base_times, loads = [], []
    timed(baseline, budget)   # warm the page cache
    for _ in range(repeats):
        seconds, load = timed(baseline, budget)
        base_times.append(seconds)
        loads.append(load)
        for name, args in commands.items():
            seconds, load = timed([str(CLI), *args], budget)
            times[name].append(seconds)
            loads.append(load)
    base = statistics.median(base_times)
    print(f"baseline `python -c \"import torch\"`: {base * 1000:.0f} ms (median of {repeats})")
    print(f"{'command':20} {'ms':>7} {'ratio':>6}  imports")
    ok = True
    for name, args in commands.items():
        seconds = statistics.median(times[name])
        heavy = imported([sys.executable, str(CLI), *args])
        verdict = ""
        if name == "ls":
            ok = seconds / base <= TARGET
            verdict = f"  target <= {TARGET}x: {'PASS' if ok else 'FAIL'}"
        print(f"abgraph {name:12} {seconds * 1000:7.0f} {seconds / base:5.2f}x  {', '.join(heavy) or '-'}{verdict}")
    print(f"others (cores used by other processes while timing): median {statistics.median(loads):.2f}, "
          f"max {max(loads):.2f}")
    return ok, base


def bench_readme(base: float, budget) -> None:
    blocks = re.findall(r"^```python\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    total = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for number, block in enumerate(blocks, 1):
            script = Path(folder) / f"block_{number}.py"
            script.write_text(block)
            quiet(budget)
            with Meter() as meter:
                subprocess.run([sys.executable, script.name], cwd=folder, check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            total += meter.seconds
            first_line = block.strip().splitlines()[0]
            print(f"README block {number}: {meter.seconds:6.1f} s = {meter.seconds / base:5.1f}x baseline  "
                  f"others {meter.others:.2f}  ({first_line[:50]})")
    print(f"README: {len(blocks)} python blocks, {total:.1f} s in all")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait in all for a quiet machine")
    args = parser.parse_args(argv)
    budget = {"seconds": args.wait, "waited": 0.0}
    with tempfile.TemporaryDirectory() as parent:
        folder = Path(parent) / "exp"
        build(folder, args.nodes)
        ok, base = bench_commands(folder, 3 if args.quick else 7, budget)
    if not args.quick:
        bench_readme(base, budget)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
