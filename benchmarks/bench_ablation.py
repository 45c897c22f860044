#!/usr/bin/env python
"""Ablation-study benchmark (issue 6, "Measure").

    python benchmarks/bench_ablation.py             # 3 repeats (the figures in README.md)
    python benchmarks/bench_ablation.py --quick     # 1 repeat, 2 seeds
    python benchmarks/bench_ablation.py --profile   # also cProfile one SerialExecutor study

The LOCO study of `examples/loco_breast_cancer.py` (10 trials x 3 seeds: the
base, 4 features, 3 single layers, the "my_dense" prefix group and a custom
model; the example's own `training_fn`, 20 epochs) is timed four ways, each
against the baseline measured in this same process:

  baseline   the same 30 trial x seed runs as a plain PyTorch loop in this
             process: for each run, seed, build the data (drop the columns
             from the DataFrame) and the model (the base model with its input
             layer or the layers after a removed one rebuilt by hand, or the
             custom model), re-seed and call the same `training_fn`;
  serial     `AblationStudy(...).run(executor=SerialExecutor())` in a fresh
             folder: building the study (its checks included), running,
             storing every node, and the `StudyResult`; target <= 1.1x;
  process    the same with `ProcessExecutor(workers=2)`, worker start-up and
             shut-down included; target <= 0.6x;
  re-run     the serial study again in its finished folder (nothing trains);
             target: 0 executed, reported in seconds.

The baseline builds every model so that it draws the same random numbers as
abgraph's shape repair, and hands `training_fn` a `TensorDataset` of the same
numbers: every run's accuracy must equal abgraph's exactly (checked), so both
sides do the same work.

Torch uses 1 thread in this process (`--threads`); `ProcessExecutor` gives each
of its 2 workers cores // 2 threads (1 here). Each repeat alternates the order of
baseline, serial and process (after one untimed warm-up of the baseline);
figures are medians over repeats. The folders are `tempfile.TemporaryDirectory`s
(outside the repo; `--dir` sets where). The machine may be shared: before each
timing the benchmark waits (at most `--wait` seconds in all) until other
processes use under 0.3 cores, and every timing prints how many cores they used
meanwhile ("others"); the process figure is the first to suffer from them.
`--seeds N` runs the same study with seeds 0..N-1 (more training per worker
start-up).
Exit status 1 if a target is missed.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))   # ProcessExecutor workers get this sys.path too

import torch  # noqa: E402
from torch import nn  # noqa: E402

import abgraph as dg  # noqa: E402
from abgraph.ablation.study import seeded  # noqa: E402
import loco_breast_cancer as example  # noqa: E402
from machine_load import Meter, quiet  # noqa: E402

TARGET_SERIAL = 1.1
TARGET_PROCESS = 0.6
WORKERS = 2


# --------------------------------------------------------------------------- the baseline

def plain_trials():
    """The study's trials, written out: (name, columns dropped, layers removed, generator)."""
    trials = [("base", [], [], example.base_model_generator)]
    trials += [(f"feature {f}", [f], [], example.base_model_generator) for f in example.FEATURES]
    trials += [(f"layer {name}", [], [name], example.base_model_generator)
               for name in ("my_dense_two", "my_dense_three", "my_dense_four")]
    trials.append(("layers prefixed my_dense", [], ["my_dense_two", "my_dense_three", "my_dense_four"],
                   example.base_model_generator))
    trials.append(("model a linear model", [], [], example.my_custom_model))
    return trials


def plain_data(df, dropped):
    features = df.drop(columns=["target", *dropped])
    x = torch.tensor(features.to_numpy(dtype="float32"))
    y = torch.tensor(df["target"].to_numpy(dtype="int64"))
    return torch.utils.data.TensorDataset(x, y)


