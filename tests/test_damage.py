"""Damage healed and stale beliefs dropped, on real folders and real processes: a
node whose blobs are missing or corrupted is recomputed by the next run, no
recipe starts from a payload that fails its hashes, a damaged index is rebuilt
from what is intact, a long-lived process re-writes blobs a gc deleted, and a
stored child always derives from its stored parent."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

import abgraph
from abgraph.executors.task import StateCache
from abgraph.store import BlobError, Index, NodeRecord
from conftest import (BASE_NODES, blob_files, copy_experiment, finish_script, records_by_id, run_cli,
                      run_script, start_script, write_script)
from test_crafted_folders import SCRIPT_HEAD, Scale, Weights, cli, small

NEW_CHILD = r'''
def extend(exp, nodes):
    nodes["prune:0.3"] = Prune(amount=0.3, layers={"fc1"})(nodes["train:0.5"])
'''


def flip(path, offset=0):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def new_blob_of(records, node_id) -> str:
    """A tensor blob `node_id` made (its parent does not have it)."""
    record = records[node_id]
    return sorted(set(record.blobs) - set(records[record.parents[0]].blobs))[0]


def test_missing_and_corrupted_blobs_are_recomputed_by_the_next_run(study_run, tmp_path):
    ids = study_run.ids
    records = records_by_id(study_run.directory)
    deleted = copy_experiment(study_run.directory, tmp_path / "deleted")
    blob_files(deleted)[new_blob_of(records, ids["prune:0.5"])].unlink()
    flipped = copy_experiment(study_run.directory, tmp_path / "flipped")
    flip(blob_files(flipped)[new_blob_of(records, ids["train:0.5"])])
    started = [start_script(study_run.script, deleted),
               start_script(write_script(tmp_path, NEW_CHILD), flipped)]
    deleted_run, flipped_run = (finish_script(p) for p in started)

    assert deleted_run["executed"] == [ids["prune:0.5"]], deleted_run
    # the corrupted parent is recomputed before its new child is built on it
    assert flipped_run["executed"] == [ids["train:0.5"], flipped_run["ids"]["prune:0.3"]], flipped_run
    for folder in (deleted, flipped):
        result = run_cli("verify", folder)
        assert result.returncode == 0 and "clean" in result.stdout, result.stdout
    healed = records_by_id(flipped)
    assert healed[ids["train:0.5"]].blobs == records[ids["train:0.5"]].blobs  # its tensors bit for bit again
    assert {healed[i].status for i in healed} == {"done"}


def test_a_run_never_loads_a_payload_that_fails_its_hashes(tmp_path):
    exp = small(tmp_path / "exp")
    record = records_by_id(exp.directory)[exp.spawn_new_tree(width=4).id]
    flip(exp.objects.path(record.blobs[0]), offset=3)
    with pytest.raises(BlobError, match="corrupted"):
        StateCache().get(record.id, record.payload, Weights, {"width": 4}, exp.objects)
    # what the next run finds: the node marked damaged, then recomputed
    again = abgraph.Experiment(tmp_path / "exp", state_class=Weights)
    root = again.spawn_new_tree(width=4)
    Scale(factor=5.0)(root)
    report = again.run(executor=abgraph.SerialExecutor())
    assert report.ok and report.executed[0] == root.id
    assert again.graph.node(root.id).restore(verify=True).weights.tolist() == [0.0, 1.0, 2.0, 3.0]


@abgraph.function
def total(state):
    return float(state.weights.sum())


def test_a_new_probe_never_reads_a_corrupted_payload(tmp_path):
    small(tmp_path / "exp")
    again = abgraph.Experiment(tmp_path / "exp", state_class=Weights)
    node = Scale(factor=2.0)(again.spawn_new_tree(width=4))
    total(node)
    flip(again.objects.path(new_blob_of(records_by_id(tmp_path / "exp"), node.id)))
    report = again.run(executor=abgraph.SerialExecutor())
    assert report.ok and report.executed == [node.id], str(report)
    assert again.graph.node(node.id).results["total"] == 12.0


@pytest.mark.parametrize("damage", ["half overwritten", "bit flipped", "crafted row"])
def test_a_damaged_index_is_repaired_listing_what_was_lost(study_run, tmp_path, damage):
    folder = copy_experiment(study_run.directory, tmp_path / "exp")
    index = folder / "abgraph.sqlite"
    data = bytearray(index.read_bytes())
    if damage == "half overwritten":
        data[:len(data) // 2] = b"\xab" * (len(data) // 2)
    elif damage == "bit flipped":
        data[-100] ^= 0xFF  # inside the last page
    index.write_bytes(bytes(data))
    if damage == "crafted row":
        with sqlite3.connect(index) as db:
            db.execute("UPDATE node_blobs SET digests=? WHERE node=?",
                       ('["../../etc/passwd"]', study_run.ids["train:0.05"]))
    code, out, err = cli("verify", folder, "--repair")
    assert "index rebuilt" in out and "Traceback" not in err, out + err
    assert list(folder.glob("abgraph.sqlite.damaged-*")), "the damaged index is kept aside"
    if damage == "crafted row":  # the node and its descendants are listed as lost
        assert f"lost {study_run.ids['train:0.05']}" in out and f"lost {study_run.ids['prune:0.05']}" in out
        assert "3 node(s) kept" in out
    assert code == 0 and "clean" in out, out + err
    if damage != "crafted row":
        return
    result = run_script(study_run.script, folder)  # the lost nodes are computed again, the rest kept
    assert sorted(result["executed"]) == sorted([study_run.ids["train:0.05"], study_run.ids["prune:0.05"]])
    assert result["failed"] == [] and result["blocked"] == []
    assert sorted(records_by_id(folder)) == sorted(study_run.ids.values())
    assert cli("verify", folder)[0] == 0


METRICS_FAIL = {"yes": True}


class ScaleAndMeasure(Scale):
    """Stores its payload, then fails on metrics that cannot be stored (until told not to)."""

    def run(self, state):
        state = super().run(state)
        state.metrics["norm"] = object() if METRICS_FAIL["yes"] else float(state.weights.norm())
        return state


def test_a_long_lived_process_rewrites_blobs_a_gc_deleted(tmp_path):
    """A node that failed after its blobs were written left blobs no record uses;
    gc (another process) deletes them; the same process's next run must write them again."""
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Weights)
    executor = abgraph.SerialExecutor()
    node = ScaleAndMeasure(factor=9.0)(exp.spawn_new_tree(width=4))
    assert exp.run(executor=executor, raise_on_failure=False).failed == [node.id]
    result = run_cli("gc", tmp_path / "exp")
    assert result.returncode == 0 and "deleted 2 unreferenced" in result.stdout, result.stdout + result.stderr
    METRICS_FAIL["yes"] = False
    try:
        assert exp.run(executor=executor).ok
    finally:
        METRICS_FAIL["yes"] = True
    assert cli("verify", tmp_path / "exp")[0] == 0
    assert exp.graph.node(node.id).restore(verify=True).weights.tolist() == [0.0, 9.0, 18.0, 27.0]


