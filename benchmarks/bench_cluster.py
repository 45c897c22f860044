#!/usr/bin/env python
"""Cluster benchmarks for abgraph (issue 17, "Measure").

    python benchmarks/bench_cluster.py            # the figures in README.md
    python benchmarks/bench_cluster.py --quick    # fewer nodes, for a smoke run

1. 200 short nodes (50 ms each, independent) on a three-node local Ray cluster
   started with `ray start` (a head without CPUs and two 1-CPU workers, see
   tests/ray_cluster.py) against `ProcessExecutor(workers=2)`, the same CPUs,
   in this process (target: Ray at most 1.5x the time);
2. the per-node cost of blobs on S3 (moto's server on localhost) against blobs
   in the experiment's folder, each node storing a fresh 2 MiB tensor, with
   `SerialExecutor` so only the store differs (a ratio; no target).

Every figure is a ratio against a baseline measured in this process; the
machine may be shared, so each timing prints the CPU other processes used.
The exit status is 1 when a target is missed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

import abgraph as dg
from machine_load import Meter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ray_cluster import LocalCluster  # noqa: E402
from s3_server import BUCKET, start_s3_server  # noqa: E402

TARGET_RAY_RATIO = 1.5
BLOB_BYTES = 2 * 1024 * 1024


class Empty(dg.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, name):
        self.weights = torch.zeros(1)


class Sleep(dg.Recipe):
    """A short node: 50 ms of waiting (I/O, a remote call...)."""
    PROPERTIES = ["index", "seconds"]

    def run(self, state):
        time.sleep(self.seconds)
        return state


class Fill(dg.Recipe):
    """Store a fresh tensor of `size` bytes (no blob is shared with another node)."""
    PROPERTIES = ["index", "size"]

    def run(self, state):
        state.weights = torch.full((self.size // 4,), float(self.index))
        return state


def timed(label, run):
    with Meter() as meter:
        run()
    print(f"  {label:<44} {meter.seconds:7.2f} s   (others used {meter.others:.2f} cores)")
    return meter.seconds


def short_nodes(directory, executor, nodes):
    exp = dg.Experiment(directory, state_class=Empty)
    root = exp.spawn_new_tree(name="bench")
    for index in range(nodes):
        Sleep(index=index, seconds=0.05)(root)
    report = exp.run(executor=executor)
    assert report.ok and len(report.executed) == nodes + 1, report


def filled_nodes(directory, nodes, objects=None):
    exp = dg.Experiment(directory, state_class=Empty, objects=objects)
    root = exp.spawn_new_tree(name="bench")
    for index in range(nodes):
        Fill(index=index, size=BLOB_BYTES)(root)
    report = exp.run(executor=dg.SerialExecutor())
    assert report.ok and len(report.executed) == nodes + 1, report


def bench_ray(tmp, nodes, rounds) -> bool:
    print(f"1. {nodes} nodes of 50 ms: Ray (head + 2 one-CPU workers) vs ProcessExecutor(workers=2)")
    cluster = LocalCluster()
    try:
        cluster.add_worker("w0")
        cluster.add_worker("w1")
        # the baseline first: a process connected to Ray forks no workers (Ray's threads)
        process = [timed("ProcessExecutor(workers=2)", lambda: short_nodes(
            tmp / f"process{round}", dg.ProcessExecutor(workers=2), nodes)) for round in range(rounds)]
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.env["RAY_AUTH_TOKEN"])
        import ray
        # connect once, as a session does (a RayExecutor that connected would disconnect
        # after its run, and Ray ends a job's workers when it disconnects)
        ray.init(address=cluster.address, log_to_driver=False)
        executor = dg.RayExecutor()
        short_nodes(tmp / "warm-ray", executor, 4)  # start the cluster's workers
        ray_time = [timed("RayExecutor on the 3-node cluster", lambda: short_nodes(
            tmp / f"ray{round}", executor, nodes)) for round in range(rounds)]
        ray.shutdown()
        process, ray_time = min(process), min(ray_time)
    finally:
        cluster.stop()
    ratio = ray_time / process
    ideal = nodes * 0.05 / 2
    print(f"  best: Process {process:.2f} s, Ray {ray_time:.2f} s; Ray / Process = {ratio:.2f}x (target <= {TARGET_RAY_RATIO}x: "
          f"{'PASS' if ratio <= TARGET_RAY_RATIO else 'FAIL'}); ideal {ideal:.1f} s of sleep per CPU")
    return ratio <= TARGET_RAY_RATIO


def bench_s3(tmp, nodes, rounds) -> None:
    print(f"2. per-node cost of a 2 MiB blob: S3 (moto on localhost) vs the experiment's folder, {nodes} nodes")
    server, environment = start_s3_server(check_credentials=False)
    try:
        os.environ.update(environment)
        local, remote = [], []
        for round in range(rounds):  # alternating, best of each
            local.append(timed("blobs in the folder", lambda: filled_nodes(tmp / f"local{round}", nodes)))
            remote.append(timed("blobs on S3", lambda: filled_nodes(
                tmp / f"s3{round}", nodes, f"s3://{BUCKET}/bench{round}")))
        local, remote = min(local), min(remote)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"  per node: folder {1000 * local / nodes:.1f} ms, S3 {1000 * remote / nodes:.1f} ms; "
          f"S3 / folder = {remote / local:.2f}x (no target)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer nodes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="abgraph-bench-cluster-") as tmp:
        ok = bench_ray(Path(tmp), 40 if args.quick else 200, 1 if args.quick else 3)
        bench_s3(Path(tmp), 10 if args.quick else 40, 1 if args.quick else 3)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