def plain_model(generator, n_inputs, removed):
    """The model as a PyTorch user edits it by hand: a new first layer for fewer
    inputs; removed layers left out and the next Linear made for the new width."""
    model = generator()
    if not removed and model[0].in_features == n_inputs:
        return model
    layers = OrderedDict(model.named_children())
    if layers["dense_in"].in_features != n_inputs:
        layers["dense_in"] = nn.Linear(n_inputs, layers["dense_in"].out_features)
    for name in removed:
        del layers[name]
    width = n_inputs
    for name, layer in layers.items():
        if isinstance(layer, nn.Linear):
            if layer.in_features != width:
                layers[name] = nn.Linear(width, layer.out_features)
            width = layer.out_features
    return nn.Sequential(layers)


def run_baseline(df, seeds):
    """Every trial x seed in a plain loop; {(trial, seed): accuracy}."""
    metrics = {}
    for name, dropped, removed, generator in plain_trials():
        for seed in seeds:
            with seeded(seed):
                data = plain_data(df, dropped)
                model = plain_model(generator, data.tensors[0].shape[1], removed)
            with seeded(seed):
                metrics[(name, seed)] = example.training_fn(lambda: data, lambda: model)
    return metrics


# --------------------------------------------------------------------------- abgraph

def run_study(folder, df, seeds, executor):
    study = example.make_study(folder, df)
    result = study.run(train_fn=example.training_fn, ablator="loco", direction="max", seeds=seeds,
                       executor=executor, progress=False)
    if not result.ok:
        raise RuntimeError(f"the study failed:\n{result}")
    metrics = {(row.trial, row.seed): row.metric for row in result.runs.itertuples()}
    return metrics, study.report, result


def worker_timeline(result, started):
    """Per worker process: seconds from run() to its first node, and how much longer
    its first trial took than its others (the imports the first task pays)."""
    by_pid: dict = {}
    for node in result.graph.nodes:
        record = node._ab_record
        if record.recipe.endswith("AblationTrial") and record.started:
            by_pid.setdefault(record.environment.get("pid"), []).append(record)
    timeline = []
    for records in by_pid.values():
        records.sort(key=lambda r: r.started)
        rest = statistics.median(r.duration for r in records[1:]) if len(records) > 1 else 0.0
        timeline.append((records[0].started - started, records[0].duration - rest, len(records)))
    return sorted(timeline)


# --------------------------------------------------------------------------- CPU accounting

IMPORTS = """
import time, sys
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import abgraph, abgraph.executors.worker, abgraph.ablation
t2 = time.perf_counter()
sys.path.insert(0, sys.argv[1])
import loco_breast_cancer as example
t3 = time.perf_counter()
torch.set_num_threads(1)
data = abgraph.ablation.PandasDataset(example.breast_cancer(), "target")
calls = []
for _ in range(2):
    start = time.perf_counter()
    model = example.base_model_generator()
    example.training_fn(lambda: data, lambda: model)
    calls.append(time.perf_counter() - start)
print(t1 - t0, t2 - t1, t3 - t2, calls[0] - calls[1])
"""


def worker_imports(repeats=3) -> dict:
    """What a spawned worker pays before it trains at full speed, in a fresh
    interpreter: the interpreter and torch, abgraph (when it starts), the example
    module (when its first task unpickles `training_fn`, which lives there), and
    the first `training_fn` call's extra time over the second (torch imports
    modules such as torch._dynamo lazily, at the first optimizer step)."""
    timings = []
    for _ in range(repeats):
        done = subprocess.run([sys.executable, "-c", IMPORTS, str(HERE.parent / "examples")],
                              check=True, capture_output=True, text=True)
        torch_s, abgraph_s, example_s, first_s = (float(v) for v in done.stdout.split())
        timings.append({"import torch": torch_s, "abgraph": abgraph_s,
                        "the example module": example_s, "first training_fn call": first_s})
    return {key: statistics.median(t[key] for t in timings) for key in timings[0]}


# --------------------------------------------------------------------------- the benchmark

