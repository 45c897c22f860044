"""Crafted, hostile and shared experiment folders, as an attacker or an unlucky user
makes them: gc deletes only its own unreferenced blobs, no path leaves the folder,
browsing never hangs, crashes or writes. Files outside the experiment must
survive byte for byte."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import abgraph
from abgraph.store import BlobError, DamagedIndex, ObjectStore
from conftest import cli_command, cli_in_process as cli, copy_experiment, records_by_id

BLOB_NAME = "0" * 63  # a file named as a blob would be, in folder `a/`


class Weights(abgraph.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, width):
        self.weights = torch.arange(width, dtype=torch.float32)


class Scale(abgraph.Recipe):
    PROPERTIES = ["factor"]

    def run(self, state):
        state.weights = state.weights * self.factor
        return state


# the same state, as the head of a user's script run in a subprocess
SCRIPT_HEAD = textwrap.dedent(r'''
    import json, os, sys, time
    import torch
    import abgraph

    class Weights(abgraph.ExperimentState):
        PROPERTIES = ["width"]
        NONHASHED_ATTRIBUTES = ["weights"]

        def initialize_state(self, width):
            self.weights = torch.zeros(width)
''')


def small(directory, objects=None, factors=(2.0, 3.0)):
    exp = abgraph.Experiment(directory, state_class=Weights, objects=objects)
    root = exp.spawn_new_tree(width=4)
    for factor in factors:
        Scale(factor=factor)(root)
    assert exp.run(executor=abgraph.SerialExecutor()).ok
    exp.index.close()
    return exp


def snapshot(folder) -> dict:
    """Everything under `folder`, links not followed: path -> bytes, link target or 'dir'."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = str(path.relative_to(folder))
        if path.is_symlink():
            found[relative] = ("link", os.readlink(path))
        elif path.is_dir():
            found[relative] = "dir"
        else:
            found[relative] = path.read_bytes()
    return found


def outside_files(folder) -> dict:
    """A user's folder that is not abgraph's, with a file named like a blob."""
    (folder / "a").mkdir(parents=True)
    (folder / "thesis.tex").write_text("\\chapter{Results}")
    (folder / "a" / "important_file").write_bytes(b"irreplaceable")
    (folder / "a" / BLOB_NAME).write_bytes(b"looks like a blob, is not one")
    return snapshot(folder)


def set_meta(directory, key, value):
    with sqlite3.connect(Path(directory) / "abgraph.sqlite") as db:
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))


def execute_sql(directory, *statements):
    with sqlite3.connect(Path(directory) / "abgraph.sqlite") as db:
        for statement in statements:
            db.execute(*statement) if isinstance(statement, tuple) else db.execute(statement)


def set_column(directory, node_id, column, value):
    """Craft one value of a stored record: in its row, its blob digests or its kind (what
    made it, shared with the nodes made the same way)."""
    from abgraph.store.index import _KIND_COLUMNS
    update = ("UPDATE node_blobs SET digests=? WHERE node=?" if column == "blobs" else
              f"UPDATE kinds SET {column}=? WHERE id=(SELECT kind FROM nodes WHERE id=?)"
              if column in _KIND_COLUMNS else f"UPDATE nodes SET {column}=? WHERE id=?")
    execute_sql(directory, (update, (value, node_id)))


