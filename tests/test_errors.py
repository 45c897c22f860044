"""Issue 3, item 9: bad input gets a clear error at the earliest point, naming the
object and what was expected; nothing stored is lost or half-written."""
from __future__ import annotations

import itertools
import os
import sqlite3

import pytest
import torch

import abgraph
from abgraph.identity import UnsupportedValue
from abgraph.store import BlobError, NotAnExperiment
from abgraph.store.maintenance import verify
from conftest import blob_files, records_by_id, sha256


class Tiny(abgraph.ExperimentState):
    PROPERTIES = ["size"]
    NONHASHED_ATTRIBUTES = ["weights", "stream"]

    def initialize_state(self, **properties):
        self.weights = torch.arange(float(self.size))
        self.stream = None


class Leaky(Tiny):
    """Its root payload holds a generator, which no pickler can store."""

    def initialize_state(self, **properties):
        super().initialize_state(**properties)
        self.stream = (i for i in range(3))


class Scale(abgraph.Recipe):
    PROPERTIES = ["factor"]

    def run(self, state):
        state.weights = state.weights * self.factor
        return state


class Forgetful(abgraph.Recipe):
    """Forgets `return state`."""

    def run(self, state):
        state.weights = state.weights + 1


class OpensAStream(abgraph.Recipe):
    def run(self, state):
        state.weights = state.weights + 1
        state.stream = (line for line in ["a", "b"])
        return state


class Pair(abgraph.Recipe):
    def run(self, state, other):
        state.weights = state.weights + other.weights
        return state


class BadMetric(abgraph.Recipe):
    def run(self, state):
        state.metrics["weights"] = state.weights  # a tensor, not a number
        return state


@abgraph.function
def tensor_probe(state):
    return {"weights": state.weights}


def serial():
    return abgraph.SerialExecutor()


def stored_count(directory) -> int:
    return sqlite3.connect(os.path.join(directory, "abgraph.sqlite")).execute(
        "SELECT COUNT(*) FROM nodes").fetchone()[0]


def assert_nothing_half_written(directory):
    assert not [p for p in (directory / "objects").rglob("*") if ".tmp" in p.name]
    for digest, path in blob_files(directory).items():
        assert sha256(path) == digest


# -- at graph-building time ----------------------------------------------------------

def test_a_property_value_that_cannot_be_encoded(tmp_path, study):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    with pytest.raises(UnsupportedValue) as caught:
        study.Train(epochs=object(), lr=0.1)(root)
    message = str(caught.value)
    assert "Train.epochs" in message and "object" in message
    assert "use None, bool, int, float, str" in message  # what is expected
    with pytest.raises(UnsupportedValue, match=r"State\.dataset_name"):
        exp.spawn_new_tree(dataset_name=object(), hidden=8)
    with pytest.raises(UnsupportedValue, match="lambda"):
        Scale(factor=lambda x: x)(root)
    report = exp.run(executor=serial())  # the refused nodes never entered the graph
    assert report.executed == [root.id] and stored_count(tmp_path) == 1


def test_spawn_new_tree_with_missing_or_unknown_properties(tmp_path, study):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    with pytest.raises(TypeError) as caught:
        exp.spawn_new_tree(dataset_name="toy")
    assert "'hidden'" in str(caught.value) and "PROPERTIES" in str(caught.value)
    with pytest.raises(TypeError) as caught:
        exp.spawn_new_tree(dataset_name="toy", hiden=8)
    assert "'hiden'" in str(caught.value) and "did you mean 'hidden'" in str(caught.value)
    with pytest.raises(TypeError, match="'colour'"):
        exp.spawn_new_tree(dataset_name="toy", hidden=8, colour="red")
    assert exp._nodes == {}
    assert stored_count(tmp_path) == 0


def test_a_recipe_with_an_unknown_or_missing_property(tmp_path):
    with pytest.raises(TypeError) as caught:
        Scale(factr=2)
    assert "'factr'" in str(caught.value) and "did you mean 'factor'" in str(caught.value)
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    root = exp.spawn_new_tree(size=3)
    with pytest.raises(TypeError, match="no value for its property 'factor'"):
        Scale()(root)


