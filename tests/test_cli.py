"""Issue 3, item 8: the `abgraph` command, run as the installed console script.

Every process pays for starting Python and importing torch, so the commands are
prepared once per module and run side by side; each test checks one of them. The
variations of a command run through `abgraph.cli.main` in the test process.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from abgraph import Experiment, ExperimentState, SerialExecutor
from abgraph.cli import main
from abgraph.store import ObjectStore
from conftest import blob_files, records_by_id, copy_experiment, run_cli_many, sha256


def add_orphan(directory, content=b"no record uses these bytes") -> str:
    digest = hashlib.sha256(content).hexdigest()
    path = ObjectStore(Path(directory) / "objects").path(digest)
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return digest


def run_cli_here(*args) -> subprocess.CompletedProcess:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([str(a) for a in args])
    return subprocess.CompletedProcess(["abgraph", *args], code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def cli(study_run, tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    experiment, ids = study_run.directory, study_run.ids
    records = records_by_id(experiment)
    pruned = records[ids["prune:0.5"]]

    # one copy with a corrupted tensor blob, a deleted payload and an orphan
    broken = copy_experiment(experiment, base / "broken")
    corrupted = sorted(records[ids["root"]].blobs)[0]
    path = blob_files(broken)[corrupted]
    data = bytearray(path.read_bytes())
    data[:4] = bytes(b ^ 0xFF for b in data[:4])
    path.write_bytes(bytes(data))
    blob_files(broken)[pruned.payload].unlink()
    broken_orphan = add_orphan(broken)

    orphaned = copy_experiment(experiment, base / "orphaned")
    orphan = add_orphan(orphaned)

    collected = copy_experiment(experiment, base / "collected")
    collected_orphan = add_orphan(collected, b"garbage to collect")
    stray = ObjectStore(collected / "objects").path(collected_orphan).parent / ".tmp-123-abc"
    stray.write_bytes(b"left by a killed writer")
    before_gc = {d: sha256(p) for d, p in blob_files(collected).items() if d != collected_orphan}

    empty = base / "empty"
    empty.mkdir()
    newer = copy_experiment(experiment, base / "newer")
    with sqlite3.connect(newer / "abgraph.sqlite") as db:
        db.execute("UPDATE meta SET value='999' WHERE key='schema_version'")
    garbage = base / "garbage"
    garbage.mkdir()
    (garbage / "abgraph.sqlite").write_bytes(b"this is not an SQLite database " * 8)

    out = base / "out"
    out.mkdir()
    # the installed console script, in its own process
    commands = {
        "ls": ["ls", experiment],
        "verify_broken": ["verify", broken],
        "gc": ["gc", collected],
        "ls_empty": ["ls", empty],
        "ls_garbage": ["ls", garbage],
    }
    done = dict(zip(commands, run_cli_many(list(commands.values()))))
    # more of the same through `abgraph.cli.main`, in this process (each process costs ~1.5 s)
    in_process = {
        "ls_pruned": ["ls", experiment, "--filter", "pruned"],
        "ls_two_filters": ["ls", experiment, "--filter", "lr:0.5", "--filter", "!pruned"],
        "ls_leaves": ["ls", experiment, "--leaves"],
        "show": ["show", experiment, ids["prune:0.5"][:10], "--json"],
        "report": ["report", experiment],
        "show_unknown": ["show", experiment, "zzzz"],
        "draw": ["draw", experiment, "-o", out / "graph.svg"],
        "ls_newer": ["ls", newer],
        "verify": ["verify", experiment],
        "verify_orphan": ["verify", orphaned],
        "verify_after_gc": ["verify", collected],
    }
    done.update((name, run_cli_here(*args)) for name, args in in_process.items())
    return SimpleNamespace(run=done, ids=ids, out=out, corrupted=corrupted, pruned=pruned,
                           broken_orphan=broken_orphan, orphan=orphan, collected=collected,
                           collected_orphan=collected_orphan, stray=stray, before_gc=before_gc,
                           empty=empty)


def ok(result):
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


def listed_ids(stdout):
    header, *rows = lines(stdout)
    assert header.split()[0] == "id"
    return sorted(line.split()[0] for line in rows)


def short(ids, *names):
    return sorted(ids[name][:12] for name in names)


def test_ls(cli):
    output = lines(ok(cli.run["ls"]))
    assert len(output) == 1 + 5   # the header, then the nodes
    assert listed_ids(cli.run["ls"].stdout) == short(cli.ids, *cli.ids)
    pruned_line = next(line for line in output if line.startswith(cli.ids["prune:0.5"][:12]))
    assert "Prune" in pruned_line and "done" in pruned_line and "lr:0.5,pruned" in pruned_line


def test_ls_filter_and_leaves(cli):
    assert listed_ids(ok(cli.run["ls_pruned"])) == short(cli.ids, "prune:0.05", "prune:0.5")
    assert listed_ids(ok(cli.run["ls_two_filters"])) == short(cli.ids, "train:0.5")
    assert listed_ids(ok(cli.run["ls_leaves"])) == short(cli.ids, "prune:0.05", "prune:0.5")


def test_show_a_node_by_prefix(cli):
    shown = json.loads(ok(cli.run["show"]))
    assert shown["id"] == cli.ids["prune:0.5"]
    assert shown["parents"] == [cli.ids["train:0.5"]]
    assert shown["recipe"].endswith("Prune")
    assert shown["tags"] == ["lr:0.5", "pruned"]
    assert shown["status"] == "done"
    assert set(shown["results"]["accuracy"]) == {"accuracy", "n"}
    assert shown["environment"]["device"] == "cpu"
    assert shown["blobs"] == len(cli.pruned.blobs) > 0  # read for this node alone
    assert "derived_from" not in shown  # a run's bookkeeping, never stored: it would always read empty


def test_draw_writes_the_file(cli):
    stdout = ok(cli.run["draw"])
    path = cli.out / "graph.svg"
    assert stdout.strip() == str(path)
    text = path.read_text()
    assert "<svg" in text and "Prune" in text and cli.ids["root"][:8] in text


def test_report_is_a_metrics_table(cli):
    output = lines(ok(cli.run["report"]))
    header = output[0].split()
    for column in ("id", "recipe", "tags", "status", "loss", "accuracy.accuracy"):
        assert column in header, header
    assert len(output) == 6
    assert any(line.split()[0] == cli.ids["train:0.5"][:12] for line in output[1:])


def test_verify_a_clean_experiment(cli):
    output = ok(cli.run["verify"])
    assert "blobs checked" in output and lines(output)[-1] == "clean"
    assert "orphan" not in output and "missing" not in output and "corrupted" not in output


def test_verify_names_corrupted_and_missing_blobs_and_orphans(cli):
    result = cli.run["verify_broken"]
    assert result.returncode != 0
    assert f"corrupted blob {cli.corrupted}" in result.stdout
    missing_lines = [line for line in lines(result.stdout) if "missing" in line]
    assert len(missing_lines) == 1  # only the node whose payload is gone
    assert cli.pruned.id in missing_lines[0] and cli.pruned.payload[:12] in missing_lines[0]
    assert f"orphan blob {cli.broken_orphan}" in result.stdout
    assert lines(result.stdout)[-1] != "clean"


def test_an_orphan_alone_is_listed_but_clean(cli):
    output = ok(cli.run["verify_orphan"])
    assert f"orphan blob {cli.orphan}" in output
    assert lines(output)[-1] == "clean"


def test_gc_deletes_only_what_no_record_uses(cli):
    output = ok(cli.run["gc"])
    assert "deleted 1 unreferenced blob" in output
    after = blob_files(cli.collected)
    assert cli.collected_orphan not in after
    assert {d: sha256(p) for d, p in after.items()} == cli.before_gc  # record blobs intact
    assert not cli.stray.exists()
    verified = ok(cli.run["verify_after_gc"])
    assert lines(verified)[-1] == "clean" and "orphan" not in verified


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    assert result.stdout == ""
    error = result.stderr.strip().splitlines()
    assert len(error) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in error[0], error[0]


def test_a_folder_that_is_not_an_experiment(cli):
    assert_one_line_error(cli.run["ls_empty"], "not an abgraph experiment", str(cli.empty))
    assert list(cli.empty.iterdir()) == []  # browsing created nothing


def test_an_index_newer_than_this_version(cli):
    assert_one_line_error(cli.run["ls_newer"], "schema 999", "upgrade")


def test_an_unknown_id_prefix(cli):
    assert_one_line_error(cli.run["show_unknown"], "zzzz")


def test_a_corrupted_index_file(cli):
    assert_one_line_error(cli.run["ls_garbage"], "not an abgraph")


class Numbered(ExperimentState):
    PROPERTIES = ["k"]


def test_a_reader_that_stops_early_is_no_error(tmp_path):
    """`abgraph ls DIR | head -1` on a listing larger than a pipe holds: the closed
    pipe ends the command quietly."""
    exp = Experiment(tmp_path / "exp", state_class=Numbered)
    for k in range(3000):
        exp.spawn_new_tree(k=k)
    exp.run(executor=SerialExecutor())
    command = [sys.executable, "-m", "abgraph.cli", "ls", str(tmp_path / "exp")]
    listing = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert listing.stdout.readline().startswith(b"id ")
    listing.stdout.close()
    assert listing.wait(timeout=60) == 141
    assert listing.stderr.read() == b""