# -- gc --------------------------------------------------------------------------------
def test_gc_on_a_shared_location_keeps_every_users_blobs(tmp_path):
    shared = tmp_path / "shared"
    first = small(tmp_path / "a", objects=shared, factors=(2.0, 3.0))
    small(tmp_path / "b", objects=shared, factors=(5.0, 7.0))
    orphan = ObjectStore(shared).put(b"garbage no experiment uses")
    before = snapshot(shared)

    code, out, err = cli("gc", first.directory, "--dry-run")
    assert code == 0 and f"would delete {orphan}" in out and "1 unreferenced" in out, err
    assert snapshot(shared) == before
    code, out, err = cli("gc", first.directory)
    assert code == 0 and "deleted 1 unreferenced" in out, err
    after = snapshot(shared)
    assert set(before) - set(after) == {f"{orphan[0]}/{orphan[1:]}"}
    assert all(after[name] == before[name] for name in after)
    for user in ("a", "b"):
        assert cli("verify", tmp_path / user)[0] == 0

    # an index pointing at the location without being one of its users: refused
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    shutil.copy(first.directory / "abgraph.sqlite", crafted)
    execute_sql(crafted, "DELETE FROM nodes")
    code, _, err = cli("gc", crafted)
    assert code == 2 and "does not list" in err
    assert snapshot(shared) == after

    # a user that is gone: refused until it is forgotten on purpose
    shutil.rmtree(tmp_path / "b")
    code, _, err = cli("gc", first.directory)
    assert code == 2 and "cannot be read" in err and "--forget" in err
    assert snapshot(shared) == after
    assert cli("gc", first.directory, "--forget", tmp_path / "b")[0] == 0
    code, out, err = cli("gc", first.directory)
    assert code == 0 and "deleted 4 unreferenced" in out, err  # b's own two payloads and two tensors
    assert cli("verify", first.directory)[0] == 0


def test_gc_refuses_a_location_abgraph_did_not_create(tmp_path):
    outside = tmp_path / "home"
    before = outside_files(outside)
    exp = small(tmp_path / "exp")
    set_meta(exp.directory, "objects", str(outside))
    for args in (["gc"], ["gc", "--dry-run"], ["verify"]):
        code, _, err = cli(*args[:1], exp.directory, *args[1:])
        assert code != 0 and "not created by abgraph" in err, (args, err)
    assert cli("ls", exp.directory)[0] == 0
    assert snapshot(outside) == before


def test_gc_never_deletes_through_a_symbolic_link(tmp_path):
    outside = tmp_path / "home"
    before = outside_files(outside)
    (outside / ".abgraph-objects").write_text("{}")  # even a marker does not make it ours
    before = snapshot(outside)

    linked = small(tmp_path / "linked")
    shutil.rmtree(linked.directory / "objects")
    (linked.directory / "objects").symlink_to(outside)
    code, _, err = cli("gc", linked.directory)
    assert code == 2 and "symbolic link" in err

    inner = small(tmp_path / "inner")
    (inner.directory / "objects" / "a").mkdir(exist_ok=True)
    shutil.rmtree(inner.directory / "objects" / "a")
    (inner.directory / "objects" / "a").symlink_to(outside / "a")        # a linked blob folder
    target = outside / "a" / BLOB_NAME
    (inner.directory / "objects" / "b").mkdir(exist_ok=True)
    (inner.directory / "objects" / "b" / BLOB_NAME).symlink_to(target)   # a linked blob
    (inner.directory / "objects" / "c").mkdir(exist_ok=True)
    (inner.directory / "objects" / "c" / "notes.txt").write_text("mine, not a blob")
    code, out, err = cli("gc", inner.directory)
    assert code == 0, err
    assert snapshot(outside) == before
    assert (inner.directory / "objects" / "b" / BLOB_NAME).is_symlink()
    assert (inner.directory / "objects" / "c" / "notes.txt").read_text() == "mine, not a blob"


# -- paths from the index ------------------------------------------------------------------
@pytest.mark.parametrize("digest", ["../../victim/secret.txt", "/etc/hostname", "ab/../../x", "A" * 64, ""])
def test_a_digest_is_checked_before_any_path_is_built(tmp_path, digest):
    store = ObjectStore(tmp_path / "objects")
    for use in (store.path, store.exists, store.get, store.delete):
        with pytest.raises(BlobError, match="not a blob digest"):
            use(digest)


