"""Shared helpers: a small pruning study written the way users write it, run as a
real script in a subprocess (classes in `__main__`), and the same study imported
in-process for tests that need to look inside a run.

Every experiment lives in a real folder under pytest's tmp_path: a real SQLite
index, real blobs, real `dot` renders, real subprocesses.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import importlib.util
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from abgraph.cli import main as cli_main
from abgraph.store import Index, ObjectStore

ABGRAPH_CLI = Path(sys.executable).with_name("abgraph")

# The user's script. `#EXTEND` is where a test adds code (e.g. its own `extend`,
# which adds nodes to the graph before it runs).
STUDY_BODY = r'''
"""A small pruning study: train an MLP at two learning rates, prune each."""
import json
import os
import sys
from collections import Counter

import torch
import torch.nn.utils.prune as prune
from torch import nn

import abgraph

CALLS = Counter()  # how often each recipe and probe ran in this process


class MLP(nn.Module):
    def __init__(self, inputs, hidden, outputs):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, outputs)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


class State(abgraph.ExperimentState):
    PROPERTIES = ["dataset_name", "hidden"]
    NONHASHED_ATTRIBUTES = ["train_data", "eval_data", "model"]

    def initialize_state(self, **properties):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=generator)
        y = (x[:, 0] + x[:, 1] > 0).long()
        self.train_data = (x[:64].clone(), y[:64].clone())
        self.eval_data = (x[64:].clone(), y[64:].clone())
        torch.manual_seed(0)
        self.model = MLP(4, self.hidden, 2)


class Train(abgraph.Recipe):
    PROPERTIES = ["epochs", "lr"]

    def __init__(self, epochs, lr):
        self.epochs, self.lr = epochs, lr

    def run(self, state):
        CALLS["Train"] += 1
        torch.manual_seed(0)
        optimizer = torch.optim.SGD(state.model.parameters(), lr=self.lr)
        x, y = state.train_data
        for _ in range(self.epochs):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(state.model(x), y)
            loss.backward()
            optimizer.step()
        state.metrics["loss"] = loss.item()
        state.metrics["device"] = str(abgraph.current_device())
        return state


class Prune(abgraph.Recipe):
    PROPERTIES = ["amount", "layers"]

    def __init__(self, amount, layers=("fc1",)):
        self.amount, self.layers = amount, layers

    def run(self, state):
        CALLS["Prune"] += 1
        for name in sorted(self.layers):
            prune.l1_unstructured(getattr(state.model, name), "weight", amount=self.amount)
        return state


@abgraph.function
def accuracy(state):
    CALLS["accuracy"] += 1
    x, y = state.eval_data
    with torch.no_grad():
        predicted = state.model(x).argmax(1)
    return {"accuracy": (predicted == y).float().mean().item(), "n": len(y)}


LRS = [0.05, 0.5]


def build(directory, lrs=LRS):
    exp = abgraph.Experiment(directory, state_class=State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    nodes = {"root": root}
    for lr in lrs:
        with exp.tag(f"lr:{lr}"):
            trained = Train(epochs=3, lr=lr)(root)
            accuracy(trained)
            with exp.tag("pruned"):
                pruned = Prune(amount=0.5, layers={"fc1", "fc2"})(trained)
                accuracy(pruned)
        nodes[f"train:{lr}"], nodes[f"prune:{lr}"] = trained, pruned
    return exp, nodes


def extend(exp, nodes):
    """A test's script redefines this to add nodes (name -> promise) to the study."""
'''

STUDY_MAIN = r'''

