"""Issue 3, items 2 and 5: building the graph and running it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import abgraph
from abgraph.store.maintenance import collect_garbage, verify
from conftest import BASE_NODES, copy_experiment, finish_script, start_script, write_script

FAILING = {"Boom": True}


class Boom(abgraph.Recipe):
    """Raises while FAILING says so (a transient failure)."""
    PROPERTIES = ["message"]

    def run(self, state):
        if FAILING["Boom"]:
            raise ValueError(self.message)
        state.metrics["survived"] = 1
        return state


class Merge(abgraph.Recipe):
    """Two inputs: average the weights of `state` and `other`."""
    PROPERTIES = ["weight"]

    def run(self, state, other):
        with torch.no_grad():
            for mine, theirs in zip(state.model.parameters(), other.model.parameters()):
                mine.mul_(1 - self.weight).add_(theirs, alpha=self.weight)
            for theirs in other.model.parameters():  # `other` is read-only: this must not leak
                theirs.zero_()
        other.eval_data = None
        return state


class WhereAmI(abgraph.Recipe):
    def run(self, state):
        state.metrics["device"] = str(abgraph.current_device())
        return state


@abgraph.function
def device_probe(state):
    return {"device": str(abgraph.current_device())}


@abgraph.function
def loss_probe(state):
    x, y = state.train_data
    with torch.no_grad():
        return {"loss": torch.nn.functional.cross_entropy(state.model(x), y).item()}


def serial():
    return abgraph.SerialExecutor()


@pytest.fixture
def failing():
    FAILING["Boom"] = True
    yield FAILING
    FAILING["Boom"] = True


def graph_of(directory, state_class=None):
    return abgraph.Experiment.restore(directory, state_class=state_class).graph


# -- re-running scripts (real subprocesses) ----------------------------------------

NEW_BRANCH = r'''
def extend(exp, nodes):
    with exp.tag("lr:0.2"):
        trained = Train(epochs=3, lr=0.2)(nodes["root"])
        accuracy(trained)
        nodes["train:0.2"] = trained
        nodes["prune:0.2"] = Prune(amount=0.5, layers={"fc1", "fc2"})(trained)
'''


@pytest.fixture(scope="module")
def reruns(study_run, tmp_path_factory):
    """On two copies of the finished study, side by side: the same script again, and
    the script with one more branch."""
    base = tmp_path_factory.mktemp("reruns")
    same, extended = (copy_experiment(study_run.directory, base / name) for name in ("same", "extended"))
    started = [start_script(study_run.script, same),
               start_script(write_script(base, NEW_BRANCH), extended)]
    same_result, extended_result = (finish_script(p) for p in started)
    return SimpleNamespace(same=same_result, extended=extended_result, extended_dir=extended)


def test_rerunning_a_finished_script_executes_nothing(study_run, reruns):
    result = reruns.same
    assert result["ids"] == study_run.ids
    assert result["executed"] == [] and result["failed"] == [] and result["blocked"] == []
    assert sorted(result["cached"]) == sorted(study_run.ids.values())
    assert result["calls"] == {}  # no recipe, no probe ran


def test_adding_a_branch_executes_only_that_branch(study_run, reruns):
    result = reruns.extended
    assert {k: result["ids"][k] for k in BASE_NODES} == study_run.ids
    assert result["executed"] == [result["ids"]["train:0.2"], result["ids"]["prune:0.2"]]
    assert sorted(result["cached"]) == sorted(study_run.ids.values())
    assert result["calls"] == {"Train": 1, "Prune": 1, "accuracy": 1}
    graph = graph_of(reruns.extended_dir)
    assert len(graph) == 7
    new = graph.node(result["ids"]["prune:0.2"])
    assert new.parent.id == result["ids"]["train:0.2"] and new.parent.parent.id == study_run.ids["root"]


# -- in-process runs ---------------------------------------------------------------

def test_run_report_and_graph_after_a_clean_run(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    report = exp.run(executor=serial())
    assert isinstance(report, abgraph.RunReport)
    assert report.ok
    assert report.executed == [nodes[name].id for name in BASE_NODES]  # topological order
    assert report.cached == [] and report.failed == [] and report.blocked == []
    assert set(report.durations) == set(report.executed)
    assert all(d > 0 for d in report.durations.values())
    assert "5 executed" in str(report)
    assert len(exp.graph) == 5  # refreshed after run()
    again = exp.run(executor=serial())
    assert again.executed == [] and sorted(again.cached) == sorted(report.executed)


def test_the_progress_line_ends_at_its_total_when_nodes_are_blocked(study, tmp_path, failing, capsys):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    boom = Boom(message="exploded on purpose")(root)
    study.Prune(amount=0.5)(study.Prune(amount=0.2)(boom))
    exp.run(executor=serial(), progress=True, raise_on_failure=False)
    last = capsys.readouterr().err.split("\r")[-1]
    assert "abgraph [4/4] done 1 cached 0 failed 1 skipped 2" in last, last


def test_a_failing_recipe_blocks_only_its_descendants(study, tmp_path, failing):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    with exp.tag("doomed"):
        trained = study.Train(epochs=2, lr=0.1)(root)
        boom = Boom(message="exploded on purpose")(trained)
        after = study.Prune(amount=0.5)(boom)
        after_after = study.Train(epochs=1, lr=0.1)(after)
    other = study.Train(epochs=2, lr=0.3)(root)
    other_pruned = study.Prune(amount=0.5)(other)
    study.accuracy(other_pruned)

    with pytest.raises(abgraph.RunFailed) as raised:   # after every other branch ran and was stored
        exp.run(executor=serial())
    report = raised.value.report
    assert not report.ok
    assert report.failed == [boom.id]
    assert sorted(report.blocked) == sorted([after.id, after_after.id])
    assert sorted(report.executed) == sorted([root.id, trained.id, other.id, other_pruned.id])
    assert "ValueError: exploded on purpose" in report.errors[boom.id]
    assert boom.id in report.durations
    assert "1 failed" in str(report) and "2 blocked" in str(report)
    assert "exploded on purpose" in str(report)

    graph = graph_of(tmp_path, study.State)
    failed = graph.node(boom.id)
    assert failed.status == "failed"
    assert failed.error.startswith("Traceback")
    assert "raise ValueError(self.message)" in failed.error  # the user's line
    for blocked_id in (after.id, after_after.id):
        assert graph.node(blocked_id).status == "blocked"
        assert boom.id in graph.node(blocked_id).error
    assert graph.node(other_pruned.id).status == "done"
    assert graph.node(other_pruned.id).results["accuracy"]["n"] == 32
    with graph.node(trained.id).lazy_load() as node:  # finished work before the failure is kept
        assert isinstance(node.model, torch.nn.Module)

    failing["Boom"] = False  # the failure was transient: the next run retries what is missing
    report = exp.run(executor=serial())
    assert report.ok
    assert report.executed == [boom.id, after.id, after_after.id]
    assert sorted(report.cached) == sorted([root.id, trained.id, other.id, other_pruned.id])
    assert graph_of(tmp_path).node(after_after.id).status == "done"


def test_raise_errors_propagates_after_storing_finished_work(study, tmp_path, failing):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    boom = Boom(message="for pdb")(root)
    with pytest.raises(ValueError, match="for pdb"):
        exp.run(executor=abgraph.SerialExecutor(raise_errors=True))
    graph = graph_of(tmp_path)
    assert graph.node(root.id).status == "done"
    assert graph.node(boom.id).status == "failed"


def test_a_recipe_with_two_inputs(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    a = study.Train(epochs=3, lr=0.05)(root)
    b = study.Train(epochs=3, lr=0.5)(root)
    merged = Merge(weight=0.5)(a, b)
    after_b = study.Prune(amount=0.5, layers=("fc1",))(b)  # runs after the merge, from b
    after_a = study.Prune(amount=0.5, layers=("fc1",))(a)
    assert len({merged.id, Merge(weight=0.5)(b, a).id}) == 2  # input order is identity
    report = exp.run(executor=serial())
    assert report.ok, report

    graph = graph_of(tmp_path, study.State)
    node = graph.node(merged.id)
    assert [p.id for p in node.parents] == [a.id, b.id]
    assert node.parent.id == a.id
    assert graph.depth(merged.id) == 2
    assert set(graph.nx.predecessors(merged.id)) == {a.id, b.id}
    assert merged.id in graph.node(b.id).children.ids and merged.id in graph.node(a.id).children.ids
    restored = {n: graph.node(i).restore() for n, i in
                [("a", a.id), ("b", b.id), ("m", merged.id), ("after_b", after_b.id), ("after_a", after_a.id)]}
    for name in ("fc1", "fc2"):
        expected = 0.5 * getattr(restored["a"].model, name).weight + 0.5 * getattr(restored["b"].model, name).weight
        assert torch.allclose(getattr(restored["m"].model, name).weight, expected)
    # neither input was changed for anyone else
    assert torch.equal(restored["after_b"].model.fc2.weight, restored["b"].model.fc2.weight)
    assert torch.equal(restored["after_a"].model.fc2.weight, restored["a"].model.fc2.weight)
    assert restored["b"].model.fc2.weight.abs().sum() > 0 and restored["b"].eval_data is not None


def test_a_function_result_is_stored_under_its_name_and_makes_no_node(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    exp.run(executor=serial())
    graph = graph_of(tmp_path)
    assert len(graph) == 5
    for name in BASE_NODES:
        results = graph.node(nodes[name].id).results
        if name == "root":
            assert results == {}
        else:
            assert set(results) == {"accuracy"}
            assert results["accuracy"]["n"] == 32 and 0 <= results["accuracy"]["accuracy"] <= 1


def test_a_new_probe_on_a_stored_node_runs_only_the_probe(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    exp.run(executor=serial())
    before = dict(study.CALLS)

    exp, nodes = study.build(tmp_path)
    loss_probe(nodes["train:0.5"])
    report = exp.run(executor=serial())
    assert report.executed == report.probed == [nodes["train:0.5"].id]
    assert str(report).startswith("1 executed (1 for its functions only), 4 cached")
    assert len(report.cached) == 4
    assert study.CALLS["Train"] == before["Train"] and study.CALLS["Prune"] == before["Prune"]
    node = graph_of(tmp_path).node(nodes["train:0.5"].id)
    assert set(node.results) == {"accuracy", "loss_probe"}
    assert node.results["loss_probe"]["loss"] > 0


def test_a_new_probe_does_not_rerun_the_stored_probes(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    exp.run(executor=serial())
    before = study.CALLS["accuracy"]
    exp, nodes = study.build(tmp_path)
    loss_probe(nodes["train:0.5"])
    exp.run(executor=serial())
    assert study.CALLS["accuracy"] == before


def test_adding_a_probe_keeps_the_node_metrics(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    exp.run(executor=serial())
    node_id = nodes["train:0.5"].id
    metrics = graph_of(tmp_path).node(node_id).metrics
    assert set(metrics) == {"loss", "device"}
    exp, nodes = study.build(tmp_path)
    loss_probe(nodes["train:0.5"])
    exp.run(executor=serial())
    assert graph_of(tmp_path).node(node_id).metrics == metrics


def test_gc_after_adding_a_probe_keeps_the_payload(study, tmp_path):
    exp, nodes = study.build(tmp_path)
    exp.run(executor=serial())
    exp, nodes = study.build(tmp_path)
    loss_probe(nodes["prune:0.5"])
    exp.run(executor=serial())
    assert verify(exp.index, exp.objects).orphans == []
    collect_garbage(tmp_path, exp.index, exp.objects, ".abgraph.lock")
    graph_of(tmp_path).node(nodes["prune:0.5"].id).restore()


def _score_v1():
    @abgraph.function
    def score(state):
        return {"version": 1}
    return score


def _score_v2():
    @abgraph.function
    def score(state):
        return {"version": 2}
    return score


def test_editing_a_probe_reruns_only_the_probe(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    trained = study.Train(epochs=1, lr=0.1)(root)
    _score_v1()(trained)
    exp.run(executor=serial())
    assert graph_of(tmp_path).node(trained.id).results["score"] == {"version": 1}
    trains = study.CALLS["Train"]

    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    trained = study.Train(epochs=1, lr=0.1)(root)
    _score_v2()(trained)
    report = exp.run(executor=serial())
    assert report.executed == [trained.id]
    assert study.CALLS["Train"] == trains
    assert graph_of(tmp_path).node(trained.id).results["score"] == {"version": 2}


def test_current_device_outside_and_inside_a_run(study, tmp_path):
    assert abgraph.current_device() == torch.device("cpu")
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    node = WhereAmI()(root)
    device_probe(node)
    assert exp.run(executor=abgraph.SerialExecutor(device="cpu")).ok
    assert abgraph.current_device() == torch.device("cpu")
    stored = graph_of(tmp_path).node(node.id)
    assert stored.metrics["device"] == "cpu"
    assert stored.results["device_probe"] == {"device": "cpu"}
    assert stored._ab_record.environment["device"] == "cpu"


def test_two_promises_with_one_id_are_one_node_with_merged_tags(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    with exp.tag("first"):
        one = study.Train(epochs=1, lr=0.1)(root)
    with exp.tag("second"):
        with exp.tag("inner"):
            two = study.Train(epochs=1, lr=0.1)(root)
    assert one == two and one.id == two.id
    assert one.tags == ["first", "second", "inner"]
    report = exp.run(executor=serial())
    assert len(report.executed) == 2
    graph = graph_of(tmp_path)
    assert len(graph) == 2
    assert sorted(graph.node(one.id).tags) == ["first", "inner", "second"]

    # a later run that builds the stored node under a new tag adds the tag, runs nothing
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    with exp.tag("third"):
        again = study.Train(epochs=1, lr=0.1)(root)
    report = exp.run(executor=serial())
    assert report.executed == [] and again.id == one.id
    assert sorted(graph_of(tmp_path).node(one.id).tags) == ["first", "inner", "second", "third"]


def test_tags_nest_and_end_with_their_block(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    with exp.tag("outer"):
        a = study.Train(epochs=1, lr=0.1)(root)
        with exp.tag("inner", "extra"):
            b = study.Prune(amount=0.1)(a)
        c = study.Prune(amount=0.2)(a)
    d = study.Prune(amount=0.3)(a)
    assert root.tags == []
    assert a.tags == ["outer"]
    assert b.tags == ["outer", "inner", "extra"]
    assert c.tags == ["outer"]
    assert d.tags == []
