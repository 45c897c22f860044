"""Early stopping over sweep branches (issue 15): `sweep.halving` builds rungs,
the run stops the losers (status `stopped`), a re-run applies the stored rule
without recomputing, and `run(early_stopping=False)` resumes stopped branches
from their last stored rung."""
from __future__ import annotations

import sqlite3
import warnings

import pytest
import torch

import abgraph as ab
from abgraph import sweep
from conftest import run_cli
from test_process_executor import run_script, write_script

SCRIPT = '''
from abgraph.sweep import grid, halving


class Fit(ab.Recipe):
    """Moves a scalar towards 1 at rate lr for `epochs`; counts the epochs it trained."""
    PROPERTIES = ["lr", "epochs"]

    def run(self, state):
        for _ in range(self.epochs):
            state.data = state.data + self.lr * (1 - state.data)
        state.epochs = state.epochs + self.epochs
        return state


class Scalar(ab.ExperimentState):
    PROPERTIES = ["start"]
    NONHASHED_ATTRIBUTES = ["data", "epochs"]

    def initialize_state(self, start):
        self.data, self.epochs = torch.tensor(float(start)), 0


@ab.function
def closeness(state):
    return {"error": abs(1 - state.data.item()), "epochs": state.epochs}


exp = ab.Experiment(sys.argv[1], state_class=Scalar)
root = exp.spawn_new_tree(start=0)
trials = grid(Fit, lr=[0.01, 0.3, 0.02, 0.1, 0.05, 0.2], epochs=1)
leaves = halving(root, trials, evaluate=closeness, rungs=[1, 2, 4], keep=1 / 3, metric="error",
                 direction="min")
mode = sys.argv[2]
report = exp.run(early_stopping=mode != "resume")
finish(report, leaves=[leaf.id for leaf in leaves], total=len(exp._nodes), stopped=report.stopped)
'''


@pytest.fixture(scope="module")
def halving_runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("halving")
    script = write_script(tmp_path, SCRIPT)
    directory = tmp_path / "exp"
    runs = {mode: run_script(tmp_path, script, directory, mode)[0] for mode in ("first", "again")}
    after_two = ab.Experiment.restore(directory).graph
    statuses = {node.id: node.status for node in after_two.nodes}
    frame, cli, verify = after_two.to_dataframe(), run_cli("ls", directory), run_cli("verify", directory)
    drawing = after_two.draw(tmp_path / "graph", format="svg")
    db = sqlite3.connect(directory / "abgraph.sqlite")
    reasons = [row[0] for row in db.execute("SELECT error FROM nodes WHERE status='stopped'")]
    db.close()
    runs["resume"] = run_script(tmp_path, script, directory, "resume")[0]
    return dict(runs=runs, directory=directory, statuses=statuses, frame=frame, ls=cli.stdout,
                svg=open(drawing).read(), reasons=reasons, verify=verify)


def test_halving_runs_all_first_rungs_and_keeps_the_best_third(halving_runs):
    first = halving_runs["runs"]["first"]
    # root + 6 first rungs + 2 second rungs + 1 third rung; stopped: 4 x 2 + 1
    assert len(first["executed"]) == 10 and len(first["stopped"]) == 9, first["text"]
    assert first["ok"] and not first["failed"] and "9 stopped" in first["text"]
    statuses = halving_runs["statuses"]
    leaves = first["leaves"]
    best = leaves[1]  # lr 0.3 gets closest to 1
    assert statuses[best] == "done"
    assert [statuses[leaf] for leaf in leaves].count("done") == 1


def test_a_rerun_applies_the_stored_decisions_without_running_anything(halving_runs):
    again = halving_runs["runs"]["again"]
    assert again["executed"] == [] and len(again["cached"]) == 10 and len(again["stopped"]) == 9


def test_stopped_is_shown_by_ls_dataframe_and_draw(halving_runs):
    assert halving_runs["ls"].count(" stopped ") == 9
    frame = halving_runs["frame"]
    assert (frame["status"] == "stopped").sum() == 9
    stopped = frame[frame["status"] == "stopped"]
    assert stopped["tags"].map(lambda tags: "rung:2" in tags or "rung:3" in tags).all()
    assert "dotted" in halving_runs["svg"] or 'stroke-dasharray="1,5"' in halving_runs["svg"]


def test_an_experiment_with_stopped_nodes_verifies_clean(halving_runs):
    assert halving_runs["verify"].returncode == 0, halving_runs["verify"].stdout


def test_the_reason_is_stored_on_each_stopped_node(halving_runs):
    reasons = halving_runs["reasons"]
    assert len(reasons) == 9 and all(r.startswith("stopped by halving after rung") for r in reasons)
    assert any("is not among the best 2 of 6" in r for r in reasons)


def test_without_the_rule_stopped_branches_resume_from_their_last_rung(halving_runs):
    resume = halving_runs["runs"]["resume"]
    assert resume["ok"] and not resume["stopped"]
    assert sorted(resume["executed"]) == sorted(n for n, s in halving_runs["statuses"].items()
                                                if s == "stopped")
    assert len(resume["cached"]) == 10  # nothing that was done is recomputed
    graph = ab.Experiment.restore(halving_runs["directory"]).graph
    epochs = [graph.node(leaf).results["closeness"]["epochs"] for leaf in resume["leaves"]]
    assert epochs == [4] * 6  # every trial reached the full budget through its own rungs


