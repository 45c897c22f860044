"""Index schema 3 keeps a node's parents and tags in its row and its blob digests in
a table of their own. An experiment written under schema 1 or 2 is browsed as it
is (nothing in its folder changes) and upgraded in place by the first write."""
from __future__ import annotations

import contextlib
import sqlite3

import torch

import abgraph
from abgraph.store import Index
from conftest import cli_in_process as cli, copy_experiment, records_by_id, sha256, to_old_layout


def tables(directory) -> set:
    with contextlib.closing(sqlite3.connect(directory / "abgraph.sqlite")) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def schema(directory) -> str:
    with contextlib.closing(sqlite3.connect(directory / "abgraph.sqlite")) as db:
        return db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]


def stored(records) -> dict:
    return {r.id: {k: v for k, v in r.fields().items() if k != "derived_from"} for r in records}


def test_an_old_index_is_browsed_unchanged_then_upgraded_by_the_first_write(study_run, tmp_path):
    folder = copy_experiment(study_run.directory, tmp_path / "old")
    expected = stored(records_by_id(folder).values())
    assert any(len(r["tags"]) > 1 for r in expected.values()) and any(r["results"] for r in expected.values())
    to_old_layout(folder, schema=2)
    before = sha256(folder / "abgraph.sqlite")

    index = Index(folder)  # browsing: views give the old tables the new columns
    assert stored(index.records()) == expected
    some = next(r for r in expected.values() if r["blobs"])
    assert index.blobs_of(some["id"]) == some["blobs"]
    index.close()
    graph = abgraph.Experiment.restore(folder).graph
    assert {n.id: n._ab_record.parents for n in graph.nodes} == {i: r["parents"] for i, r in expected.items()}
    assert {n.id: n._ab_record.tags for n in graph.nodes} == {i: r["tags"] for i, r in expected.items()}
    for command in (["ls"], ["ls", "--filter", "pruned"], ["report"], ["show", some["id"][:10]], ["verify"]):
        code, out, err = cli(command[0], folder, *command[1:])
        assert code == 0, (command, out, err)
    graph.experiment.index.close()
    assert sha256(folder / "abgraph.sqlite") == before and schema(folder) == "2"
    assert {"edges", "tags"} <= tables(folder)

    Index(folder, create=True).close()  # what `abgraph.Experiment(folder)` opens to run
    assert schema(folder) == "3" and tables(folder) == {"meta", "kinds", "nodes", "node_blobs", "results"}
    assert stored(records_by_id(folder).values()) == expected


def test_a_browser_follows_an_upgrade_made_by_another_process(study_run, tmp_path):
    folder = copy_experiment(study_run.directory, tmp_path / "old")
    expected = stored(records_by_id(folder).values())
    to_old_layout(folder)
    browsing = Index(folder)
    assert stored(browsing.records(blobs=True)) == expected
    Index(folder, create=True).close()  # a run started elsewhere upgrades it
    assert stored(browsing.records(blobs=True)) == expected
    assert {n for n, _ in browsing.statuses().items()} == set(expected)


def test_a_damaged_old_index_is_repaired_into_the_new_schema(study_run, tmp_path):
    folder = copy_experiment(study_run.directory, tmp_path / "old")
    expected = stored(records_by_id(folder).values())
    to_old_layout(folder)
    victim = study_run.ids["prune:0.05"]
    with contextlib.closing(sqlite3.connect(folder / "abgraph.sqlite")) as db, db:
        db.execute("UPDATE nodes SET blobs = '[\"../../etc/passwd\"]' WHERE id = ?", (victim,))
    code, out, err = cli("verify", folder, "--repair")
    assert code in (0, 1) and "index rebuilt" in out and f"lost {victim}" in out, out + err
    assert schema(folder) == "3"
    kept = stored(records_by_id(folder).values())
    lost = {victim} | {i for i, r in expected.items() if victim in r["parents"]}
    assert set(kept) == set(expected) - lost
    for node_id, record in kept.items():
        assert {k: v for k, v in record.items() if k not in ("seq", "status", "error")} == \
            {k: v for k, v in expected[node_id].items() if k not in ("seq", "status", "error")}


class Weights(abgraph.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, **properties):
        self.weights = torch.ones(self.width)


class Scale(abgraph.Recipe):
    PROPERTIES = ["factor"]

    def run(self, state):
        state.weights = state.weights * self.factor
        return state


def test_an_upgraded_experiment_grows_and_its_stored_nodes_gain_tags(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=Weights)
    root = exp.spawn_new_tree(width=3)
    with exp.tag("first"):
        kept = Scale(factor=2.0)(root)
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    exp.index.close()
    to_old_layout(tmp_path)

    exp = abgraph.Experiment(tmp_path, state_class=Weights)
    root = exp.spawn_new_tree(width=3)
    with exp.tag("second"):
        assert Scale(factor=2.0)(root).id == kept.id
        new = Scale(factor=3.0)(Scale(factor=2.0)(root))
    report = exp.run(executor=abgraph.SerialExecutor())
    assert report.ok and report.executed == [new.id]
    graph = abgraph.Experiment.restore(tmp_path).graph
    assert graph.node(kept.id)._ab_record.tags == ["first", "second"]
    assert graph.node(new.id)._ab_record.parents == [kept.id]
    assert [n.id for n in graph.nodes.filter("first & second")] == [kept.id]
    node = graph.node(new.id)
    node.restore()
    assert torch.equal(node.weights, torch.full((3,), 6.0))
