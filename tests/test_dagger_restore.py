"""Come back weeks later and ask one more question: a restored experiment grows
in a fresh process, and recipes that keep their experiment (dagger's
SeededRecipe) run in worker processes and on Ray."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import records_by_id

# The user's definitions, the same in every script (classes live in __main__).
DEFINITIONS = textwrap.dedent('''
    import json
    import sys

    import torch
    from torch import nn
    import torch.nn.utils.prune as prune

    import abgraph as dg


    class State(dg.ExperimentState):
        PROPERTIES = ["seed", "width"]
        NONHASHED_ATTRIBUTES = ["model", "data"]

        def initialize_state(self, **arguments):
            torch.manual_seed(self.seed)
            self.model = nn.Sequential(nn.Linear(4, self.width), nn.ReLU(), nn.Linear(self.width, 2))
            self.data = torch.randn(32, 4, generator=torch.Generator().manual_seed(1))


    class SeededRecipe(dg.Recipe):
        """dagger's tutorial pattern: the recipe keeps its experiment and takes the root's seed."""

        def __call__(self, promise):
            self.experiment_object = promise.experiment_object
            if getattr(self, "seed", None) is None:
                self.seed = self.experiment_object.root.seed
            return super().__call__(promise)


    class Train(SeededRecipe):
        PROPERTIES = ["epochs", "seed"]

        def __init__(self, epochs, seed=None):
            self.epochs, self.seed = epochs, seed

        def run(self, state):
            torch.manual_seed(self.seed)
            optimizer = torch.optim.SGD(state.model.parameters(), lr=0.1)
            for _ in range(self.epochs):
                optimizer.zero_grad()
                state.model(state.data).pow(2).mean().backward()
                optimizer.step()
            state.metrics["root_seed_seen_in_worker"] = self.experiment_object.root.seed
            return state


    class Prune(dg.Recipe):
        PROPERTIES = ["amount"]

        def run(self, state):
            prune.l1_unstructured(state.model[0], "weight", amount=self.amount)
            return state
''')

BUILD = DEFINITIONS + textwrap.dedent('''
    executor = {"default": lambda: None,
                "ray": lambda: dg.RayExecutor(num_cpus=1, include_dashboard=False)}[sys.argv[2]]()
    exp = dg.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(seed=7, width=8)
    with exp.tag("trained"):
        trained = Train(epochs=2)(root)
    report = exp.run(executor=executor)
    print("RESULT " + json.dumps({"ok": report.ok, "errors": report.errors, "root": root.id,
                                  "trained": trained.id}))
''')

GROW = DEFINITIONS + textwrap.dedent('''
    import os
    exp = dg.Experiment.restore(sys.argv[1], state_class=State)
    assert exp.root.slim_loaded and exp.root.seed == 7 and exp.leaves == {}
    trained = exp.graph.nodes.filter("trained")[0]
    with exp.tag("weeks later"):
        longer = Train(epochs=4)(trained.to_promise())     # dagger's way
        pruned = Prune(amount=0.5)(trained)                # a stored node straight into a recipe
        Train(epochs=1)(pruned)
    leaves = sorted(exp.leaves)
    report = exp.run()                                     # the default executor: worker processes
    graph = exp.graph
    print("RESULT " + json.dumps({
        "ok": report.ok, "errors": report.errors, "executed": sorted(report.executed),
        "cached": report.cached, "leaves": leaves, "longer": longer.id, "pruned": pruned.id,
        "tagged": sorted(graph.nodes.filter("weeks later").ids),
        "seen": graph.node(longer.id).metrics["root_seed_seen_in_worker"], "pid": os.getpid()}))
''')


def run_script(tmp_path, name, body, *args, timeout=240) -> dict:
    script = tmp_path / name
    script.write_text(body)
    done = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout}\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout + done.stderr
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"], result["errors"]
    return result


def test_a_restored_experiment_grows_in_a_fresh_process(tmp_path):
    folder = tmp_path / "study"
    built = run_script(tmp_path, "build.py", BUILD, folder, "default")
    before = records_by_id(folder)
    grown = run_script(tmp_path, "grow.py", GROW, folder)
    new = set(grown["executed"])
    assert len(new) == 3 and built["trained"] not in new and built["root"] not in new
    assert grown["cached"] == [built["trained"]]       # only the node grown from was looked at
    assert set(grown["leaves"]) == new - {grown["pruned"]} and set(grown["tagged"]) == new
    assert grown["seen"] == 7
    after = records_by_id(folder)
    assert {i: r.payload for i, r in before.items()} == {i: after[i].payload for i in before}
    assert after[grown["longer"]].parents == [built["trained"]]
    assert after[grown["longer"]].environment["pid"] != grown["pid"]  # made by a worker process


def test_a_recipe_that_keeps_its_experiment_runs_on_ray(tmp_path):
    pytest.importorskip("ray")
    built = run_script(tmp_path, "build.py", BUILD, tmp_path / "study", "ray", timeout=300)
    record = records_by_id(tmp_path / "study")[built["trained"]]
    assert record.status == "done" and record.metrics["root_seed_seen_in_worker"] == 7
