"""Issue 3, item 4: the SQLite index (WAL) and the content-addressed object store."""
from __future__ import annotations

import errno
import json
import os
import pickle
import platform
import socket
import sqlite3

import dill
import pytest
import torch
from torch import nn

import abgraph
from abgraph.store.maintenance import verify
from conftest import blob_files, records_by_id, run_python, sha256, to_old_layout


class Chain(abgraph.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["model", "data"]

    def initialize_state(self, **properties):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(16, self.width), nn.ReLU(), nn.Linear(self.width, 4))
        self.data = torch.randn(128, 16)


class Nudge(abgraph.Recipe):
    """Changes only the first layer's weight."""
    PROPERTIES = ["step"]

    def run(self, state):
        with torch.no_grad():
            state.model[0].weight.add_(self.step)
        return state


def test_layout_and_wal_mode(study_run):
    directory = study_run.directory
    assert (directory / "abgraph.sqlite").is_file()
    assert (directory / "objects").is_dir()
    mode = sqlite3.connect(directory / "abgraph.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_blobs_are_content_addressed_and_complete(study_run):
    blobs = blob_files(study_run.directory)
    assert blobs
    for digest, path in blobs.items():
        assert sha256(path) == digest, path
    for record in records_by_id(study_run.directory).values():
        assert record.payload in blobs
        assert set(record.blobs) <= set(blobs)
    assert not [p for p in (study_run.directory / "objects").rglob("*") if ".tmp" in p.name]


def test_an_unchanged_tensor_is_stored_once_per_experiment(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    node = root = exp.spawn_new_tree(width=32)
    chain = []
    for step in range(1, 6):
        node = Nudge(step=float(step))(node)
        chain.append(node)
    report = exp.run(executor=abgraph.SerialExecutor())
    assert report.ok and len(report.executed) == 6
    records = records_by_id(tmp_path)
    root_tensors = set(records[root.id].blobs)
    assert len(root_tensors) == 5  # 2 weights, 2 biases, the data
    previous = root_tensors
    for promise in chain:
        tensors = set(records[promise.id].blobs)
        assert len(tensors - previous) == 1 and len(previous - tensors) == 1  # only the weight
        previous = tensors
    # 5 root tensors + 5 new first-layer weights + 6 payload pickles, nothing else
    assert len(blob_files(tmp_path)) == 5 + 5 + 6
    data_bytes = 128 * 16 * 4
    sizes = [p.stat().st_size for p in blob_files(tmp_path).values()]
    assert sizes.count(data_bytes) == 1  # the data is on disk once, not once per node
    root_bytes = sum(blob_files(tmp_path)[d].stat().st_size
                     for d in root_tensors | {records[root.id].payload})
    assert sum(sizes) < 6 * root_bytes / 2  # less than half of one full copy per node


class Negate(abgraph.Recipe):
    """Turns the zeros of `data` into -0.0: equal to 0.0 as numbers, not as bytes."""
    PROPERTIES = ["branch"]

    def run(self, state):
        state.data.mul_(-1.0)
        return state


class Zeros(abgraph.ExperimentState):
    NONHASHED_ATTRIBUTES = ["data", "nans"]

    def initialize_state(self, **properties):
        self.data = torch.zeros(64)
        self.nans = torch.full((64,), float("nan"))


def test_a_change_is_detected_bit_for_bit(tmp_path):
    """-0.0 == 0.0 and NaN != NaN as numbers; a stored blob holds bytes, so a sign flip
    is a change (restored as -0.0) and an untouched NaN tensor keeps its one blob."""
    exp = abgraph.Experiment(tmp_path, state_class=Zeros)
    root = exp.spawn_new_tree()
    forked = [Negate(branch=b)(root) for b in (1, 2)]  # root read by two: each gets a copy
    chained = Negate(branch=3)(forked[0])            # its parent's only child: takes its objects
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    records = records_by_id(tmp_path)
    nan_blobs = {d for d, p in blob_files(tmp_path).items() if p.stat().st_size == 64 * 4
                 and torch.isnan(torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.float32)).all()}
    assert len(nan_blobs) == 1
    restored = abgraph.Experiment.restore(tmp_path, slim=False).graph
    for promise in forked:
        assert torch.signbit(restored.node(promise.id).data).all(), "the sign flip was not stored"
        assert records[promise.id].blobs != records[root.id].blobs
    assert not torch.signbit(restored.node(chained.id).data).any()  # flipped back
    assert records[chained.id].blobs == records[root.id].blobs
    assert not torch.signbit(restored.node(root.id).data).any()


def _to_schema_1(directory):
    """Rewrite an experiment as abgraph wrote it under index schema 1: 256 folders."""
    to_old_layout(directory, schema=1)
    objects = directory / "objects"
    for digest, path in blob_files(directory).items():
        (objects / digest[:2]).mkdir(exist_ok=True)
        path.rename(objects / digest[:2] / digest[2:])
    for folder in objects.iterdir():
        if len(folder.name) == 1:
            folder.rmdir()


def _schema(directory):
    with sqlite3.connect(directory / "abgraph.sqlite") as db:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]


