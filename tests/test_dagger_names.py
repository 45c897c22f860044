"""dagger's names work on abgraph's own classes, with dagger's meaning."""
from __future__ import annotations

import pickle
from operator import add, mul

import pytest
import torch

import abgraph as dg


class Pair(dg.ExperimentState):
    PROPERTIES = ["a", "b"]
    NONHASHED_ATTRIBUTES = ["c", "model", "optimizer", "saved_on"]

    def initialize_state(self, scale=1, **ignored):
        self.model = torch.nn.Linear(2, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1 * scale)
        self.save_pre_hooks.append(self.before_saving)
        self.save_post_hooks += [self.attach_optimizer, lambda state: state.metrics.update(saved=True)]
        self.load_post_hooks.append(self.attach_optimizer)

    def before_saving(self):
        self.saved_on = "cpu"
        self.optimizer = None  # not worth storing: rebuilt after loading

    def attach_optimizer(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)


class Op(dg.Recipe):
    PROPERTIES = ["op", "x"]

    def __init__(self, op, x):
        self.op, self.x = op, x

    def run(self, state):
        state.c = self.op(state.a, self.x)
        return state


class ReturnsNothing(dg.Recipe):
    def run(self, state):
        return None


def test_a_state_made_by_hand(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    lone, kept = Pair(), Pair(experiment_object=exp)
    assert lone.a is None and lone.c is None and lone.parent is None and lone.parent_sha is None
    assert not lone.children and lone.recipe is None and not lone.from_cache and not lone.root_state
    assert lone.sha() == kept.sha() and kept.experiment_object is exp
    assert "experiment_object" not in kept.__getstate__()  # a pickled state leaves its experiment
    assert pickle.loads(pickle.dumps(kept)).experiment_object is None


def test_the_experiment_before_and_after_spawning(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    assert exp.root is None and exp.leaves == {} and exp.experiment_arguments is None
    with exp.tag(["phase:one", "first"]):
        assert exp.tags == ["phase:one", "first"]
        with exp.tag("inner"):
            assert exp.tags == ["phase:one", "first", "inner"]
    assert exp.tags == []
    with pytest.raises(KeyError, match="'b'"):
        exp.spawn_new_tree(a=1)
    root = exp.spawn_new_tree(a=1.5, b="x", scale=2)  # `scale` goes to initialize_state only
    assert type(root) is dg.ExperimentStatePromise and root.experiment_object is exp
    assert exp.experiment_arguments == {"a": 1.5, "b": "x", "scale": 2}
    assert exp.root.a == 1.5 and exp.root.c is None and not exp.root.slim_loaded  # computed here, loaded
    assert exp.root.optimizer.param_groups[0]["params"][0] is exp.root.model.weight  # re-attached
    assert exp.root.saved_on == "cpu" and exp.root is root.get()
    child = Op(mul, 2)(root)
    assert list(exp.leaves) == [child.id] and list(exp.nodes) == [root.id, child.id]


def test_exp_root_takes_a_state_made_by_hand(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    given = Pair(experiment_object=exp)
    given.a, given.b = 4.0, "h"
    exp.root = given  # spawned with its properties, built by initialize_state and stored now
    assert exp.root is given and Pair(experiment_object=exp).root is given
    assert given.id == given.sha() and given.model is not None and given.root_state
    assert exp.graph.node(given.id).status == "done"
    grown = Op(mul, 2)(given.to_promise())
    assert grown.get().restore().c == 8.0
    assert pickle.loads(pickle.dumps(exp)).root.id == given.id  # a worker's copy knows the root
    filled = Pair(experiment_object=exp)
    filled.a, filled.b, filled.c = 1.0, "h", 5
    with pytest.raises(ValueError, match="c would be lost"):
        exp.root = filled


def test_exp_root_picks_one_of_several_roots(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    first, second = exp.spawn_new_tree(a=1.0, b="p"), exp.spawn_new_tree(a=2.0, b="q")
    with pytest.raises(RuntimeError, match="2 roots; pick one with `exp.root = promise`"):
        exp.root
    exp.root = second
    assert exp.root.id == second.id and exp.root.a == 2.0
    with pytest.raises(ValueError, match="not a root"):
        exp.root = Op(mul, 2)(first)
    exp.run()
    restored = dg.Experiment.restore(tmp_path, state_class=Pair)
    with pytest.raises(RuntimeError, match="2 roots"):
        restored.root
    restored.root = restored.graph.node(first.id)
    assert restored.root.id == first.id and restored.root.slim_loaded


def test_get_runs_what_a_node_needs_in_this_process(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    root = exp.spawn_new_tree(a=10.0, b="y")
    product, other = Op(mul, 1.5)(root), Op(add, 1)(root)
    out = product.get()
    assert out.slim_loaded and out.restore().c == 15.0 and not out.slim_loaded
    assert not out.from_cache and out.metrics == {"saved": True}
    assert {n.id for n in exp.graph.nodes} == {root.id, product.id}  # `other` was not needed
    with pytest.raises(RuntimeError, match="ReturnsNothing.run returned NoneType"):
        ReturnsNothing()(root).get()
    again = dg.Experiment(tmp_path, state_class=Pair)
    stored = Op(mul, 1.5)(again.spawn_new_tree(a=10.0, b="y")).get()
    assert stored.from_cache and stored.id == product.id
    assert stored.parent.new_state(Op(add, 1)).restore().c == 11.0


def test_the_graph_under_dagger_names(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    root = exp.spawn_new_tree(a=1.0, b="z")
    with exp.tag("ops"):
        first = Op(mul, 3)(root)
        second = Op(add, 1)(first)
    other = Op(add, 5)(root)
    assert exp.run().ok
    exp = dg.Experiment.restore(tmp_path, state_class=Pair)
    graph = exp.graph
    assert exp.root.id == graph.root.id == root.id and exp.root.slim_loaded  # restored: slim
    assert set(graph.node_map) == {root.id, first.id, second.id, other.id}
    assert graph.edge_map == {root.id: {first.id, other.id}, first.id: {second.id}, second.id: set(),
                              other.id: set()}
    assert graph.toposort == {0: {root.id}, 1: {first.id, other.id}, 2: {second.id}}
    assert set(graph.nodes_at_distance(1).ids) == {first.id, other.id}
    node = graph.node(second.id)
    assert node.parent_sha == first.id and node.root.id == root.id and node.sha() == second.id
    assert graph.node(root.id).root_state and not node.root_state
    assert node.tags == ["ops"] and len(graph.nodes.filter("ops") | graph.nodes.filter("!ops")) == 4
    with pytest.raises(TypeError, match="NodeSet"):
        graph.nodes.filter("ops") | "hi"
    with pytest.raises(TypeError, match="NodeSet"):
        graph.nodes & "ops"
    assert "digraph" in graph.to_graphviz().source
    with pytest.raises(TypeError, match="state_class=Pair"):  # growing needs the class, not a generic state
        Op(mul, 2)(dg.Experiment.restore(tmp_path).graph.node(first.id))
    drawn = graph.draw(tmp_path / "graph", format="png", view=False)
    assert drawn.endswith("graph.png") and (tmp_path / "graph.png").stat().st_size > 0


def test_function_is_dagger_s_probe(tmp_path):
    exp = dg.Experiment(tmp_path, state_class=Pair)
    root = exp.spawn_new_tree(a=2.0, b="w")
    first, second = dg.Function(lambda s: s.a * 2), dg.Function(lambda s: s.a * 3)
    assert first(root) == root and first.name != second.name  # two lambdas keep two results
    second(root)
    exp.run()
    node = dg.Experiment.restore(tmp_path, state_class=Pair).graph.node(root.id)
    assert sorted(node.results.values()) == [4.0, 6.0]
    assert first.apply(node) == 4.0 and node.slim_loaded  # loaded for the call only