def test_a_recipe_called_on_the_wrong_number_of_inputs(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    a, b = exp.spawn_new_tree(size=3), exp.spawn_new_tree(size=4)
    with pytest.raises(TypeError, match=r"Scale\.run takes 1 state\(s\); it was called on 2"):
        Scale(factor=2)(a, b)
    with pytest.raises(TypeError, match=r"Pair\.run takes 2 state\(s\); it was called on 1"):
        Pair()(a)
    with pytest.raises(TypeError, match="at least one input"):
        Scale(factor=2)()
    with pytest.raises(TypeError, match="state promise"):
        Scale(factor=2)(torch.zeros(3))
    other = abgraph.Experiment(tmp_path / "other", state_class=Tiny).spawn_new_tree(size=3)
    with pytest.raises(TypeError, match="not a state promise of this experiment"):
        Pair()(a, other)
    assert Pair()(a, b).id  # the right number is fine


def test_other_building_mistakes(tmp_path):
    with pytest.raises(TypeError, match="subclass of abgraph.ExperimentState"):
        abgraph.Experiment(tmp_path, state_class=dict)
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    with pytest.raises(TypeError, match="tag"):
        with exp.tag(3):
            pass


# -- at run time ---------------------------------------------------------------------

def test_a_recipe_that_returns_something_else_than_a_state(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    root = exp.spawn_new_tree(size=3)
    forgot = Forgetful()(root)
    after = Scale(factor=2)(forgot)
    report = exp.run(executor=serial(), raise_on_failure=False)
    assert report.failed == [forgot.id] and report.blocked == [after.id]
    error = report.errors[forgot.id]
    assert "Forgetful.run returned NoneType, not a state" in error and "return state" in error
    record = records_by_id(tmp_path)[forgot.id]
    assert record.status == "failed" and record.payload is None and record.blobs == []
    assert_nothing_half_written(tmp_path)


def test_a_payload_attribute_that_cannot_be_pickled_is_named(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    root = exp.spawn_new_tree(size=3)
    opened = OpensAStream()(root)
    report = exp.run(executor=serial(), raise_on_failure=False)
    assert report.failed == [opened.id]
    error = report.errors[opened.id]
    assert "'stream'" in error and "generator" in error and "cannot be pickled" in error
    assert "'weights'" not in error
    assert records_by_id(tmp_path)[opened.id].payload is None
    assert records_by_id(tmp_path)[root.id].status == "done"
    assert_nothing_half_written(tmp_path)


def test_a_root_payload_that_cannot_be_pickled_is_named(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Leaky)
    root = exp.spawn_new_tree(size=3)
    child = Scale(factor=2)(root)
    report = exp.run(executor=serial(), raise_on_failure=False)
    assert report.failed == [root.id] and report.blocked == [child.id]
    assert "attribute 'stream' (generator) cannot be pickled" in report.errors[root.id]
    assert_nothing_half_written(tmp_path)


def test_metrics_and_results_must_be_json(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    root = exp.spawn_new_tree(size=3)
    bad_metric = BadMetric()(root)
    probed = Scale(factor=2)(root)
    tensor_probe(probed)
    report = exp.run(executor=serial(), raise_on_failure=False)
    assert sorted(report.failed) == sorted([bad_metric.id, probed.id])
    assert "state.metrics" in report.errors[bad_metric.id] and "JSON" in report.errors[bad_metric.id]
    assert "tensor_probe" in report.errors[probed.id] and "JSON" in report.errors[probed.id]


# -- at restore time -----------------------------------------------------------------

def test_restoring_a_folder_that_is_not_an_experiment(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NotAnExperiment) as caught:
        abgraph.Experiment.restore(empty)
    assert str(empty) in str(caught.value) and "not an abgraph experiment" in str(caught.value)
    assert list(empty.iterdir()) == []  # restoring created nothing
    with pytest.raises(NotAnExperiment):
        abgraph.Experiment.restore(tmp_path / "does-not-exist")
    assert not (tmp_path / "does-not-exist").exists()


def test_restoring_a_folder_whose_index_is_not_a_database(tmp_path):
    (tmp_path / "abgraph.sqlite").write_bytes(b"not a database at all " * 10)
    with pytest.raises(NotAnExperiment):
        abgraph.Experiment.restore(tmp_path)


def test_an_index_newer_than_this_version(study_copy):
    with sqlite3.connect(study_copy / "abgraph.sqlite") as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    with pytest.raises(NotAnExperiment) as caught:
        abgraph.Experiment.restore(study_copy)
    message = str(caught.value)
    assert "schema 999" in message and "upgrade abgraph" in message
    with pytest.raises(NotAnExperiment, match="schema 999"):
        abgraph.Experiment(study_copy)  # nor is it written to
    value = sqlite3.connect(study_copy / "abgraph.sqlite").execute(
        "SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert value == "999"


def test_an_unknown_or_ambiguous_id_prefix(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Tiny)
    root = exp.spawn_new_tree(size=2)
    for factor in range(16):  # 17 ids over 16 hex digits: two share a first digit
        Scale(factor=factor)(root)
    assert exp.run(executor=serial()).ok
    graph = exp.graph
    with pytest.raises(KeyError) as caught:
        graph.node("xyz")
    assert "no node id starts with 'xyz'" in str(caught.value) and "17 nodes" in str(caught.value)
    a, b = max(itertools.combinations(sorted(graph.nodes.ids), 2),
               key=lambda pair: len(os.path.commonprefix(pair)))
    prefix = os.path.commonprefix([a, b])
    with pytest.raises(KeyError) as caught:
        graph.node(prefix)
    message = str(caught.value)
    assert "ambiguous" in message and "give more characters" in message
    assert a[:len(prefix) + 1] in message and b[:len(prefix) + 1] in message
    assert graph.node(a[:len(prefix) + 1]).id == a  # one more character is enough


def _unique_blobs(records, node_id):
    others = set().union(*(set(r.blobs) for i, r in records.items() if i != node_id))
    return sorted(set(records[node_id].blobs) - others)


def test_a_truncated_blob_fails_only_its_node(study_run, study_copy):
    records = records_by_id(study_copy)
    broken = study_run.ids["prune:0.5"]
    tensor = _unique_blobs(records, broken)[0]
    path = blob_files(study_copy)[tensor]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    graph = abgraph.Experiment.restore(study_copy).graph
    with pytest.raises(BlobError) as caught:
        graph.node(broken).restore()
    assert tensor in str(caught.value) and "corrupted" in str(caught.value)
    assert "abgraph verify" in str(caught.value)
    assert not graph.node(broken).is_restored
    for name, node_id in study_run.ids.items():
        if node_id != broken:
            node = graph.node(node_id).restore()
            assert isinstance(node.model, torch.nn.Module), name
    assert verify(abgraph.Experiment.restore(study_copy).index,
                  abgraph.Experiment.restore(study_copy).objects).corrupted == [tensor]


def test_a_truncated_or_missing_payload(study_run, study_copy):
    records = records_by_id(study_copy)
    truncated, missing = study_run.ids["prune:0.05"], study_run.ids["train:0.05"]
    path = blob_files(study_copy)[records[truncated].payload]
    path.write_bytes(path.read_bytes()[:10])
    blob_files(study_copy)[records[missing].payload].unlink()
    graph = abgraph.Experiment.restore(study_copy).graph
    with pytest.raises(BlobError, match="corrupted"):
        graph.node(truncated).restore()
    with pytest.raises(BlobError, match="missing"):
        graph.node(missing).restore()
    graph.node(study_run.ids["prune:0.5"]).restore()  # the other branch is untouched


def test_flipped_bytes_are_caught_when_verifying(study_run, study_copy):
    records = records_by_id(study_copy)
    node_id = study_run.ids["prune:0.5"]
    tensor = _unique_blobs(records, node_id)[0]
    path = blob_files(study_copy)[tensor]
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BlobError, match=tensor):
        abgraph.Experiment.restore(study_copy).graph.node(node_id).restore(verify=True)