def one_repeat(repeat, df, seeds, parent, budget):
    """Baseline, serial and process once each (order rotated per repeat), plus the re-run."""
    out, metrics = {}, {}

    def baseline():
        quiet(budget)
        with Meter() as meter:
            metrics["baseline"] = run_baseline(df, seeds)
        out["baseline"] = meter

    def serial():
        folder = Path(tempfile.mkdtemp(prefix="serial-", dir=parent)) / "study"
        quiet(budget)
        with Meter() as meter:
            metrics["serial"], report, _ = run_study(folder, df, seeds, dg.SerialExecutor())
        out["serial"], out["serial_nodes"] = meter, sum(report.durations.values())
        with Meter() as again:
            metrics["rerun"], report, _ = run_study(folder, df, seeds, dg.SerialExecutor())
        again.executed, again.cached = len(report.executed), len(report.cached)
        out["rerun"] = again

    def process():
        folder = Path(tempfile.mkdtemp(prefix="process-", dir=parent)) / "study"
        quiet(budget)
        started = time.time()
        with Meter() as meter:
            metrics["process"], report, result = run_study(folder, df, seeds,
                                                           dg.ProcessExecutor(workers=WORKERS))
        out["process"], out["process_nodes"] = meter, sum(report.durations.values())
        out["timeline"] = worker_timeline(result, started)

    steps = [baseline, serial, process]
    shift = repeat % len(steps)
    for step in steps[shift:] + steps[:shift]:
        step()
    for name in ("serial", "process", "rerun"):
        if metrics[name] != metrics["baseline"]:
            different = {k: (v, metrics[name].get(k)) for k, v in metrics["baseline"].items()
                         if metrics[name].get(k) != v}
            raise RuntimeError(f"{name} does not compute what the baseline computes: {different}")
    print(f"  repeat {repeat + 1}: baseline {out['baseline'].seconds:6.2f} s, serial "
          f"{out['serial'].seconds:6.2f} s, process {out['process'].seconds:6.2f} s, re-run "
          f"{out['rerun'].seconds:5.2f} s ({out['rerun'].executed} executed)   others: "
          + ", ".join(f"{k} {out[k].others:.2f}" for k in ("baseline", "serial", "process")) + " cores",
          flush=True)
    return out


def verdict(ok) -> str:
    return "PASS" if ok else "FAIL"