def test_a_done_record_is_never_replaced(tmp_path):
    index = Index(tmp_path, create=True)
    payload, other = "a" * 64, "b" * 64
    index.write([NodeRecord(id="p", payload=payload)])
    index.write([NodeRecord(id="p", payload=other), NodeRecord(id="p", status="failed", error="late")])
    index.write([NodeRecord(id="c", parents=["p"], payload="c" * 64, derived_from=[other])])
    rows = {r.id: r for r in index.records()}
    assert rows["p"].payload == payload and rows["p"].status == "done"
    assert rows["c"].status == "failed" and "another run stored that parent first" in rows["c"].error
    index.write([NodeRecord(id="c", parents=["p"], payload="d" * 64, derived_from=[payload])])
    assert {r.id: r for r in index.records()}["c"].status == "done"


RACE = SCRIPT_HEAD + textwrap.dedent(r'''

    class Noise(abgraph.Recipe):
        """Nondeterministic: waits until both runs are here, then draws."""
        PROPERTIES = []

        def run(self, state):
            open(os.path.join(sys.argv[2], str(os.getpid())), "w").close()
            deadline = time.time() + 30
            while len(os.listdir(sys.argv[2])) < 2 and time.time() < deadline:
                time.sleep(0.05)
            state.weights = torch.randn(state.weights.shape)
            return state

    class PlusOne(abgraph.Recipe):
        PROPERTIES = []

        def run(self, state):
            state.weights = state.weights + 1
            return state

    exp = abgraph.Experiment(sys.argv[1], state_class=Weights)
    PlusOne()(Noise()(exp.spawn_new_tree(width=8)))
    print(exp.run(executor=abgraph.SerialExecutor(), raise_on_failure=False))
''')