def main(directory):
    exp, nodes = build(directory)
    extend(exp, nodes)
    result = {"ids": {name: promise.id for name, promise in nodes.items()}}
    if not os.environ.get("ABGRAPH_TEST_BUILD_ONLY"):
        report = exp.run(executor=abgraph.SerialExecutor(), raise_on_failure=False)
        result.update(executed=report.executed, cached=report.cached, failed=report.failed,
                      blocked=report.blocked, calls=dict(CALLS))
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
'''

# node names of the base study, as keys of `ids`
BASE_NODES = ["root", "train:0.05", "prune:0.05", "train:0.5", "prune:0.5"]


def write_script(directory, extra: str = "", name: str = "study.py") -> Path:
    """Write the study (plus `extra` code) as a user script; return its path."""
    path = Path(directory) / name
    path.write_text(STUDY_BODY + extra + STUDY_MAIN)
    return path


def start_script(script, experiment_dir, env=None, build_only=False) -> subprocess.Popen:
    """Start `python script experiment_dir` in a fresh process (see `finish_script`)."""
    environment = dict(os.environ, **(env or {}))
    environment.pop("ABGRAPH_TEST_BUILD_ONLY", None)
    if build_only:
        environment["ABGRAPH_TEST_BUILD_ONLY"] = "1"
    return subprocess.Popen([sys.executable, str(script), str(experiment_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=environment)


def finish_script(process: subprocess.Popen, timeout=120) -> dict:
    """Wait for a script; return what it printed on its RESULT line (ids, and what
    the run executed, cached, failed, blocked, and the recipe calls it made)."""
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"script failed ({process.returncode}):\n{stdout}\n{stderr}"
    found = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert found, f"no RESULT line in:\n{stdout}\n{stderr}"
    return json.loads(found[-1][len("RESULT "):])


def run_script(script, experiment_dir, env=None, build_only=False, timeout=120) -> dict:
    return finish_script(start_script(script, experiment_dir, env, build_only), timeout)


def run_python(code: str, *args, cwd=None, timeout=120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter (nothing of the study importable)."""
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def cli_command(*args) -> list:
    """The `abgraph` console script (or `python -m abgraph.cli` where it is missing)."""
    base = [str(ABGRAPH_CLI)] if ABGRAPH_CLI.exists() else [sys.executable, "-m", "abgraph.cli"]
    return base + [str(a) for a in args]


def run_cli(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), capture_output=True, text=True, timeout=timeout)


def run_cli_many(commands, timeout=120) -> list:
    """Run several `abgraph` commands at once (each pays for importing torch);
    return their CompletedProcesses in order."""
    started = [subprocess.Popen(cli_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for args in commands]
    results = []
    for args, process in zip(commands, started):
        stdout, stderr = process.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(cli_command(*args), process.returncode,
                                                   stdout, stderr))
    return results


def cli_in_process(*args):
    """The `abgraph` command, in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def records_by_id(directory) -> dict:
    """Every stored record of an experiment folder, by node id."""
    index = Index(directory)
    try:
        return {r.id: r for r in index.records()}
    finally:
        index.close()


def blob_files(directory) -> dict:
    """digest -> path of every blob under `directory/objects` (temporary files excluded)."""
    store = ObjectStore(Path(directory) / "objects")
    return {digest: store.path(digest) for digest in store.digests()}


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def copy_experiment(source, destination) -> Path:
    """A copy as a user's `cp -r` of a closed experiment makes: SQLite's -shm file
    and an empty -wal, there while some test still has the source open, are left out."""
    def left_out(folder, names):
        return [name for name in names if name.endswith("-shm")
                or (name.endswith("-wal") and not os.path.getsize(os.path.join(folder, name)))]
    shutil.copytree(source, destination, ignore=left_out)
    return Path(destination)


# -- fixtures ------------------------------------------------------------------

@pytest.fixture(scope="session")
def study_script(tmp_path_factory) -> Path:
    return write_script(tmp_path_factory.mktemp("script"))


@pytest.fixture(scope="session")
def study_runs(study_script, tmp_path_factory):
    """The study script run four times side by side, each into a fresh folder:
    `main` (hash seed 0), `fresh` (hash seed 0 again), `other_seed` (hash seed 5),
    `moved` (hash seed 0, the same script copied to another folder)."""
    seeds = {"main": "0", "fresh": "0", "other_seed": "5", "moved": "0"}
    directories = {name: tmp_path_factory.mktemp(name) / "experiment" for name in seeds}
    scripts = dict.fromkeys(seeds, study_script)
    scripts["moved"] = Path(shutil.copy(study_script, tmp_path_factory.mktemp("moved_script")))
    started = {name: start_script(scripts[name], directories[name], env={"PYTHONHASHSEED": seed})
               for name, seed in seeds.items()}
    return {name: SimpleNamespace(directory=directories[name], ids=result["ids"], result=result,
                                  script=scripts[name])
            for name, result in ((n, finish_script(p)) for n, p in started.items())}


@pytest.fixture(scope="session")
def study_run(study_runs):
    """The study run once by a user script in a subprocess (read-only: copy it to change it)."""
    return study_runs["main"]


@pytest.fixture(scope="session")
def study_rerun(study_runs):
    """The same script run again into a fresh folder, in a process with another hash seed."""
    return study_runs["other_seed"]


@pytest.fixture(scope="session")
def study_fresh(study_runs):
    """The same script run again into a fresh folder with the same hash seed."""
    return study_runs["fresh"]


@pytest.fixture(scope="session")
def study_moved(study_runs):
    """The same script, copied to another folder, run into a fresh folder."""
    return study_runs["moved"]


@pytest.fixture
def study_copy(study_run, tmp_path) -> Path:
    """A private copy of the study's experiment folder, free to change."""
    return copy_experiment(study_run.directory, tmp_path / "copy")


@pytest.fixture(scope="session")
def study(study_script):
    """The study's module imported in-process (its classes have real source)."""
    name = "abgraph_test_study"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, study_script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# The study again, with Prune's code edited (random instead of L1: same properties,
# new code) and a recipe that fails, run into a copy of the study's folder: both
# Prune versions and a failed node side by side.
EDITED_PRUNE = ("        for name in sorted(self.layers):\n"
                "            prune.l1_unstructured(", "        torch.manual_seed(1)\n"
                "        for name in sorted(self.layers):\n            prune.random_unstructured(")
EXPLODE = r'''

