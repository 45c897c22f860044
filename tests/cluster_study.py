"""A user's study script for the cluster and S3 tests: `branches` independent
chains of two `Work` nodes; each Work node leaves a marker file named after its
node id holding its pid (so a test knows what runs where), sleeps, and stores a
`size`-byte tensor.

    python study.py DIRECTORY '{"executor": "ray", "retries": 0, ...}'
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = r'''
import json, os, sys, time
from pathlib import Path

import torch
import abgraph


class State(abgraph.ExperimentState):
    PROPERTIES = ["branch"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, branch):
        self.weights = torch.full((4,), float(branch))


class Work(abgraph.Recipe):
    PROPERTIES = ["step", "seconds", "size", "markers"]

    def run(self, state):
        marker = Path(self.markers) / f"{os.getpid()}-{time.time_ns()}"
        marker.write_text(str(os.getpid()))
        time.sleep(self.seconds)
        state.weights = torch.full((self.size // 4,), float(self.step)) + state.weights[0]
        state.metrics["pid"] = os.getpid()
        return state


def main(directory, options):
    exp = abgraph.Experiment(directory, state_class=State, objects=options.get("objects"),
                             storage_options=options.get("storage_options"))
    for branch in range(options.get("branches", 4)):
        node = exp.spawn_new_tree(branch=branch)
        for step in range(2):
            node = Work(step=step, seconds=options.get("seconds", 0.5), size=options.get("size", 64),
                        markers=options["markers"])(node)
    if options["executor"] == "ray":
        executor = abgraph.RayExecutor(address=os.environ["RAY_ADDRESS"], retries=options.get("retries", 0),
                                       num_cpus=options.get("num_cpus", 1), num_gpus=options.get("num_gpus", 0))
    else:
        executor = abgraph.ProcessExecutor(workers=2)
    report = exp.run(executor=executor, raise_on_failure=False)  # the test reads the failures
    print("RESULT " + json.dumps({"executed": report.executed, "cached": report.cached,
                                  "failed": report.failed, "blocked": report.blocked,
                                  "errors": report.errors}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
'''


def start_study(tmp_path, directory, options: dict, env: dict) -> subprocess.Popen:
    """Start the study script in a fresh process; markers go to `tmp_path/markers`."""
    script = Path(tmp_path) / "study.py"
    script.write_text(SCRIPT)
    markers = Path(tmp_path) / "markers"
    markers.mkdir(exist_ok=True)
    options = dict(options, markers=str(markers))
    return subprocess.Popen([sys.executable, str(script), str(directory), json.dumps(options)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_study(process: subprocess.Popen, timeout=240) -> dict:
    stdout, stderr = process.communicate(timeout=timeout)
    found = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert found, f"no RESULT ({process.returncode}):\n{stdout}\n{stderr[-4000:]}"
    return json.loads(found[-1][len("RESULT "):])


def run_study(tmp_path, directory, options: dict, env: dict, timeout=240) -> dict:
    return finish_study(start_study(tmp_path, directory, options, env), timeout)
