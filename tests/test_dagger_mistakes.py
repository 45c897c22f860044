"""No silent build mistakes, the ones a newcomer from dagger makes first: a
setting kept outside PROPERTIES, a property written by a recipe, a payload
attribute never set, a probe that raises or wants its node's id, a declared name
that is one of abgraph's own."""
from __future__ import annotations

import pytest
import torch

import abgraph as dg
from conftest import records_by_id, run_cli


class Small(dg.ExperimentState):
    PROPERTIES = ["size"]
    NONHASHED_ATTRIBUTES = ["weights", "notes"]

    def initialize_state(self, **properties):
        self.weights = torch.ones(self.size)  # `notes` is never set


class NewcomersTrain(dg.Recipe):
    """What a newcomer writes: settings in __init__, no PROPERTIES."""

    def __init__(self, epochs, lr):
        self.epochs, self.lr = epochs, lr

    def run(self, state):
        state.weights = state.weights * (1 - self.lr) ** self.epochs
        return state


class Logged(dg.Recipe):
    PROPERTIES = ["factor"]
    NONHASHED_ATTRIBUTES = ["verbose"]

    def __init__(self, factor, verbose=False):
        self.factor, self.verbose = factor, verbose

    def run(self, state):
        state.weights = state.weights * self.factor
        return state


class Grow(dg.Recipe):
    """Writes a PROPERTY: the node's size is what the recipe made it."""
    PROPERTIES = ["by"]

    def run(self, state):
        state.size = state.size + self.by
        state.weights = torch.ones(state.size)
        return state


class Look(dg.Recipe):
    """Reports what it sees: the size property, its node's id, the unset payload attribute."""
    PROPERTIES = ["tag"]

    def run(self, state):
        state.metrics.update(size=state.size, notes_is_none=state.notes is None, id=state.id)
        return state


@dg.function
def fragile(state):
    raise ValueError("this evaluation is broken")


@dg.function
def who(state):
    return {"id": state.id, "n": len(state.weights)}


def experiment(tmp_path):
    exp = dg.Experiment(tmp_path / "exp", state_class=Small)
    return exp, exp.spawn_new_tree(size=3)


# -- (a) a setting outside PROPERTIES --------------------------------------------------

def test_two_recipes_differing_only_outside_properties_are_refused_naming_the_attribute(tmp_path):
    exp, root = experiment(tmp_path)
    first = NewcomersTrain(5, 0.01)(root)
    with pytest.raises(ValueError, match=r"'lr'.*not in NewcomersTrain.PROPERTIES") as caught:
        NewcomersTrain(5, 0.1)(root)
    assert "0.01" in str(caught.value) and "0.1" in str(caught.value)
    assert NewcomersTrain(5, 0.01)(root) == first  # the same values are the same node
    scaled = Logged(3)(root)
    losses = NewcomersTrain(1, torch.nn.MSELoss())(scaled)  # a cell run again: an equal new object
    assert NewcomersTrain(1, torch.nn.MSELoss())(scaled) == losses
    with pytest.raises(ValueError, match="'lr'"):
        NewcomersTrain(1, torch.nn.L1Loss())(scaled)
    assert Logged(2, verbose=True)(root) == Logged(2)(root)  # declared as not changing the result


def test_a_stored_node_reused_with_other_undeclared_values_warns(tmp_path):
    exp, root = experiment(tmp_path)
    NewcomersTrain(5, 0.01)(root)
    exp.run(executor=dg.ProcessExecutor(workers=1))
    again = dg.Experiment(tmp_path / "exp", state_class=Small)
    NewcomersTrain(5, 0.1)(again.spawn_new_tree(size=3))
    with pytest.warns(dg.UndeclaredChangeWarning, match=r"NewcomersTrain.lr differs"):
        report = again.run(executor=dg.ProcessExecutor(workers=1))
    assert report.executed == []


# -- (b) a recipe that writes a PROPERTY; (c) an unset payload attribute; (e) the id --------