def test_blobs_live_in_16_folders(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    Nudge(step=1.0)(exp.spawn_new_tree(width=8))
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    folders = [p.name for p in (tmp_path / "objects").iterdir() if not p.name.startswith(".")]
    assert folders and all(len(name) == 1 and name in "0123456789abcdef" for name in folders)
    assert _schema(tmp_path) == "3"


def test_an_old_experiment_with_no_blob_yet_moves_to_schema_3(tmp_path):
    """So an older abgraph, which writes 256 folders, refuses it instead of mixing layouts."""
    abgraph.Experiment(tmp_path, state_class=Chain).index.close()
    to_old_layout(tmp_path, schema=1)
    abgraph.Experiment(tmp_path, state_class=Chain).index.close()
    assert _schema(tmp_path) == "3"


def test_an_experiment_written_under_schema_1_restores_and_grows(tmp_path):
    """Its blobs stay where they are, new ones join them, nothing is lost."""
    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    root = exp.spawn_new_tree(width=8)
    first = Nudge(step=1.0)(root)
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    exp.index.close()
    _to_schema_1(tmp_path)

    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    root = exp.spawn_new_tree(width=8)
    Nudge(step=1.0)(root)
    second = Nudge(step=2.0)(root)
    report = exp.run(executor=abgraph.SerialExecutor())
    assert report.executed == [second.id] and report.ok
    assert all(len(p.name) == 2 for p in (tmp_path / "objects").iterdir() if not p.name.startswith("."))
    assert _schema(tmp_path) == "3"  # its index upgraded by the run: the folders say where blobs are
    assert verify(exp.index, exp.objects).clean
    graph = abgraph.Experiment.restore(tmp_path).graph
    for promise, step in ((first, 1.0), (second, 2.0)):
        node = graph.node(promise.id)
        node.restore()
        expected = graph.node(root.id)
        expected.restore()
        assert torch.equal(node.model[0].weight, expected.model[0].weight + step)


def test_a_failed_write_leaves_no_partial_blob(tmp_path, monkeypatch):
    """Disk full while renaming a blob into place: the node fails, nothing half-written
    is left, and the next run completes."""
    real_replace = os.replace

    def disk_full(source, destination, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    root = exp.spawn_new_tree(width=4)
    child = Nudge(step=1.0)(root)
    monkeypatch.setattr(os, "replace", disk_full)
    report = exp.run(executor=abgraph.SerialExecutor(), raise_on_failure=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert report.failed == [root.id] and report.blocked == [child.id]
    assert "No space left on device" in report.errors[root.id]
    assert list((tmp_path / "objects").rglob("*.tmp*")) == []
    assert [p for p in (tmp_path / "objects").rglob("*") if p.is_file() and ".abgraph" not in str(p)] == []
    record = records_by_id(tmp_path)[root.id]
    assert record.status == "failed" and record.payload is None
    report = exp.run(executor=abgraph.SerialExecutor())
    assert report.ok and sorted(report.executed) == sorted([root.id, child.id])
    assert verify(exp.index, exp.objects).clean


def test_a_disk_error_is_not_reported_as_a_pickling_error(tmp_path, monkeypatch):
    def disk_full(source, destination, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    exp = abgraph.Experiment(tmp_path, state_class=Chain)
    root = exp.spawn_new_tree(width=4)
    monkeypatch.setattr(os, "replace", disk_full)
    report = exp.run(executor=abgraph.SerialExecutor(), raise_on_failure=False)
    monkeypatch.undo()
    assert "No space left on device" in report.errors[root.id]
    assert "cannot be pickled" not in report.errors[root.id]


def test_slim_restore_never_unpickles(study_run, monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("slim restore unpickled something")

    for module in (pickle, dill):
        monkeypatch.setattr(module, "loads", refuse)
        monkeypatch.setattr(module, "load", refuse)
    monkeypatch.setattr(dill.Unpickler, "load", refuse)
    monkeypatch.setattr(abgraph.store.payload, "load", refuse)
    exp = abgraph.Experiment.restore(study_run.directory)
    graph = exp.graph
    assert len(graph) == 5
    pruned = graph.nodes.filter("pruned") & graph.nodes.filter("lr:0.5")
    assert [n.id for n in pruned] == [study_run.ids["prune:0.5"]]
    assert 0 <= pruned[0].results["accuracy"]["accuracy"] <= 1
    assert len(graph.to_dataframe()) == 5
    assert graph.draw(tmp_path / "graph", format="svg").endswith(".svg")
    assert graph.nx.number_of_nodes() == 5
    with pytest.raises(AttributeError, match="restore"):
        pruned[0].model
    with pytest.raises(AssertionError, match="unpickled"):
        pruned[0].restore()  # the full restore is the one that unpickles


SLIM_THEN_FULL = r'''
import json, sys
import torch
import abgraph

exp = abgraph.Experiment.restore(sys.argv[1])
node = exp.graph.node(sys.argv[2][:10])
out = {"state_type": type(node).__name__, "tags": node.tags, "results": node.results,
       "properties": node.properties, "main_has_state": hasattr(sys.modules["__main__"], "State")}
try:
    node.model
except AttributeError as error:
    out["slim_error"] = str(error)
node.restore()
model = node.model
x, y = node.eval_data
with torch.no_grad():
    out["accuracy"] = (model(x).argmax(1) == y).float().mean().item()
out.update(model_type=type(model).__name__, is_module=isinstance(model, torch.nn.Module),
           fc1_zeros=(model.fc1.weight == 0).float().mean().item(),
           fc2_zeros=(model.fc2.weight == 0).float().mean().item(),
           has_mask=hasattr(model.fc1, "weight_mask"))
print(json.dumps(out))
'''


def test_restore_where_the_state_class_cannot_be_imported(study_run, tmp_path):
    """The study's classes live in the `__main__` of a script that is gone: slim browsing
    needs none of them; the full payload comes back through dill's by-value classes."""
    node_id = study_run.ids["prune:0.5"]
    done = run_python(SLIM_THEN_FULL, study_run.directory, node_id, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["main_has_state"] is False
    assert out["state_type"] == "ExperimentState"
    assert out["tags"] == ["lr:0.5", "pruned"]
    assert out["properties"] == {"dataset_name": "toy", "hidden": 8}
    assert "restore" in out["slim_error"]
    assert out["model_type"] == "MLP" and out["is_module"]
    assert out["fc1_zeros"] == 0.5 and out["fc2_zeros"] == 0.5 and out["has_mask"]
    # the restored model is the one the probe measured when the node was made
    assert out["accuracy"] == out["results"]["accuracy"]["accuracy"]


def _payload_digests(directory) -> dict:
    return {node_id: record.payload for node_id, record in records_by_id(directory).items()}


def test_a_deterministic_rerun_reproduces_the_payload_digest(study_run, study_fresh):
    assert study_fresh.ids == study_run.ids
    assert len(study_fresh.result["executed"]) == 5
    assert _payload_digests(study_fresh.directory) == _payload_digests(study_run.directory)


def test_payload_digest_does_not_depend_on_the_hash_seed(study_run, study_rerun):
    assert study_rerun.ids == study_run.ids
    assert _payload_digests(study_rerun.directory) == _payload_digests(study_run.directory)


def test_payload_digest_does_not_depend_on_the_script_path(study_run, study_moved):
    assert study_moved.ids == study_run.ids
    assert _payload_digests(study_moved.directory) == _payload_digests(study_run.directory)


def test_the_tensors_are_reproduced_whatever_the_hash_seed(study_run, study_rerun):
    """What the payload digest should show: the tensors are bit for bit the same."""
    first, second = records_by_id(study_run.directory), records_by_id(study_rerun.directory)
    for node_id in study_run.ids.values():
        assert first[node_id].blobs == second[node_id].blobs


def test_each_record_holds_what_the_issue_lists(study_run):
    records = records_by_id(study_run.directory)
    pruned = records[study_run.ids["prune:0.5"]]
    trained = records[study_run.ids["train:0.5"]]
    root = records[study_run.ids["root"]]
    assert root.parents == [] and root.recipe == "root"
    assert pruned.parents == [trained.id]
    assert pruned.recipe == "__main__.Prune"
    assert pruned.recipe_properties["amount"] == 0.5
    assert abgraph.identity.readable(pruned.recipe_properties["layers"]) == ("fc1", "fc2")
    assert pruned.recipe_version.startswith("src:")
    assert abgraph.identity.readable(pruned.properties["hidden"]) == 8
    assert pruned.state_class == "__main__.State"
    assert pruned.attributes == ["train_data", "eval_data", "model"]
    assert pruned.tags == ["lr:0.5", "pruned"]
    assert set(trained.metrics) == {"loss", "device"}
    assert set(pruned.results["accuracy"]) == {"accuracy", "n"}
    assert pruned.status == "done" and pruned.error is None
    assert pruned.started <= pruned.finished and pruned.duration > 0
    assert len(pruned.payload) == 64


def test_the_environment_is_recorded(study_run):
    for record in records_by_id(study_run.directory).values():
        environment = record.environment
        assert environment["python"] == platform.python_version()
        assert environment["torch"] == torch.__version__
        assert environment["abgraph"] == abgraph.__version__
        assert environment["host"] == socket.gethostname()
        assert environment["device"] == "cpu"


def test_the_fast_read_gives_the_records_the_checked_read_gives(study_run, tmp_path):
    """Browsing reads every row at C speed (SQLite checks the shapes); the row-by-row
    read that names a damaged row must agree with it on a healthy index, and take
    over as soon as one row is odd."""
    from abgraph.store import DamagedIndex, Index
    index = Index(study_run.directory)
    fast, checked = index.records(), index._read_checked(None, *_links(index))
    assert list(map(_stored_fields, fast)) == list(map(_stored_fields, checked)) and len(fast) == len(study_run.ids)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    copy = Index(damaged, create=True)
    copy.write(fast)
    # rows in the table out of the written order (as a repaired index may have them)
    copy.db.execute("UPDATE nodes SET seq = 1000 - seq")
    reordered = copy.records()
    assert [r.id for r in reordered] == [r.id for r in reversed(fast)]
    assert list(map(_stored_fields, reordered)) == list(map(_stored_fields, copy._read_checked(None, *_links(copy))))
    copy.db.execute("UPDATE nodes SET metrics = '[1]' WHERE id = ?", (fast[-1].id,))
    with pytest.raises(DamagedIndex, match=f"node {fast[-1].id[:12]} has metrics"):
        copy.records()


def test_browsing_reads_no_blob_digests_and_its_records_are_not_written_back(study_run, tmp_path):
    """The digests are most of a real row; the slim graph leaves them out, says so
    with None (not an empty list), and such a record cannot be stored."""
    from abgraph.store import Index
    graph = abgraph.Experiment.restore(study_run.directory).graph
    slim = [node._ab_record for node in graph.nodes]
    full = {r.id: r for r in Index(study_run.directory).records()}
    assert all(r.blobs is None for r in slim) and any(full[r.id].blobs for r in slim)
    assert [{**_stored_fields(r), "blobs": None} for r in full.values()] == list(map(_stored_fields, slim))
    copy = Index(tmp_path, create=True)
    with pytest.raises(ValueError, match="read without its blobs.*blobs=True"):
        copy.write(slim)
    assert Index(study_run.directory).blobs_of(slim[-1].id) == full[slim[-1].id].blobs


def _stored_fields(record) -> dict:
    return {name: value for name, value in record.fields().items() if name != "derived_from"}  # a run's, never stored


def _links(index):
    """What `_read_records` reads beside the rows (results and their versions)."""
    records = index.records()
    return ({r.id: r.results for r in records if r.results},
            {r.id: r.result_versions for r in records if r.result_versions})


def test_records_are_read_from_one_snapshot(study_run, tmp_path):
    """A notebook browses the index while a run writes it: a node committed between
    two of the reads (results, then rows, metrics and checks, the last two on a
    connection of their own) comes back whole, as it was before or as it is after."""
    from dataclasses import replace

    from abgraph.store import Index
    folder = tmp_path / "copy"
    folder.mkdir()
    writer = Index(folder, create=True)
    stored = Index(study_run.directory).records()
    done = next(r for r in stored if r.parents and r.metrics)
    failed = replace(done, status="failed", error="diverged", payload=None, blobs=[], metrics={},
                     results={}, result_versions={})
    earlier = stored[:stored.index(done) + 1]
    writer.write(earlier[:-1] + [failed])
    reader = Index(folder)
    reads = reader._query

    def write_between(sql, parameters=()):
        rows = reads(sql, parameters)
        if "FROM results" in sql:
            writer.write([done])  # the rerun stores it, after the reader's first read
        return rows
    reader._query = write_between
    seen = {r.id: (r.status, r.metrics, r.results) for r in reader.records()}
    assert seen[done.id] in (("failed", {}, {}), ("done", done.metrics, done.results))
    assert Index(folder).records()[-1].status == "done"  # it was written