def test_halving_checks_its_arguments_when_the_graph_is_built(tmp_path):
    exp = ab.Experiment(tmp_path, state_class=ab.TorchState)
    root = exp.spawn_new_tree(model_fn=torch.nn.Identity, data_fn=tuple, seed=0)
    trials = sweep.grid(ab.Train, lr=[0.1, 0.01], epochs=5)
    evaluate = ab.Evaluate(metrics=("accuracy",))
    good = dict(evaluate=evaluate, rungs=[1, 3], metric="accuracy")
    with pytest.raises(ValueError, match="rungs must be increasing"):
        sweep.halving(root, trials, **dict(good, rungs=[3, 1]))
    with pytest.raises(ValueError, match="keep must be a fraction"):
        sweep.halving(root, trials, keep=2, **good)
    with pytest.raises(ValueError, match="direction must be 'max' or 'min'"):
        sweep.halving(root, trials, direction="maximize", **good)
    with pytest.raises(ValueError, match="unknown parameter 'steps' for Train; PROPERTIES: "):
        sweep.halving(root, trials, budget="steps", **good)
    with pytest.raises(TypeError, match="evaluate must be a recipe"):
        sweep.halving(root, trials, **dict(good, evaluate="accuracy"))
    assert not exp._nodes.keys() - {root.id}, "a refused sweep added nodes"
    leaves = sweep.median_stopping(root, trials, **good)
    assert len(leaves) == 2 and len(exp._nodes) == 1 + 2 * 2 * 2
    epochs = sorted(node.recipe.epochs for node in exp._nodes.values() if type(node.recipe) is ab.Train)
    assert epochs == [1, 1, 2, 2]


def test_from_root_trains_each_rung_from_the_root_so_the_last_is_the_full_grids_node(tmp_path):
    exp = ab.Experiment(tmp_path, state_class=ab.TorchState)
    root = exp.spawn_new_tree(model_fn=torch.nn.Identity, data_fn=tuple, seed=0)
    trials = sweep.grid(ab.Train, lr=[0.1, 0.01], epochs=5)
    leaves = sweep.halving(root, trials, evaluate=ab.Evaluate(metrics=("accuracy",)), rungs=[1, 5],
                           metric="accuracy", from_root=True)
    trains = [node for node in exp._nodes.values() if type(node.recipe) is ab.Train]
    assert all(node.parents == [root.id] for node in trains)
    assert sorted(node.recipe.epochs for node in trains) == [1, 1, 5, 5]
    full = [ab.Evaluate(metrics=("accuracy",))(train(root)) for _, train in trials]
    assert [leaf.id for leaf in leaves] == [f.id for f in full]  # the full grid's own nodes


def two_blobs():
    """300 points in two Gaussian blobs, for training and evaluation."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=generator)
    y = (torch.arange(300) % 2).long()
    data = torch.utils.data.TensorDataset(x + y[:, None].float(), y)
    return data, data


def small_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_chained_rungs_of_train_end_with_the_full_grids_model(tmp_path):
    exp = ab.Experiment(tmp_path, state_class=ab.TorchState)
    root = exp.spawn_new_tree(model_fn=small_mlp, data_fn=two_blobs, seed=0)
    trials = sweep.grid(ab.Train, lr=[0.001, 0.01], optimizer="adam", epochs=4, batch_size=32)
    leaves = sweep.halving(root, trials, evaluate=ab.Evaluate(metrics=("accuracy",)), rungs=[1, 4], keep=1 / 2,
                           metric="accuracy")
    full = [train(root) for _, train in trials]
    report = exp.run(executor=ab.SerialExecutor(), progress=False)
    assert report.ok and len(report.stopped) == 2, str(report)
    graph = exp.graph
    survivor = next(i for i, leaf in enumerate(leaves) if graph.node(leaf.id).status == "done")
    last_rung = graph.node(graph.node(leaves[survivor].id).parent.id)
    assert last_rung.metrics["total_epochs"] == 4
    chained = last_rung.restore().model.state_dict()
    whole = graph.node(full[survivor].id).restore().model.state_dict()
    assert all(torch.equal(chained[name], whole[name]) for name in whole)


class PlainState(ab.ExperimentState):
    PROPERTIES = ["seed"]
    NONHASHED_ATTRIBUTES = ["model", "train_data", "eval_data"]


def test_halving_warns_when_its_train_rungs_cannot_continue_one_run(tmp_path):
    trials = sweep.grid(ab.Train, lr=[0.1, 0.01], epochs=5)
    good = dict(evaluate=ab.Evaluate(metrics=("accuracy",)), rungs=[1, 3], metric="accuracy")
    plain = ab.Experiment(tmp_path / "plain", state_class=PlainState).spawn_new_tree(seed=0)
    with pytest.warns(UserWarning, match="PlainState.NONHASHED_ATTRIBUTES has no 'train_resume'"):
        sweep.halving(plain, trials, **good)
    torch_root = ab.Experiment(tmp_path / "torch", state_class=ab.TorchState).spawn_new_tree(
        model_fn=small_mlp, data_fn=two_blobs, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sweep.halving(torch_root, trials, **good)
        sweep.halving(plain, trials, from_root=True, **good)