def test_two_concurrent_runs_of_a_nondeterministic_recipe_keep_the_lineage(tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    (tmp_path / "barrier").mkdir()
    runs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "exp"), str(tmp_path / "barrier")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in runs:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, out + err
    exp = abgraph.Experiment.restore(tmp_path / "exp", state_class=None, slim=True)
    by_recipe = {n._ab_record.recipe.rsplit(".", 1)[-1]: n for n in exp.graph.nodes}
    noise, child = by_recipe["Noise"], by_recipe["PlusOne"]
    if child.status == "done":  # whichever run stored it built it on the stored parent
        assert torch.equal(child.restore().weights, noise.restore().weights + 1)
    else:
        assert "another run stored that parent first" in child.error
    assert noise.status == "done"
    # a rerun computes what is missing, from the stored parent
    rerun = subprocess.run([sys.executable, str(script), str(tmp_path / "exp"), str(tmp_path / "barrier")],
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    exp = abgraph.Experiment.restore(tmp_path / "exp")
    noise, child = (exp.graph.node(n.id) for n in (noise, child))
    assert child.status == "done" and torch.equal(child.restore().weights, noise.restore().weights + 1)
    assert json.loads(json.dumps(child._ab_record.parents)) == [noise.id]


CHAIN = SCRIPT_HEAD + textwrap.dedent(r'''

    class Step(abgraph.Recipe):
        PROPERTIES = ["k"]

        def run(self, state):
            state.weights = state.weights + self.k
            return state

    exp = abgraph.Experiment(sys.argv[1], state_class=Weights)
    state = exp.spawn_new_tree(width=int(sys.argv[2]))
    for k in range(int(sys.argv[3])):
        state = Step(k=k)(state)
    report = exp.run(executor=abgraph.SerialExecutor())
    print(report)
    sys.exit(0 if report.ok else 1)
''')


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem (tmpfs, mounted as root), grown to 16 MiB by `grow()`;
    skipped where no filesystem can be mounted (RLIMIT_FSIZE would fail the
    writes with EFBIG, not the ENOSPC a full disk gives)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"no small filesystem to fill here (mounting a tmpfs needs root): {made.stderr.strip()}")

    def grow():
        subprocess.run(["mount", "-o", "remount,size=16m", str(mount)], check=True)
    yield mount, grow
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


@pytest.mark.parametrize("width, nodes", [(16384, 30), (16, 600)], ids=["large blobs", "many small nodes"])
def test_disk_full_mid_run_says_so_and_a_rerun_recovers(small_disk, tmp_path, width, nodes):
    mount, grow = small_disk
    script = tmp_path / "chain.py"
    script.write_text(CHAIN)
    command = [sys.executable, str(script), str(mount / "exp"), str(width), str(nodes)]
    full = subprocess.run(command, capture_output=True, text=True, timeout=300)
    output = full.stdout + full.stderr
    assert full.returncode != 0 and "disk full:" in output and "rerun when space is freed" in output, output
    assert "cannot rollback" not in output
    grow()
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and " 0 failed" in again.stdout, again.stdout + again.stderr
    assert cli("verify", mount / "exp")[0] == 0
