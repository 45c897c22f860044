#!/usr/bin/env python
"""Executor benchmarks for abgraph (issue 4, "Measure").

    python benchmarks/bench_executors.py            # full run (the figures in README.md)
    python benchmarks/bench_executors.py --quick    # ~0.5 s branches, under 90 s
    python benchmarks/bench_executors.py --profile  # also cProfile the driver and time
                                                    # a worker's start-up and exit

1. speed-up of `ProcessExecutor(workers=2)` over `SerialExecutor()` on 8
   independent branches of single-threaded MLP training (about 2 s each),
   with the workers' start-up and shut-down included (what a user pays) and
   excluded (workers warmed up by an earlier run; see `WarmProcessExecutor`);
2. scheduling overhead per node on trivial recipes, against SerialExecutor on
   the same graph, and payload loads from disk of a 100-step chain;
3. `RayExecutor(num_cpus=1)` on a local 2-CPU Ray cluster against
   ProcessExecutor on the same 8 branches (no target).

Every figure is a ratio against a baseline measured in this same process, with
the absolute numbers and PASS/FAIL against the issue's target. Each run uses a
fresh experiment folder in a `tempfile.TemporaryDirectory` (outside the repo).
Figure 1 measures serial, cold and warm runs in rounds; the full run re-measures
(up to 4 rounds) each kind that has no quiet run yet, and keeps the best of each,
since other processes only ever add time.
The machine may be shared: every timing also prints the CPU that processes
outside this benchmark's process tree used meanwhile ("others"), and before each
timing the benchmark waits (bounded) for the machine to be quiet. The exit
status is 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import abgraph as dg
from machine_load import Meter, quiet

TARGET_SPEEDUP = 1.8      # ProcessExecutor(workers=2) over SerialExecutor, 8 branches
TARGET_OVERHEAD_MS = 5.0  # scheduling overhead per node, trivial recipes
TARGET_CHAIN_LOADS = 1    # payload loads from disk for a 100-step chain
WORKERS = 2
BRANCHES = 8
QUIET = 0.25  # cores used by other processes below which a timing counts as quiet

# --------------------------------------------------------------------------- workloads

N_SAMPLES, N_FEATURES, N_CLASSES, HIDDEN, BATCH = 2048, 32, 10, 256, 128


class BranchState(dg.ExperimentState):
    """A generated classification data set and a small MLP (about 0.6 MiB)."""
    PROPERTIES = ["n_samples", "data_seed"]
    NONHASHED_ATTRIBUTES = ["x", "y", "model"]

    def initialize_state(self, n_samples, data_seed):
        generator = torch.Generator().manual_seed(data_seed)
        self.x = torch.randn(n_samples, N_FEATURES, generator=generator)
        teacher = torch.randn(N_FEATURES, N_CLASSES, generator=generator)
        self.y = (self.x @ teacher).argmax(1)
        self.model = make_model(data_seed)


def make_model(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                         nn.ReLU(), nn.Linear(HIDDEN, N_CLASSES))


def train(model, x, y, epochs, seed, lr):
    """Minibatch SGD on one thread; returns the last loss."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    loss = torch.tensor(0.0)
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), BATCH):
            batch = order[start:start + BATCH]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
    return loss.item()


class Train(dg.Recipe):
    """One branch: `epochs` of single-threaded training (calibrated to ~2 s)."""
    PROPERTIES = ["seed", "epochs", "lr"]

    def run(self, state):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            state.metrics["loss"] = train(state.model, state.x, state.y, self.epochs, self.seed, self.lr)
        finally:
            torch.set_num_threads(threads)
        return state


class TinyState(dg.ExperimentState):
    """A trivial state: four floats."""
    PROPERTIES = ["tag"]
    NONHASHED_ATTRIBUTES = ["x"]

    def initialize_state(self, tag):
        self.x = torch.zeros(4)


class Bump(dg.Recipe):
    """A trivial recipe; every node stores its own (tiny) payload."""
    PROPERTIES = ["i"]

    def run(self, state):
        state.x = state.x + self.i + 1
        return state


def build_branches(exp, epochs):
    """One shared root (data + initial model) and BRANCHES independent training children."""
    root = exp.spawn_new_tree(n_samples=N_SAMPLES, data_seed=0)
    return [Train(seed=seed, epochs=epochs, lr=0.05)(root) for seed in range(BRANCHES)]


def build_fan(exp, nodes):
    """One root and `nodes - 1` independent trivial children."""
    root = exp.spawn_new_tree(tag="fan")
    for i in range(nodes - 1):
        Bump(i=i)(root)