def profile_serial(df, seeds, parent, lines=25):
    print("\n== cProfile of one SerialExecutor study (sorted by cumulative time)")
    folder = Path(tempfile.mkdtemp(prefix="profile-", dir=parent)) / "study"
    profile = cProfile.Profile()
    profile.enable()
    run_study(folder, df, seeds, dg.SerialExecutor())
    profile.disable()
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("cumulative").print_stats(lines)
    print(stream.getvalue())
    stream = io.StringIO()
    pstats.Stats(profile, stream=stream).sort_stats("tottime").print_stats(15)
    print("== the same, sorted by own time")
    print(stream.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, seeds [0, 1]")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds 0..N-1 (default 3, the example's; 2 with --quick)")
    parser.add_argument("--wait", type=float, default=120.0,
                        help="seconds in all to wait for other processes to go quiet (default 120)")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in this process")
    parser.add_argument("--dir", default=None, help="where the temporary folders go")
    parser.add_argument("--profile", action="store_true", help="also cProfile one serial study")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    seeds = list(range(args.seeds)) if args.seeds else [0, 1] if args.quick else example.SEEDS
    torch.set_num_threads(args.threads)

    df = example.breast_cancer()
    runs = len(plain_trials()) * len(seeds)
    print(f"LOCO study of examples/loco_breast_cancer.py: {len(plain_trials())} trials x {len(seeds)} "
          f"seeds = {runs} runs of training_fn; {repeats} repeat(s); torch threads {args.threads}; "
          f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, abgraph {dg.__version__}")
    imports = worker_imports()
    start = sum(imports.values())
    print("what each spawned worker pays before it trains at full speed: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in imports.items()) + f" (in all {start:.2f} s)")

    run_baseline(df, seeds[:1])   # warm-up: first calls of the kernels, the allocator, the caches
    with tempfile.TemporaryDirectory(prefix="abgraph-bench-ablation-", dir=args.dir) as parent:
        budget = {"seconds": args.wait, "waited": 0.0}
        results = [one_repeat(r, df, seeds, parent, budget) for r in range(repeats)]

        def med(key, attr="seconds"):
            return statistics.median(getattr(r[key], attr) if attr else r[key] for r in results)

        baseline, serial, process, rerun = (med(k) for k in ("baseline", "serial", "process", "rerun"))
        serial_nodes, process_nodes = med("serial_nodes", None), med("process_nodes", None)
        executed = max(r["rerun"].executed for r in results)
        cached = min(r["rerun"].cached for r in results)
        others = max(r[k].others for r in results for k in ("baseline", "serial", "process"))
        ratio_serial, ratio_process = serial / baseline, process / baseline
        ok_serial, ok_process = ratio_serial <= TARGET_SERIAL, ratio_process <= TARGET_PROCESS
        ok_rerun = executed == 0

        print(f"\nevery run's accuracy equals the baseline's ({runs} runs, serial, process and re-run)")
        print(f"\n{'figure':<44} {'seconds':>8} {'ratio':>7}  target      result")
        print(f"{'baseline: plain PyTorch loop, one process':<44} {baseline:8.2f} {'1.000':>7}")
        print(f"{'abgraph, SerialExecutor':<44} {serial:8.2f} {ratio_serial:7.3f}  <= {TARGET_SERIAL:<7}  "
              f"{verdict(ok_serial)}")
        print(f"{'abgraph, ProcessExecutor(workers=2)':<44} {process:8.2f} {ratio_process:7.3f}  "
              f"<= {TARGET_PROCESS:<7}  {verdict(ok_process)}")
        print(f"{'abgraph, re-run of the finished study':<44} {rerun:8.2f} {rerun / baseline:7.3f}  "
              f"0 executed  {verdict(ok_rerun)} ({executed} executed, {cached} cached)")
        print(f"(medians over {repeats} repeat(s); other processes used up to {others:.2f} cores meanwhile"
              + ("  <-- shared machine: the process figure is unreliable" if others > 0.25 else "") + ")")

        print("\nwhere the time goes:")
        print(f"  serial: {serial - baseline:+.2f} s against the baseline; the {runs + 2} nodes ran for "
              f"{serial_nodes:.2f} s in all (training plus storing each node), the rest "
              f"({serial - serial_nodes:.2f} s) is building, checking and recording the study")
        ideal = baseline / WORKERS
        timeline = sorted(results, key=lambda r: r["process"].seconds)[len(results) // 2]["timeline"]
        print(f"  process: ideal {WORKERS}-way split of the baseline {ideal:.2f} s (ratio "
              f"{ideal / baseline:.2f}); the nodes ran for {process_nodes:.2f} s in all in the workers "
              f"({process_nodes / max(serial_nodes, 1e-9):.2f}x the serial nodes); each worker first "
              f"pays about {start:.2f} s (above), so expect about {start + ideal:.2f} s (ratio "
              f"{(start + ideal) / baseline:.2f}) on 2 free cores")
        for first, extra, count in timeline:
            print(f"    a worker: first trial started {first:.2f} s after run(), its first trial took "
                  f"{extra:+.2f} s longer than its others, {count} trials")
        print(f"  waited {budget['waited']:.0f} s in all for other processes to go quiet")
        if args.profile or not ok_serial:
            profile_serial(df, seeds, parent)

        print("\n| figure | seconds | ratio to baseline | target | result |")
        print("|---|---|---|---|---|")
        print(f"| baseline: plain PyTorch loop ({runs} runs) | {baseline:.2f} | 1.000 | | |")
        print(f"| `SerialExecutor` | {serial:.2f} | {ratio_serial:.3f} | ≤ {TARGET_SERIAL} | "
              f"{verdict(ok_serial)} |")
        print(f"| `ProcessExecutor(workers=2)` | {process:.2f} | {ratio_process:.3f} | "
              f"≤ {TARGET_PROCESS} | "
              f"{verdict(ok_process)} |")
        print(f"| re-run (finished study) | {rerun:.2f} | {rerun / baseline:.3f} | 0 executed | "
              f"{verdict(ok_rerun)} ({executed} executed) |")
    return 0 if ok_serial and ok_process and ok_rerun else 1


if __name__ == "__main__":
    sys.exit(main())