def test_a_property_written_by_a_recipe_is_kept_queryable_and_inherited(tmp_path):
    exp, root = experiment(tmp_path)
    grown = Grow(by=2)(root)
    first = exp.run()
    assert first.ok, first.errors
    looked = Look(tag="after")(grown)  # a second run: the parent comes back from disk
    second = exp.run()
    assert second.ok and second.executed == [looked.id], second.errors
    graph = dg.Experiment.restore(tmp_path / "exp").graph
    assert graph.node(grown.id).properties == {"size": 5}
    assert graph.node(looked.id).metrics["size"] == 5
    assert graph.nodes.where(size=5).ids == [grown.id, looked.id]
    assert graph.node(root.id).properties == {"size": 3}
    frame = graph.to_dataframe().set_index("id")
    assert frame.loc[looked.id, "size"] == 5
    # a name used twice keeps both: the property `size` beside the metric, the metric `id` beside the id
    assert frame.loc[grown.id, "property.size"] == 5 and frame.loc[looked.id, "metric.id"] == looked.id


def test_an_unset_payload_attribute_reads_none_and_a_recipe_sees_its_node_id(tmp_path):
    exp, root = experiment(tmp_path)
    looked = Look(tag="root")(root)
    report = exp.run()
    assert report.ok, report.errors
    metrics = dg.Experiment.restore(tmp_path / "exp").graph.node(looked.id).metrics
    assert metrics["notes_is_none"] is True and metrics["id"] == looked.id


# -- (d) a probe that raises; (e) a probe sees its node's id -----------------------------

def test_a_failing_probe_records_its_error_and_blocks_nothing(tmp_path):
    exp, root = experiment(tmp_path)
    trained = NewcomersTrain(1, 0.5)(root)
    fragile(trained)
    who(trained)
    child = Look(tag="child")(trained)
    with pytest.raises(dg.RunFailed) as caught:  # once everything ran and was stored
        exp.run()
    assert isinstance(caught.value, ValueError)  # the probe's own type, as dagger's run() raised it
    report = caught.value.report
    assert report.failed == [] and report.blocked == [] and child.id in report.executed
    assert "this evaluation is broken" in report.probe_errors[trained.id]["fragile"]
    assert "function fragile raised" in str(report)
    node = dg.Experiment.restore(tmp_path / "exp").graph.node(trained.id)
    assert node.status == "done" and node.restore().weights.tolist() == [0.5, 0.5, 0.5]
    assert node.results["who"] == {"id": trained.id, "n": 3}
    assert "ValueError" in node.probe_errors["fragile"]
    row = node._ab_graph.to_dataframe().set_index("id").loc[trained.id]
    assert "this evaluation is broken" in row["fragile.error"]
    shown = run_cli("show", tmp_path / "exp", trained.id[:10])
    assert shown.returncode == 0 and "this evaluation is broken" in shown.stdout, shown.stdout + shown.stderr
    # the results line says it raised; the traceback follows as lines, not one escaped string
    assert "raised ValueError: this evaluation is broken" in shown.stdout and "\\n" not in shown.stdout
    assert "function fragile raised:\nTraceback (most recent call last):" in shown.stdout
    rerun = exp.run(raise_on_failure=False)  # the failed probe runs again (it may have been fixed); the rest is cached
    assert rerun.executed == [trained.id] and list(rerun.probe_errors) == [trained.id]
    assert records_by_id(tmp_path / "exp")[trained.id].payload == node._ab_record.payload


# -- (f) a declared name that is one of abgraph's own --------------------------------------

def test_declaring_a_framework_attribute_is_refused_when_the_class_is_used(tmp_path):
    class Shadowing(dg.ExperimentState):
        PROPERTIES = ["status"]

    class PayloadShadowing(dg.ExperimentState):
        NONHASHED_ATTRIBUTES = ["model", "tags"]

    class Twice(dg.ExperimentState):
        PROPERTIES = ["model"]
        NONHASHED_ATTRIBUTES = ["model"]

    for cls, word in [(Shadowing, "'status'"), (PayloadShadowing, "'tags'"), (Twice, "both")]:
        with pytest.raises(TypeError, match=word):
            dg.Experiment(tmp_path / cls.__name__, state_class=cls)
    with pytest.raises(TypeError, match="'status'"):
        Shadowing()
    with pytest.raises(TypeError, match=r"RunProperty.PROPERTIES names 'run'"):
        class RunProperty(dg.Recipe):  # refused where the class is written, before any use
            PROPERTIES = ["run"]