def build_chain(exp, steps):
    state = exp.spawn_new_tree(tag="chain")
    for i in range(steps):
        state = Bump(i=i)(state)


def warm_up_graph(exp):
    """Two cheap roots: run them first so that both workers have started."""
    if exp.state_class is BranchState:
        return [exp.spawn_new_tree(n_samples=8, data_seed=seed) for seed in (-1, -2)]
    return [exp.spawn_new_tree(tag=tag) for tag in ("warm-up-a", "warm-up-b")]


def warm_up_training(roots):
    """One batch of training on each warm-up root: in a fresh process the first
    `torch.optim` optimizer imports torch._dynamo (seconds), which the serial
    baseline has paid during calibration."""
    return [Train(seed=0, epochs=1, lr=0.05)(root) for root in roots]


# --------------------------------------------------------------------------- executors

class WarmProcessExecutor(dg.ProcessExecutor):
    """A ProcessExecutor whose workers survive `run()` (which closes its
    executor), so that a warm-up run in the same experiment pays their start-up
    and a second run measures the executor alone. `shutdown()` stops them."""

    _keep = True

    def close(self, cancel: bool = False) -> None:
        if cancel or not self._keep:
            super().close(cancel)

    def shutdown(self) -> float:
        self._keep = False
        start = time.perf_counter()
        super().close()
        return time.perf_counter() - start


# --------------------------------------------------------------------------- CPU accounting

def wait_until_quiet(budget, limit=None):
    return quiet(budget, QUIET if limit is None else limit)


# --------------------------------------------------------------------------- running

@contextlib.contextmanager
def fresh_experiment(state_class):
    with tempfile.TemporaryDirectory(prefix="abgraph-bench-exec-") as folder:
        yield dg.Experiment(Path(folder) / "experiment", state_class=state_class)


def timed_run(exp, executor, budget, profile=None):
    others_before = wait_until_quiet(budget)
    with Meter() as meter:
        if profile:
            profile.enable()
        try:
            report = exp.run(executor=executor, progress=False)
        finally:
            if profile:
                profile.disable()
    if not report.ok:
        raise RuntimeError(f"the benchmark run failed: {report}")
    meter.others = max(meter.others, 0.0)
    meter.others_before = others_before
    return report, meter


def digests(exp):
    return {node_id: digest for node_id, (status, digest) in exp.index.statuses().items()}


def run_branches(executor_factory, epochs, budget, warm=False):
    """Time the 8-branch graph on a fresh experiment. With `warm`, a warm-up
    run in the same folder starts the workers first (timed separately)."""
    with fresh_experiment(BranchState) as exp:
        executor = executor_factory()
        warm_up = first_optimizer = shutdown = None
        if warm:
            roots = warm_up_graph(exp)
            with Meter() as warm_meter:
                exp.run(executor=executor, progress=False)
            warm_up = warm_meter.seconds
            warm_up_training(roots)
            with Meter() as warm_meter:
                exp.run(executor=executor, progress=False)
            first_optimizer = warm_meter.seconds
        build_branches(exp, epochs)
        try:
            report, meter = timed_run(exp, executor, budget)
        finally:
            if warm:
                shutdown = executor.shutdown()
        branch_seconds = [d for node_id, d in report.durations.items() if d > 0.05]
        return dict(seconds=meter.seconds, others=meter.others, others_before=meter.others_before,
                    warm_up=warm_up, first_optimizer=first_optimizer, shutdown=shutdown, branch_seconds=branch_seconds,
                    digests=digests(exp), executor=executor)