class Explode(abgraph.Recipe):
    def run(self, state):
        raise ValueError("exploded on purpose")


def extend(exp, nodes):
    with exp.tag("broken"):
        nodes["explode"] = Explode()(nodes["train:0.05"])
'''


@pytest.fixture(scope="session")
def edited_study(study_run, tmp_path_factory):
    """The study's folder plus a run of the edited study: `ids` are the study's nodes,
    `edited` the edited run's (new Prune nodes, and `explode`, which failed)."""
    base = tmp_path_factory.mktemp("edited")
    directory = copy_experiment(study_run.directory, base / "experiment")
    assert STUDY_BODY.count(EDITED_PRUNE[0]) == 1
    script = base / "study.py"
    script.write_text(STUDY_BODY.replace(*EDITED_PRUNE) + EXPLODE + STUDY_MAIN)
    result = run_script(script, directory)
    assert result["failed"] == [result["ids"]["explode"]]
    return SimpleNamespace(directory=directory, ids=study_run.ids, edited=result["ids"])


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray head (no CPUs) and two worker nodes `w0`, `w1` (1 CPU and a custom
    resource of their name each), started with `ray start`; stopped after the module."""
    pytest.importorskip("ray")
    from ray_cluster import LocalCluster
    cluster = LocalCluster()
    try:
        cluster.add_worker("w0")
        cluster.add_worker("w1")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server on a free localhost port, checking credentials
    (moto's IAM: after the first four requests, which make our user and its key,
    every request must be signed with that key). Yields the environment a
    process needs to use it (AWS_ENDPOINT_URL and the key); bucket `abgraph` exists."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto")
    from s3_server import start_s3_server
    server, environment = start_s3_server()
    try:
        yield environment
    finally:
        server.terminate()
        server.wait(timeout=10)


# The index as abgraph wrote it under schemas 1 and 2: a node's blob digests in its
# row, its parents and tags in tables of their own.
_OLD_LAYOUT = """
CREATE TABLE old_nodes (
    id TEXT PRIMARY KEY, seq INTEGER NOT NULL, recipe TEXT NOT NULL,
    recipe_properties TEXT NOT NULL, recipe_version TEXT NOT NULL,
    properties TEXT NOT NULL, state_class TEXT NOT NULL, status TEXT NOT NULL,
    error TEXT, started REAL, finished REAL, duration REAL, payload TEXT,
    attributes TEXT NOT NULL, blobs TEXT NOT NULL, metrics TEXT NOT NULL,
    environment TEXT NOT NULL);
CREATE TABLE edges (
    child TEXT NOT NULL, position INTEGER NOT NULL, parent TEXT NOT NULL,
    PRIMARY KEY (child, position));
CREATE TABLE tags (node TEXT NOT NULL, tag TEXT NOT NULL, PRIMARY KEY (node, tag));
"""


def to_old_layout(directory, schema: int = 2) -> None:
    """Rewrite a closed experiment's index as an abgraph of index schema 1 or 2 wrote it."""
    with contextlib.closing(sqlite3.connect(Path(directory) / "abgraph.sqlite")) as db, db:
        db.executescript(_OLD_LAYOUT)
        rows = db.execute(
            "SELECT nodes.id, seq, recipe, recipe_properties, recipe_version, properties, state_class, status, "
            "error, started, finished, duration, payload, attributes, digests, metrics, environment, "
            "parents, tags FROM nodes JOIN node_blobs ON node_blobs.node = nodes.id "
            "JOIN kinds ON kinds.id = nodes.kind ORDER BY nodes.rowid"
        ).fetchall()
        for row in rows:
            db.execute(f"INSERT INTO old_nodes VALUES ({','.join('?' * 17)})", row[:17])
            db.executemany("INSERT INTO edges VALUES (?, ?, ?)",
                           [(row[0], i, parent) for i, parent in enumerate(row[17].split())])
            db.executemany("INSERT INTO tags VALUES (?, ?)", [(row[0], tag) for tag in json.loads(row[18])])
        db.executescript("DROP TABLE nodes; DROP TABLE node_blobs; DROP TABLE kinds; "
                         "ALTER TABLE old_nodes RENAME TO nodes; "
                         "CREATE INDEX nodes_seq ON nodes (seq);")
        db.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(schema),))
