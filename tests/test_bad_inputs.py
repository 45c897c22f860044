"""Bad inputs get a clear error at the earliest point (graph building beats run
time) or the correct behaviour; nothing passes silently."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import abgraph
from abgraph.identity import UnsupportedValue
from test_crafted_folders import SCRIPT_HEAD, Scale, Weights


def experiment(tmp_path, name="exp"):
    return abgraph.Experiment(tmp_path / name, state_class=Weights)


def test_a_recursive_property_is_refused_when_the_graph_is_built(tmp_path):
    looped = [1]
    looped.append(looped)
    nested = {"a": {}}
    nested["a"]["back"] = nested
    for value in (looped, nested):
        with pytest.raises(UnsupportedValue, match="contains itself"):
            experiment(tmp_path).spawn_new_tree(width=value)
    shared = [1, 2]
    experiment(tmp_path).spawn_new_tree(width=[shared, shared])  # the same list twice is no loop


def test_properties_given_as_a_string_are_refused_where_the_class_is_written(tmp_path):
    class Seeded(abgraph.ExperimentState):
        PROPERTIES = "seed"

    with pytest.raises(TypeError, match=r"Seeded.PROPERTIES must be a list.*PROPERTIES = \['seed'\]"):
        abgraph.Experiment(tmp_path / "exp", state_class=Seeded)
    with pytest.raises(TypeError, match=r"Amount.PROPERTIES must be a list.*\['amount'\]"):
        type("Amount", (abgraph.Recipe,), {"PROPERTIES": "amount"})
    with pytest.raises(TypeError, match=r"NONHASHED_ATTRIBUTES must be a list"):
        abgraph.Experiment(tmp_path / "exp2", state_class=type(
            "Model", (abgraph.ExperimentState,), {"NONHASHED_ATTRIBUTES": "model"}))


def test_a_recipe_property_may_not_hide_what_every_recipe_has():
    for name in ("run", "check", "PROPERTIES", "type_name"):
        with pytest.raises(TypeError, match=f"names {name!r}, which every recipe already has"):
            type("Clash", (abgraph.Recipe,), {"PROPERTIES": [name]})


def test_workers_must_be_a_count_not_a_flag():
    for bad in (True, False, 0, -1, 2.0, "4"):
        with pytest.raises(ValueError, match="workers must be a positive int"):
            abgraph.ProcessExecutor(workers=bad)


def test_numpy_scalars_are_the_numbers_they_hold(tmp_path):
    def root(value):
        return experiment(tmp_path).spawn_new_tree(width=value).id
    assert root(np.float32(0.5)) == root(0.5) == root(np.float64(0.5))
    assert root(np.int64(3)) == root(3) and root(np.bool_(True)) == root(True)
    assert root(np.float32(0.1)) != root(0.1)  # 0.1 has no float32: another value, another node
    assert root(np.array([0.5])) != root(0.5)


def test_a_tag_is_printable_text_checked_when_given(tmp_path):
    exp = experiment(tmp_path)
    for bad in ("lone\ud800surrogate", "escape\x1b[31m", "form\x0cfeed", "new\nline"):
        with pytest.raises(ValueError, match="printable text"):
            with exp.tag(bad):
                pass
    with exp.tag("lr:0.1", "ünïcode ✓"):
        exp.spawn_new_tree(width=2)
    assert exp.run(executor=abgraph.SerialExecutor()).ok


def test_an_experiment_is_a_folder_not_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        experiment(tmp_path, "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_this_machine_lacks_is_refused_before_any_worker_starts(tmp_path):
    exp = experiment(tmp_path)
    exp.spawn_new_tree(width=2)
    for executor in (abgraph.ProcessExecutor(devices=["cuda:0"]), abgraph.SerialExecutor(device="cuda:1")):
        with pytest.raises(ValueError, match="is not on this machine: it has 0 CUDA device"):
            exp.run(executor=executor)
    assert all(w.process is None for w in abgraph.ProcessExecutor(devices=["cuda:0"]).workers)
    assert exp.run(executor=abgraph.SerialExecutor()).ok


RECIPES_GONE_WRONG = SCRIPT_HEAD + textwrap.dedent(r'''

    class BuildsItsOwn(abgraph.Recipe):
        def run(self, state):
            fresh = Weights()
            fresh.weights = state.weights + 1
            return fresh

    class SetsAnUndeclaredAttribute(abgraph.Recipe):
        def run(self, state):
            state.optimizer_state = {"lr": 0.1}
            return state

    class Exits(abgraph.Recipe):
        def run(self, state):
            sys.exit(0)

    class Fine(abgraph.Recipe):
        def run(self, state):
            state.weights = state.weights + 2
            return state

    exp = abgraph.Experiment(sys.argv[1], state_class=Weights)
    root = exp.spawn_new_tree(width=3)
    nodes = {name: cls()(root) for name, cls in
             [("own", BuildsItsOwn), ("undeclared", SetsAnUndeclaredAttribute), ("exits", Exits), ("fine", Fine)]}
    report = exp.run(executor=abgraph.SerialExecutor() if sys.argv[2] == "serial" else None,
                     raise_on_failure=False)
    print("RESULT " + json.dumps({"failed": report.failed, "executed": report.executed,
                                  "errors": report.errors, "ids": {k: p.id for k, p in nodes.items()}}))
''')


@pytest.mark.parametrize("executor", ["serial", "default"])
def test_recipes_gone_wrong_fail_their_node_clearly_and_the_rest_runs(tmp_path, executor):
    script = tmp_path / "study.py"
    script.write_text(RECIPES_GONE_WRONG)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "exp"), executor],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr  # sys.exit(0) in a recipe ends no script
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    ids = result["ids"]
    assert sorted(result["failed"]) == sorted(ids[n] for n in ("own", "undeclared", "exits"))
    assert ids["fine"] in result["executed"]
    errors = result["errors"]
    assert "BuildsItsOwn.run returned a Weights it built itself" in errors[ids["own"]]
    assert "'optimizer_state', which is not in NONHASHED_ATTRIBUTES" in errors[ids["undeclared"]]
    assert "SystemExit" in errors[ids["exits"]] and "sys.exit(0)" in errors[ids["exits"]]
    stored = abgraph.Experiment.restore(tmp_path / "exp")
    assert stored.graph.node(ids["fine"]).restore().weights.tolist() == [2.0, 2.0, 2.0]


ALIAS = {}


class Keep(abgraph.Recipe):
    def run(self, state):
        state.weights = state.weights + 2
        ALIAS["weights"] = state.weights  # a global alias of what is stored for this node
        return state


class Meddle(abgraph.Recipe):
    def run(self, state):
        ALIAS["weights"].add_(8)  # mutates the parent's tensor, not this state's
        state.weights = state.weights * 1
        return state


def test_a_parent_mutated_through_a_global_alias_does_not_leak_into_a_sibling(tmp_path):
    exp = experiment(tmp_path)
    kept = Keep()(exp.spawn_new_tree(width=1))
    Meddle()(kept)
    sibling = Scale(factor=1.0)(kept)
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    assert exp.graph.node(kept.id).restore().weights.tolist() == [2.0]
    assert exp.graph.node(sibling.id).restore().weights.tolist() == [2.0]