def seconds_per_epoch(repeats=5):
    """Calibrate in this process, on one thread, like the recipe."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(N_SAMPLES, N_FEATURES, generator=generator)
        y = torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=generator)
        train(make_model(0), x, y, 2, 0, 0.05)  # warm the allocator and kernels
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            train(make_model(0), x, y, 5, 0, 0.05)
            timings.append((time.perf_counter() - start) / 5)
        return min(timings)  # other processes only ever add time
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- output

def verdict(ok):
    return "PASS" if ok else "FAIL"


def others_note(*meters):
    load = max(m["others"] if isinstance(m, dict) else m for m in meters)
    flag = "  <-- machine busy: figure unreliable" if load >= QUIET else ""
    return f"(others: {load:.2f} cores){flag}"


def header(title):
    print(f"\n== {title}")


# --------------------------------------------------------------------------- figures

def figure_speedup(args, budget):
    header(f"1. ProcessExecutor(workers={WORKERS}) vs SerialExecutor on {BRANCHES} independent branches")
    per_epoch = seconds_per_epoch()
    epochs = max(1, round(args.branch_seconds / per_epoch))
    print(f"calibration: {per_epoch * 1e3:.1f} ms/epoch on one thread -> {epochs} epochs "
          f"(~{epochs * per_epoch:.2f} s per branch)")
    serial, cold, warm = [], [], []
    kinds = [("SerialExecutor", serial, lambda: run_branches(lambda: dg.SerialExecutor(), epochs, budget)),
             ("ProcessExecutor cold", cold,
              lambda: run_branches(lambda: dg.ProcessExecutor(workers=WORKERS), epochs, budget)),
             ("ProcessExecutor warm", warm,
              lambda: run_branches(lambda: WarmProcessExecutor(workers=WORKERS), epochs, budget, warm=True))]
    # rounds of the three; a later round re-measures only the kinds without a quiet run yet
    for attempt in range(args.attempts):
        for label, runs, measure in kinds:
            if any(r["others"] < QUIET for r in runs):
                continue
            runs.append(measure())
            print(f"  round {attempt + 1}: {label:21s} {runs[-1]['seconds']:6.2f} s {others_note(runs[-1])}")
        if all(any(r["others"] < QUIET for r in runs) for _, runs, _ in kinds):
            break

    def best(runs, key="seconds"):
        # the best of the attempts: other processes only ever add time
        return min(r[key] for r in runs)

    t_serial, t_cold, t_warm = best(serial), best(cold), best(warm)
    branch = statistics.mean(min(serial, key=lambda r: r["seconds"])["branch_seconds"])
    warm_up, shutdown = best(warm, "warm_up"), best(warm, "shutdown")
    first_optimizer = best(warm, "first_optimizer")
    same = all(r["digests"] == serial[0]["digests"] for r in serial + cold)
    print(f"best of each ({len(serial)}, {len(cold)}, {len(warm)} runs):")
    print(f"SerialExecutor (baseline): {t_serial:7.2f} s  ({BRANCHES} branches, {branch:.2f} s each "
          f"serial, + root)")
    speedup_cold = t_serial / t_cold
    speedup_warm = t_serial / t_warm
    print(f"ProcessExecutor, start-up and shut-down included: {t_cold:7.2f} s  speed-up "
          f"{speedup_cold:.2f}x  (target >= {TARGET_SPEEDUP}x) {verdict(speedup_cold >= TARGET_SPEEDUP)}")
    print(f"ProcessExecutor, workers already running:         {t_warm:7.2f} s  speed-up "
          f"{speedup_warm:.2f}x  (target >= {TARGET_SPEEDUP}x) {verdict(speedup_warm >= TARGET_SPEEDUP)}")
    print(f"  fixed costs of the cold run: worker start-up (a run of 2 trivial roots) {warm_up:.2f} s; "
          f"first optimizer in each worker (a run of 2 one-batch Train nodes; imports torch._dynamo) "
          f"{first_optimizer:.2f} s; shut-down (close, waiting for the workers to exit) {shutdown:.2f} s")
    print(f"  ideal on {WORKERS} cores: {t_serial / WORKERS:.2f} s; to reach {TARGET_SPEEDUP}x with "
          f"start-up included the fixed costs must stay under "
          f"{t_serial / TARGET_SPEEDUP - t_serial / WORKERS:.2f} s")
    print(f"  same node ids and payload digests, serial vs process: {'yes' if same else 'NO'}")
    return dict(t_serial=t_serial, t_cold=t_cold, t_warm=t_warm, epochs=epochs, branch=branch,
                warm_up=warm_up, first_optimizer=first_optimizer, shutdown=shutdown, digests=serial[0]["digests"])


def figure_overhead(args, budget):
    nodes = args.nodes
    header(f"2. Scheduling overhead per node: {nodes} trivial independent nodes (1 root + "
           f"{nodes - 1} children)")
    with fresh_experiment(TinyState) as exp:
        build_fan(exp, nodes)
        report, serial = timed_run(exp, dg.SerialExecutor(), budget)
        serial_compute = sum(report.durations.values())
    runs = {}
    for workers in (1, WORKERS, "profile") if args.profile else (1, WORKERS):
        with fresh_experiment(TinyState) as exp:
            executor = WarmProcessExecutor(workers=WORKERS if workers == "profile" else workers)
            warm_up_graph(exp)
            exp.run(executor=executor, progress=False)
            build_fan(exp, nodes)
            profile = cProfile.Profile() if workers == "profile" else None  # a separate, untimed run
            try:
                report, meter = timed_run(exp, executor, budget, profile)
            finally:
                executor.shutdown()
            runs[workers] = (meter, sum(report.durations.values()))
    over_serial = (serial.seconds - serial_compute) / nodes * 1e3
    print(f"SerialExecutor (baseline): {serial.seconds:.3f} s, recipes {serial_compute:.3f} s -> "
          f"{over_serial:.2f} ms/node overhead ({serial.seconds / nodes * 1e3:.2f} ms/node wall) "
          f"{others_note(serial.others)}")
    meter, compute = runs[1]
    over_one = (meter.seconds - compute) / nodes * 1e3
    print(f"ProcessExecutor(workers=1), warm: {meter.seconds:.3f} s, recipes {compute:.3f} s -> "
          f"{over_one:.2f} ms/node overhead, {over_one / over_serial:.1f}x the serial overhead "
          f"{others_note(meter.others)}")
    meter, compute = runs[WORKERS]
    literal = (meter.seconds - compute) / nodes * 1e3
    over_process = (meter.seconds - compute / WORKERS) / nodes * 1e3
    print(f"ProcessExecutor(workers={WORKERS}), warm: {meter.seconds:.3f} s, recipes {compute:.3f} s "
          f"(sum over the workers) -> (wall - recipes) / nodes = {literal:.2f} ms/node; counting the "
          f"recipes as run side by side, (wall - recipes / {WORKERS}) / nodes = {over_process:.2f} ms/node, "
          f"{over_process / over_serial:.1f}x the serial overhead; target <= {TARGET_OVERHEAD_MS} ms "
          f"{verdict(over_process <= TARGET_OVERHEAD_MS)} {others_note(meter.others)}")
    if profile:
        print_profile(profile, f"cProfile of the driver, {nodes} trivial nodes on ProcessExecutor")

    steps = 100
    header(f"2b. A {steps}-step chain: payload loads from disk")
    with fresh_experiment(TinyState) as exp:
        build_chain(exp, steps)
        executor = dg.SerialExecutor()
        _, serial_chain = timed_run(exp, executor, budget)
        serial_loads = executor.cache.loads
    with fresh_experiment(TinyState) as exp:
        executor = WarmProcessExecutor(workers=WORKERS)
        warm_up_graph(exp)
        exp.run(executor=executor, progress=False)
        loads_before = executor.payload_loads
        build_chain(exp, steps)
        try:
            _, process_chain = timed_run(exp, executor, budget)
        finally:
            executor.shutdown()
        loads = executor.payload_loads - loads_before
    print(f"SerialExecutor (baseline): {serial_loads} loads, {serial_chain.seconds / (steps + 1) * 1e3:.2f} "
          f"ms/step")
    print(f"ProcessExecutor (warm):    {loads} loads, {process_chain.seconds / (steps + 1) * 1e3:.2f} "
          f"ms/step ({process_chain.seconds / serial_chain.seconds:.2f}x serial); target <= "
          f"{TARGET_CHAIN_LOADS} load {verdict(loads <= TARGET_CHAIN_LOADS)}")
    return dict(over_serial=over_serial, over_process=over_process, chain_loads=loads)


def figure_ray(args, budget, epochs, process):
    header(f"3. RayExecutor(num_cpus=1) on a local 2-CPU Ray cluster vs ProcessExecutor, same "
           f"{BRANCHES} branches")
    try:
        import ray
    except ImportError:
        print("ray is not installed: skipped (pip install 'abgraph[ray]')")
        return None
    wait_until_quiet(budget)
    with Meter() as init:
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 1024 ** 2)
    try:
        cold = run_branches(lambda: dg.RayExecutor(num_cpus=1), epochs, budget)
        warm_runs = []
        for _ in range(args.attempts):  # re-measured while other processes are busy
            warm_runs.append(run_branches(lambda: dg.RayExecutor(num_cpus=1), epochs, budget))
            if warm_runs[-1]["others"] < QUIET:
                break
        warm = min(warm_runs, key=lambda r: r["seconds"])
    finally:
        ray.shutdown()
    same = cold["digests"] == warm["digests"] == process["digests"]
    print(f"ProcessExecutor (baseline): {process['t_cold']:.2f} s cold (start-up included), "
          f"{process['t_warm']:.2f} s warm")
    print(f"RayExecutor, first run on a fresh cluster: {cold['seconds']:.2f} s -> "
          f"{cold['seconds'] / process['t_cold']:.2f}x ProcessExecutor cold (ray.init took "
          f"{init.seconds:.2f} s more: {(cold['seconds'] + init.seconds) / process['t_cold']:.2f}x "
          f"with it) {others_note(cold)}")
    print(f"RayExecutor, later run (Ray workers warm; best of {len(warm_runs)}): {warm['seconds']:.2f} s -> "
          f"{warm['seconds'] / process['t_warm']:.2f}x ProcessExecutor warm {others_note(warm)}")
    print(f"  same node ids and payload digests as serial/process: {'yes' if same else 'NO'}")
    return dict(init=init.seconds, cold=cold["seconds"], warm=warm["seconds"])


def print_profile(profile, title, lines=18):
    stream = io.StringIO()
    stats = pstats.Stats(profile, stream=stream)
    stats.sort_stats("tottime").print_stats(lines)
    print(f"-- {title} (by own time)")
    print("\n".join(line[:160] for line in stream.getvalue().splitlines()[4:] if line.strip()))


def worker_start_profile():
    """Where a worker's start-up and exit go: the imports, and the interpreter's
    teardown after `import torch` (measured from outside the process)."""
    header("Worker start-up and exit, one bare process like a worker")
    code = ("import time; t = time.perf_counter(); import dill, torch; t1 = time.perf_counter(); "
            "import abgraph.store, abgraph.executors.task; t2 = time.perf_counter(); "
            "import torch._dynamo; t3 = time.perf_counter(); "
            "print(t1 - t, t2 - t1, t3 - t2, flush=True); import sys; sys.stdin.read()")
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    torch_s, abgraph_s, dynamo_s = map(float, process.stdout.readline().split())
    ready = time.perf_counter() - start
    exit_start = time.perf_counter()
    process.stdin.close()
    process.wait()
    exit_s = time.perf_counter() - exit_start
    print(f"process ready after {ready:.2f} s (import dill+torch {torch_s:.2f} s, abgraph store+task "
          f"{abgraph_s:.2f} s, torch._dynamo, which the first optimizer imports, {dynamo_s:.2f} s); exit after EOF {exit_s:.2f} s (interpreter teardown: its final "
          f"garbage collection over torch's objects)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="~0.5 s branches, one repeat, under 90 s")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile the driver on the trivial-node run; time a worker's start-up and exit")
    parser.add_argument("--no-ray", action="store_true", help="skip figure 3")
    parser.add_argument("--max-wait", type=float, default=None,
                        help="seconds in all to wait for other processes to go quiet "
                             "(default 180, 0 with --quick)")
    args = parser.parse_args(argv)
    args.branch_seconds = 0.5 if args.quick else 2.0
    args.attempts = 1 if args.quick else 4
    args.nodes = 300
    budget = {"seconds": args.max_wait if args.max_wait is not None else (0 if args.quick else 180),
              "waited": 0.0}
    started = time.perf_counter()
    print(f"abgraph executor benchmarks ({'quick' if args.quick else 'full'}): python "
          f"{sys.version.split()[0]}, torch {torch.__version__}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f}")
    speed = figure_speedup(args, budget)
    overhead = figure_overhead(args, budget)
    ray_figures = None if args.no_ray else figure_ray(args, budget, speed["epochs"], speed)
    if args.profile:
        worker_start_profile()
    header("Summary")
    print(f"speed-up, start-up included:  {speed['t_serial'] / speed['t_cold']:.2f}x "
          f"{verdict(speed['t_serial'] / speed['t_cold'] >= TARGET_SPEEDUP)}")
    print(f"speed-up, workers running:    {speed['t_serial'] / speed['t_warm']:.2f}x "
          f"{verdict(speed['t_serial'] / speed['t_warm'] >= TARGET_SPEEDUP)}")
    print(f"overhead per node:            {overhead['over_process']:.2f} ms "
          f"{verdict(overhead['over_process'] <= TARGET_OVERHEAD_MS)}")
    print(f"100-step chain payload loads: {overhead['chain_loads']} "
          f"{verdict(overhead['chain_loads'] <= TARGET_CHAIN_LOADS)}")
    if ray_figures:
        print(f"Ray / Process (cold, warm):   {ray_figures['cold'] / speed['t_cold']:.2f}x, "
              f"{ray_figures['warm'] / speed['t_warm']:.2f}x (no target)")
    print(f"total {time.perf_counter() - started:.0f} s (of which {budget['waited']:.0f} s waiting for "
          f"other processes to go quiet)")
    missed = [speed["t_serial"] / speed["t_cold"] < TARGET_SPEEDUP,
              speed["t_serial"] / speed["t_warm"] < TARGET_SPEEDUP,
              overhead["over_process"] > TARGET_OVERHEAD_MS, overhead["chain_loads"] > TARGET_CHAIN_LOADS]
    return 1 if any(missed) else 0


if __name__ == "__main__":
    sys.exit(main())