def test_crafted_digests_in_the_index_are_refused(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text("private")
    exp = small(tmp_path / "exp")
    records = list(records_by_id(exp.directory).values())
    for column, value in (("payload", "../../victim/secret.txt"),
                          ("payload", str(victim / "secret.txt")),
                          ("blobs", json.dumps(["../../victim/secret.txt"]))):
        crafted = copy_experiment(exp.directory, tmp_path / f"crafted-{column}-{len(value)}")
        set_column(crafted, records[-1].id, column, value)
        # browsing never reads the blob digests (most of a real row): `ls` has none to refuse
        browse = ["ls"] if column == "payload" else ["show", records[-1].id]
        for command in (browse, ["verify"], ["gc"]):
            code, _, err = cli(command[0], crafted, *command[1:])
            assert code == 2 and "damaged or crafted" in err, (command, err)
        with pytest.raises(DamagedIndex):
            abgraph.Experiment.restore(crafted, slim=False)
    assert (victim / "secret.txt").read_text() == "private"


def test_browsing_creates_nothing(tmp_path):
    exp = small(tmp_path / "exp")
    nowhere = tmp_path / "nowhere" / "objects"
    set_meta(exp.directory, "objects", str(nowhere))
    set_meta(exp.directory, "schema_version", 1)  # an old experiment: browsing does not upgrade it
    before = snapshot(exp.objects.location)
    names = set(snapshot(exp.directory))
    for command in (["ls"], ["report"], ["show", records_by_id(exp.directory).popitem()[0][:8]]):
        code, _, err = cli(command[0], exp.directory, *command[1:])
        assert code == 0, err
    restored = abgraph.Experiment.restore(exp.directory)
    with pytest.raises(BlobError, match="missing"):
        restored.graph.nodes[0].restore()
    restored.index.close()
    assert not (tmp_path / "nowhere").exists()
    assert set(snapshot(exp.directory)) == names and snapshot(exp.objects.location) == before


# -- crafted graphs ----------------------------------------------------------------------
def test_a_cycle_in_the_index_is_refused_not_looped(tmp_path):
    exp = small(tmp_path / "exp")
    ids = list(records_by_id(exp.directory))
    self_loop = copy_experiment(exp.directory, tmp_path / "self-loop")
    execute_sql(self_loop, ("UPDATE nodes SET parents=? WHERE id=?", (ids[1], ids[1])))
    cycle = copy_experiment(exp.directory, tmp_path / "cycle")
    execute_sql(cycle, ("UPDATE nodes SET parents=? WHERE id=?", (ids[1], ids[0])))
    commands = [cli_command("ls", self_loop), cli_command("draw", cycle, "-o", tmp_path / "cycle.svg")]
    started = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    for command, process in zip(commands, started):
        try:
            _, err = process.communicate(timeout=90)
        finally:
            process.kill()
        assert process.returncode == 2, (command, err)
        assert ("cycle" in err or "lists itself" in err) and "Traceback" not in err, (command, err)
    for command in ("ls", "report", "verify"):  # in this process, now that nothing loops
        code, _, err = cli(command, cycle)
        assert code == 2 and "cycle" in err, (command, err)


@pytest.mark.parametrize("column, value, expected", [
    ("properties", "[1, 2]", "not a JSON object"),
    ("metrics", "not json", "not JSON"),
    ("blobs", '{"a": 1}', "not a list of blob digests"),
    ("attributes", "[3]", "not a list of names"),
    ("tags", '["seed:1", 3]', "not a list of names"),
    ("parents", b"\x07", "not the ids of other nodes"),
    ("status", "exploded", "not one of done"),
    ("recipe", b"\x00", "not a string"),
    ("duration", "'slow'", "not a number"),
])
def test_rows_of_the_wrong_shape_give_a_clear_error(tmp_path, column, value, expected):
    exp = small(tmp_path / "exp")
    node = list(records_by_id(exp.directory))[-1]
    set_column(exp.directory, node, column, value)
    browsing = [["ls"], ["report"], ["draw", "-o", tmp_path / "g.svg"]]
    for command in browsing if column != "blobs" else [["show", node]]:  # browsing skips the blobs
        code, _, err = cli(command[0], exp.directory, *command[1:])
        assert code == 2 and expected in err and node[:12] in err, (command, err)


def test_a_dropped_table_gives_a_clear_error(tmp_path):
    exp = small(tmp_path / "exp")
    node = list(records_by_id(exp.directory))[-1]
    for table, commands in (("nodes", ["ls", "report", "verify"]), ("kinds", ["ls", "report", "verify"]),
                            ("results", ["ls", "report", "verify"]),
                            ("node_blobs", [["show", node], "verify"])):  # browsing reads no blob digests
        crafted = copy_experiment(exp.directory, tmp_path / table)
        execute_sql(crafted, f"DROP TABLE {table}")
        for command in commands:
            command = [command] if isinstance(command, str) else command
            code, _, err = cli(command[0], crafted, *command[1:])
            assert code == 2 and "damaged" in err and f"no such table: {table}" in err, (command, err)


def test_hostile_tags_reach_no_terminal_and_break_no_drawing(tmp_path):
    exp = small(tmp_path / "exp")
    node = list(records_by_id(exp.directory))[-1]
    hostile = ["\x1b[2J\x1b[31mred", "<b>&amp;</b>\"'", "form\x0cfeed", "bell\x07", "new\nline"]
    execute_sql(exp.directory, ("UPDATE nodes SET tags=? WHERE id=?", (json.dumps(hostile), node)))
    for command in ("ls", "report"):
        code, out, err = cli(command, exp.directory)
        assert code == 0, err
        assert not any(c in out for c in "\x1b\x0c\x07"), out
        assert "\\x1b[2J" in out and "form\\x0cfeed" in out
    code, out, err = cli("draw", exp.directory, "-o", tmp_path / "graph.svg")
    assert code == 0, err
    svg = (tmp_path / "graph.svg").read_text()
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in svg and "\x1b" not in svg


# -- odd files in objects/ ---------------------------------------------------------------------
def test_a_fifo_and_a_huge_sparse_file_in_objects(tmp_path):
    """verify neither blocks on a FIFO nor reads a 512 MiB file into memory."""
    exp = small(tmp_path / "exp")
    objects = exp.directory / "objects"
    some_blob = next(iter(records_by_id(exp.directory).values())).payload
    path = ObjectStore(objects).path(some_blob)
    path.unlink()
    os.mkfifo(path)                                # a referenced blob replaced by a FIFO
    os.mkfifo(objects / "a" / ("f" * 63)) if (objects / "a").is_dir() else None
    (objects / "e").mkdir(exist_ok=True)
    with open(objects / "e" / ("e" * 63), "wb") as sparse:
        sparse.truncate(512 << 20)
    code = ("import resource, sys; from abgraph.cli import main; import abgraph.experiment; "
            "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; before = peak(); "
            "status = main(['verify', sys.argv[1]]); print('GREW', peak() - before); sys.exit(status)")
    result = subprocess.run([sys.executable, "-c", code, str(exp.directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"corrupted blob {'e' * 64}" in result.stdout
    assert f"is missing 1 blob(s): {some_blob[:12]}" in result.stdout
    grew_kib = int(result.stdout.split("GREW ")[1].split()[0])
    assert grew_kib < 128 * 1024, result.stdout  # the peak memory of verify itself, not 512 MiB
    with pytest.raises(BlobError, match="not a regular file|missing"):
        abgraph.Experiment.restore(exp.directory).graph.node(
            next(iter(records_by_id(exp.directory)))).restore()


def test_gc_through_an_fsspec_location_keeps_the_same_rules(tmp_path):
    pytest.importorskip("fsspec")
    from abgraph.store import FsspecObjectStore
    url = f"file://{tmp_path / 'bucket' / 'objects'}"
    exp = small(tmp_path / "exp", objects=url)
    orphan = FsspecObjectStore(url).put(b"garbage")
    before = snapshot(tmp_path / "bucket")
    code, out, _ = cli("gc", exp.directory, "--dry-run")
    assert code == 0 and f"would delete {orphan}" in out and snapshot(tmp_path / "bucket") == before
    code, out, err = cli("gc", exp.directory)
    assert code == 0 and "deleted 1 unreferenced" in out, err
    assert cli("verify", exp.directory)[0] == 0

    outside = tmp_path / "home"
    kept = outside_files(outside)
    set_meta(exp.directory, "objects", f"file://{outside}")
    code, _, err = cli("gc", exp.directory)
    assert code == 2 and "not created by abgraph" in err
    assert snapshot(outside) == kept
