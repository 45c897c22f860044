"""ProcessExecutor with real worker processes (issue 4, item 4 and the executor).

Every test writes a user script into tmp_path and runs it with a fresh Python,
the way a user does: classes live in `__main__` and there is no
`if __name__ == "__main__"` guard. The script prints one `RESULT {json}` line
with its RunReport. Worker processes are found by scanning /proc.
"""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from abgraph import Experiment
from abgraph.executors import ProcessExecutor, SerialExecutor
from abgraph.executors.process import assign_devices, default_devices, threads_per_worker
from conftest import cli_command

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and signals")

TIMEOUT = 90  # seconds, for one script run; none should come close

# What every script starts with: a state, recipes, and a way to print the report.
PRELUDE = '''
import json, os, signal, sys, time
import torch
from torch import nn
import abgraph as ab

WORK = os.environ["ABTEST_DIR"]


class State(ab.ExperimentState):
    PROPERTIES = ["seed"]
    NONHASHED_ATTRIBUTES = ["model", "data"]

    def initialize_state(self, seed):
        g = torch.Generator().manual_seed(seed)
        self.data = torch.randn(64, 4, generator=g)
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


class Train(ab.Recipe):
    PROPERTIES = ["lr", "steps"]

    def run(self, state):
        torch.manual_seed(0)
        opt = torch.optim.SGD(state.model.parameters(), lr=self.lr)
        for _ in range(self.steps):
            opt.zero_grad()
            loss = state.model(state.data).pow(2).mean()
            loss.backward()
            opt.step()
        state.metrics["loss"] = loss.item()
        state.metrics["device"] = str(ab.current_device())
        state.metrics["threads"] = torch.get_num_threads()
        return state


class Sleep(ab.Recipe):
    """Sleeps `seconds` (0 with ABTEST_FAST set: same code, same node ids), then
    changes the model; leaves a marker file when it starts."""
    PROPERTIES = ["seconds", "k"]

    def run(self, state):
        open(os.path.join(WORK, f"started-{self.k}"), "a").close()
        end = time.time() + (0 if os.environ.get("ABTEST_FAST") else self.seconds)
        while time.time() < end:
            time.sleep(0.02)
        with torch.no_grad():
            state.model[0].weight.add_(self.k)
        return state


class Boom(ab.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        raise ValueError(f"boom {self.k}")


class Die(ab.Recipe):
    """how: 'exit' (os._exit(3)), 'kill' (SIGKILL itself), 'exit-once' (exit only
    on the first attempt). Writes the dying pid to died-<how>."""
    PROPERTIES = ["how"]

    def run(self, state):
        marker = os.path.join(WORK, f"died-{self.how}")
        if self.how.endswith("-once") and os.path.exists(marker):
            return state
        with open(marker, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        if self.how.startswith("exit"):
            os._exit(3)
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)


@ab.function
def mean_output(state):
    return {"mean": state.model(state.data).mean().item()}


def finish(report, **extra):
    print("RESULT " + json.dumps(dict(
        executed=report.executed, cached=report.cached, failed=report.failed,
        blocked=report.blocked, not_run=report.not_run, errors=report.errors,
        interrupted=report.interrupted, ok=report.ok, text=str(report),
        driver_pid=os.getpid(), **extra)), flush=True)

'''


# -- helpers -------------------------------------------------------------------
def write_script(tmp_path: Path, body: str, name="script.py") -> Path:
    path = tmp_path / name
    path.write_text(PRELUDE + textwrap.dedent(body))
    return path


def script_env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ, ABTEST_DIR=str(tmp_path), PYTHONUNBUFFERED="1")
    env.pop("ABTEST_FAST", None)
    env.update(extra)
    return env


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"the script printed no RESULT line:\n{stdout}"
    return json.loads(lines[-1][len("RESULT "):])


def run_script(tmp_path: Path, script: Path, *args, check=True, **env) -> tuple[dict, subprocess.CompletedProcess]:
    done = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=tmp_path,
                          env=script_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=TIMEOUT)
    if check:
        assert done.returncode == 0, f"script failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return parse_result(done.stdout), done


def start_script(tmp_path: Path, script: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], cwd=tmp_path,
                            env=script_env(tmp_path, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def stop_group(process: subprocess.Popen) -> None:
    """Clean up a script we started (and its workers) if a test failed half-way."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        process.communicate(timeout=10)
    except Exception:
        pass


def verify(directory) -> subprocess.CompletedProcess:
    """`abgraph verify DIR`, as a user runs it."""
    return subprocess.run(cli_command("verify", directory), capture_output=True, text=True,
                          timeout=TIMEOUT)


def index_rows(directory, query="SELECT nodes.id, status, payload, error, environment "
                                "FROM nodes JOIN kinds ON kinds.id = nodes.kind"):
    db = sqlite3.connect(f"file:{Path(directory) / 'abgraph.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


def records(directory) -> dict:
    """node id -> {status, payload, error, environment}."""
    return {i: {"status": s, "payload": p, "error": e, "environment": json.loads(env)}
            for i, s, p, e, env in index_rows(directory)}


def done_count(directory) -> int:
    try:
        return index_rows(directory, "SELECT count(*) FROM nodes WHERE status='done'")[0][0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def _stat(pid):
    """(state, ppid) from /proc/<pid>/stat, or None if the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def alive(pid) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")  # a zombie is dead, only not reaped


def worker_children(parent_pid) -> list:
    """Live child processes of the driver `parent_pid`: its workers, forked or fresh
    (a forked worker shares the driver's command line, so children are counted)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(entry)
        if stat and stat[1] == parent_pid and alive(entry):
            found.append(int(entry))
    return found


def wait_until(condition, timeout, message, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {message}")


def no_temporaries(directory) -> list:
    return sorted(str(p) for p in (Path(directory) / "objects").rglob(".tmp-*"))


# -- the default executor --------------------------------------------------------
def test_default_run_uses_worker_processes_for_main_classes(tmp_path):
    script = write_script(tmp_path, '''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        for lr in (0.1, 0.2):
            mean_output(Train(lr=lr, steps=3)(root))
        finish(exp.run(), executor=type(ab.executors.default_executor()).__name__)
    ''')
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["executor"] == "ProcessExecutor"
    assert result["ok"] and len(result["executed"]) == 3, result["text"]

    graph = Experiment.restore(tmp_path / "exp").graph
    assert len(graph) == 3
    for node in graph.nodes:
        assert node.status == "done"
        environment = node._ab_record.environment
        assert environment["pid"] != result["driver_pid"], "the node ran in the driver, not a worker"
        assert environment["device"] == "cpu"
    for node in graph.leaves:
        assert set(node.results) == {"mean_output"}


def test_forked_workers_start_with_torchs_optimizer_imports_done(tmp_path):
    """A process's first torch optimizer imports torch._dynamo (about a second);
    the driver does it once before forking, so no worker pays it at its first Train."""
    script = write_script(tmp_path, '''
        class Warmth(ab.Recipe):
            def run(self, state):
                state.metrics["warm"] = "torch._dynamo" in sys.modules  # before any optimizer here
                return state

        exp = ab.Experiment(sys.argv[1], state_class=State)
        Warmth()(exp.spawn_new_tree(seed=0))
        finish(exp.run(ab.ProcessExecutor(workers=2, start="fork")))
    ''')
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["ok"], result["text"]
    warmth = [n for n in Experiment.restore(tmp_path / "exp").graph.nodes if "warm" in n.metrics]
    assert [n.metrics["warm"] for n in warmth] == [True]


def test_serial_and_process_give_same_ids_and_payload_digests(tmp_path):
    # The driver uses as many torch threads as each worker, so both compute the same floats.
    script = write_script(tmp_path, '''
        executor = ab.ProcessExecutor(workers=2)
        torch.set_num_threads(executor.threads)

        def build(directory):
            exp = ab.Experiment(directory, state_class=State)
            for seed in (0, 1):
                root = exp.spawn_new_tree(seed=seed)
                a = mean_output(Train(lr=0.1, steps=4)(root))
                mean_output(Train(lr=0.05, steps=2)(a))
                mean_output(Train(lr=0.3, steps=3)(root))
            return exp
        serial = build(os.path.join(sys.argv[1], "serial")).run(ab.SerialExecutor())
        process = build(os.path.join(sys.argv[1], "process")).run(executor)
        finish(process, serial_executed=serial.executed)
    ''')
    result, _ = run_script(tmp_path, script, tmp_path)
    assert result["ok"] and len(result["executed"]) == 8, result["text"]
    assert sorted(result["serial_executed"]) == sorted(result["executed"])

    query = "SELECT id, status, payload, digests, metrics FROM nodes JOIN node_blobs ON node = id"
    serial = {row[0]: row[1:] for row in index_rows(tmp_path / "serial", query)}
    process = {row[0]: row[1:] for row in index_rows(tmp_path / "process", query)}
    assert set(serial) == set(process) and len(serial) == 8
    for node_id, (status, payload, blobs, metrics) in serial.items():
        assert status == process[node_id][0] == "done"
        assert payload == process[node_id][1], f"payload digest of {node_id} differs"
        assert blobs == process[node_id][2]
        assert json.loads(metrics).get("loss") == json.loads(process[node_id][3]).get("loss")
    results = "SELECT node, name, value FROM results ORDER BY node, name"
    assert index_rows(tmp_path / "serial", results) == index_rows(tmp_path / "process", results)
    # and the process run really used workers
    driver = result["driver_pid"]
    assert all(r["environment"]["pid"] != driver for r in records(tmp_path / "process").values())


# -- failures --------------------------------------------------------------------
FAILURES_SCRIPT = '''
    exp = ab.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(seed=0)
    ids = {"root": root.id}
    ids["exit"] = Die(how="exit")(root).id
    ids["kill"] = Die(how="kill")(root).id
    boom = Boom(k=1)(root)
    ids["boom"] = boom.id
    below = Sleep(seconds=0, k=10)(boom)
    ids["blocked"] = [below.id, Sleep(seconds=0, k=11)(below).id]
    ids["exit_child"] = Sleep(seconds=0, k=12)(Die(how="exit")(root)).id
    ok = []
    for k in (1, 2, 3):
        a = Sleep(seconds=0.05, k=k)(root)
        ok += [a.id, Sleep(seconds=0, k=k + 100)(a).id]
    ids["ok"] = ok
    finish(exp.run(ab.ProcessExecutor(workers=2), raise_on_failure=False), ids=ids)
'''


def test_recipe_error_and_dying_workers_fail_only_their_branch(tmp_path):
    script = write_script(tmp_path, FAILURES_SCRIPT)
    directory = tmp_path / "exp"
    result, _ = run_script(tmp_path, script, directory)
    ids = result["ids"]
    stored = records(directory)

    # every other branch finished, on workers that replaced the dead ones
    for node_id in [ids["root"], *ids["ok"]]:
        assert stored[node_id]["status"] == "done", stored[node_id]
    assert sorted(result["executed"]) == sorted([ids["root"], *ids["ok"]])
    dead = {int(p) for how in ("exit", "kill") for p in (tmp_path / f"died-{how}").read_text().split()}
    assert len(dead) == 2
    done_pids = {stored[n]["environment"]["pid"] for n in ids["ok"]}
    assert not done_pids & dead
    assert len(done_pids | dead) > 2, "no replacement worker was started after the deaths"
    assert not any(alive(pid) for pid in dead)

    # a recipe that raises: failed with its traceback, descendants blocked
    boom = stored[ids["boom"]]
    assert boom["status"] == "failed"
    assert "Traceback" in boom["error"] and "ValueError: boom 1" in boom["error"]
    assert "in run" in boom["error"]
    for node_id in ids["blocked"]:
        assert stored[node_id]["status"] == "blocked"
        assert ids["boom"] in stored[node_id]["error"]
    assert sorted(result["blocked"]) == sorted(ids["blocked"] + [ids["exit_child"]])

    # a worker that exits: "worker died" with its exit code
    exited = stored[ids["exit"]]
    assert exited["status"] == "failed"
    assert "worker died" in exited["error"] and "exit code 3" in exited["error"]
    assert stored[ids["exit_child"]]["status"] == "blocked"
    # a worker killed by a signal
    killed = stored[ids["kill"]]
    assert killed["status"] == "failed"
    assert "worker died" in killed["error"] and "killed by signal SIGKILL" in killed["error"]

    assert sorted(result["failed"]) == sorted([ids["boom"], ids["exit"], ids["kill"]])
    assert not result["ok"] and "3 failed" in result["text"]
    assert verify(directory).returncode == 0


def test_retries_rerun_a_node_whose_worker_died(tmp_path):
    script = write_script(tmp_path, '''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        flaky = Die(how="exit-once")(root)
        child = Sleep(seconds=0, k=1)(flaky)
        other = Sleep(seconds=0, k=2)(root)
        finish(exp.run(ab.ProcessExecutor(workers=2, retries=1)),
               ids=[root.id, flaky.id, child.id, other.id], flaky=flaky.id)
    ''')
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["ok"], result["text"]
    assert sorted(result["executed"]) == sorted(result["ids"])
    stored = records(tmp_path / "exp")
    assert all(stored[n]["status"] == "done" for n in result["ids"])
    died = (tmp_path / "died-exit-once").read_text().split()
    assert len(died) == 1, "the recipe should have died exactly once"
    assert stored[result["flaky"]]["environment"]["pid"] != int(died[0])


# -- the driver killed with SIGKILL ------------------------------------------------
CHAIN_SCRIPT = '''
    exp = ab.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(seed=0)
    for branch in range(2):
        state = root
        for step in range(6):
            state = Sleep(seconds=0.25, k=10 * branch + step)(state)
    finish(exp.run(ab.ProcessExecutor(workers=2)), total=len(exp._nodes))
'''


def test_driver_killed_store_consistent_and_rerun_finishes_the_rest(tmp_path):
    script = write_script(tmp_path, CHAIN_SCRIPT)
    directory = tmp_path / "exp"
    driver = start_script(tmp_path, script, directory)
    try:
        wait_until(lambda: done_count(directory) >= 3 or driver.poll() is not None, 60,
                   "three nodes recorded")
        assert driver.poll() is None, "the run ended before it could be killed"
        workers = worker_children(driver.pid)
        assert workers, "no worker processes found under the driver"
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
    finally:
        stop_group(driver)
    assert driver.returncode == -signal.SIGKILL
    # the workers die with their driver
    wait_until(lambda: not any(alive(pid) for pid in workers), 5,
               f"workers {workers} of the killed driver are still alive")

    finished = done_count(directory)
    assert 3 <= finished < 13
    check = verify(directory)
    assert check.returncode == 0, check.stdout + check.stderr  # orphan blobs are allowed

    result, _ = run_script(tmp_path, script, directory)
    assert result["ok"], result["text"]
    assert result["total"] == 13
    assert len(result["cached"]) == finished
    assert len(result["executed"]) == 13 - finished
    rows = index_rows(directory, "SELECT status, count(*) FROM nodes GROUP BY status")
    assert rows == [("done", 13)]
    assert verify(directory).returncode == 0


# -- Ctrl-C -------------------------------------------------------------------------
def test_ctrl_c_stops_recipes_reports_and_rerun_finishes(tmp_path):
    script = write_script(tmp_path, '''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        quick = [Sleep(seconds=0, k=1)(root), Sleep(seconds=0, k=2)(root)]
        slow = [Sleep(seconds=60, k=3)(root), Sleep(seconds=60, k=4)(root)]
        after = Sleep(seconds=0, k=5)(slow[0])
        finish(exp.run(ab.ProcessExecutor(workers=2), progress=False, raise_on_failure=False),
               quick=[root.id] + [q.id for q in quick], rest=[s.id for s in slow] + [after.id])
    ''')
    directory = tmp_path / "exp"
    driver = start_script(tmp_path, script, directory)
    try:
        wait_until(lambda: ((tmp_path / "started-3").exists() and (tmp_path / "started-4").exists())
                   or driver.poll() is not None, 60, "the slow recipes to start")
        assert driver.poll() is None
        workers = worker_children(driver.pid)
        assert len(workers) == 2
        interrupted_at = time.monotonic()
        os.killpg(driver.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        stdout, stderr = driver.communicate(timeout=30)
        took = time.monotonic() - interrupted_at
    finally:
        stop_group(driver)
    assert took < 8, f"the run took {took:.1f}s to stop after Ctrl-C"
    assert driver.returncode == 0, stdout + stderr
    result = parse_result(stdout)
    assert result["interrupted"] and "interrupted" in result["text"]
    assert sorted(result["executed"]) == sorted(result["quick"])
    assert sorted(result["not_run"]) == sorted(result["rest"])
    assert f"{len(result['rest'])} not run" in result["text"]
    # the running recipes were stopped: their workers are gone
    wait_until(lambda: not any(alive(pid) for pid in workers), 5, "workers still alive after Ctrl-C")

    stored = records(directory)
    assert {n for n, r in stored.items() if r["status"] == "done"} == set(result["quick"])
    assert not any(n in stored for n in result["rest"]), "an interrupted node left a record"
    assert no_temporaries(directory) == []
    check = verify(directory)
    assert check.returncode == 0 and "clean" in check.stdout, check.stdout

    again, _ = run_script(tmp_path, script, directory, ABTEST_FAST="1")
    assert again["ok"], again["text"]
    assert sorted(again["executed"]) == sorted(result["rest"])
    assert sorted(again["cached"]) == sorted(result["quick"])
    assert verify(directory).returncode == 0


# -- two runs at once ----------------------------------------------------------------
def test_two_concurrent_runs_on_one_directory(tmp_path):
    script = write_script(tmp_path, '''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        for branch in range(2):
            state = root
            for step in range(3):
                state = mean_output(Sleep(seconds=0.1, k=10 * branch + step)(state))
        finish(exp.run(ab.ProcessExecutor(workers=2)), all=list(exp._nodes))
    ''')
    directory = tmp_path / "exp"
    runs = [start_script(tmp_path, script, directory) for _ in range(2)]
    outputs = []
    try:
        for process in runs:
            outputs.append(process.communicate(timeout=TIMEOUT))
    finally:
        for process in runs:
            stop_group(process)
    for process, (stdout, stderr) in zip(runs, outputs):
        assert process.returncode == 0, stdout + stderr
    results = [parse_result(stdout) for stdout, _ in outputs]
    expected = sorted(results[0]["all"])
    assert len(expected) == 7
    for result in results:
        assert result["ok"], result["text"]
        assert sorted(result["executed"] + result["cached"]) == expected

    rows = index_rows(directory, "SELECT id, status, payload FROM nodes")
    assert sorted(r[0] for r in rows) == expected  # each node exactly once, none lost
    assert all(status == "done" and payload for _, status, payload in rows)
    assert index_rows(directory, "SELECT count(*) FROM nodes WHERE parents != ''")[0][0] == 6
    assert index_rows(directory, "SELECT count(DISTINCT node) FROM results")[0][0] == 6
    assert no_temporaries(directory) == []
    check = verify(directory)
    assert check.returncode == 0 and "clean" in check.stdout, check.stdout


# -- devices ------------------------------------------------------------------------
def test_assign_devices_to_workers():
    assert assign_devices(None, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1"]
    assert assign_devices(4, ["cuda:0", "cuda:1"]) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert assign_devices(3, ["cpu"]) == ["cpu"] * 3
    assert assign_devices(None, ["cpu"] * 4) == ["cpu"] * 4
    executor = ProcessExecutor(devices=["cuda:0", "cuda:1"])  # starts nothing, needs no GPU
    assert [w.device for w in executor.workers] == ["cuda:0", "cuda:1"]
    assert [w.name for w in executor.workers] == ["worker-0", "worker-1"]
    for bad in (["gpu0"], ["tpu:1"], ["CUDA:0"]):
        with pytest.raises(ValueError) as error:
            assign_devices(None, bad)
        assert "'cpu'" in str(error.value) and "'cuda:N'" in str(error.value)
    with pytest.raises(ValueError, match="empty"):
        assign_devices(None, [])
    with pytest.raises(ValueError):
        ProcessExecutor(workers=0)


@pytest.mark.parametrize("bad", ["cuda0", "cuda:x", "mpsfoo"])
def test_assign_devices_rejects_malformed_gpu_strings(bad):
    with pytest.raises(ValueError):
        assign_devices(None, [bad])


def test_default_devices_and_threads_per_worker(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert default_devices() == ["cpu"] * 8
    assert default_devices(3) == ["cpu"] * 3
    assert assign_devices(2, None) == ["cpu", "cpu"]
    assert threads_per_worker(["cpu"] * 2) == 4
    assert threads_per_worker(["cpu"] * 8) == 1
    assert threads_per_worker(["cpu"] * 16) == 1  # never 0
    assert threads_per_worker(["cuda:0", "cuda:1"]) == 4
    assert ProcessExecutor(workers=4).threads == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert default_devices() == ["cuda:0", "cuda:1"]  # one worker per visible GPU


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    """A 20-step chain under ProcessExecutor(devices=["cpu", "cpu"]), then one node
    whose recipe calls a function of the user's own module beside the script
    (a module holding a lock: it must travel by reference, not by value)."""
    tmp_path = tmp_path_factory.mktemp("chain")
    (tmp_path / "helpers.py").write_text("import threading\nLOCK = threading.Lock()\n\n"
                                         "def scale(k):\n    with LOCK:\n        return 2 * k\n")
    script = write_script(tmp_path, '''
        import helpers

        class UseHelper(ab.Recipe):
            PROPERTIES = ["k"]

            def run(self, state):
                state.metrics["scaled"] = helpers.scale(self.k)
                state.metrics["device"] = str(ab.current_device())
                return state

        exp = ab.Experiment(sys.argv[1], state_class=State)
        state = exp.spawn_new_tree(seed=0)
        chain = [state.id]
        for step in range(20):
            state = Train(lr=0.01 * (step + 1), steps=1)(state)
            chain.append(state.id)
        helped = UseHelper(k=21)(state)
        executor = ab.ProcessExecutor(devices=["cpu", "cpu"])
        report = exp.run(executor)
        finish(report, chain=chain, helped=helped.id, payload_loads=executor.payload_loads,
               threads=executor.threads, devices=executor.devices)
    ''')
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    return tmp_path / "exp", result


def test_recipes_learn_their_device(chain_run):
    directory, result = chain_run
    assert result["ok"], result["text"]
    assert result["devices"] == ["cpu", "cpu"]
    metrics = {i: json.loads(m) for i, m in index_rows(directory, "SELECT id, metrics FROM nodes")}
    for node_id in result["chain"][1:]:
        assert metrics[node_id]["device"] == "cpu"  # str(abgraph.current_device()) in the recipe
        # torch threads were set per worker so the workers do not oversubscribe the cores
        assert metrics[node_id]["threads"] == result["threads"]
    assert all(r["environment"]["device"] == "cpu" for r in records(directory).values())


def test_recipe_may_use_the_users_own_module(chain_run):
    directory, result = chain_run
    metrics = {i: json.loads(m) for i, m in index_rows(directory, "SELECT id, metrics FROM nodes")}
    assert metrics[result["helped"]] == {"scaled": 42, "device": "cpu"}


def test_chain_loads_parent_payload_from_disk_at_most_once(chain_run):
    directory, result = chain_run
    assert hasattr(ProcessExecutor(workers=1), "payload_loads")
    assert sorted(result["executed"]) == sorted(result["chain"] + [result["helped"]])
    assert result["payload_loads"] <= 1, f"{result['payload_loads']} payload loads for a 20-step chain"
    # the chain stayed in one worker's memory (a second worker only after a load)
    stored = records(directory)
    pids = {stored[n]["environment"]["pid"] for n in result["chain"]}
    assert len(pids) <= 1 + result["payload_loads"]


def test_serial_executor_is_still_available():
    assert SerialExecutor().idle()[0].name == "main"


def test_fresh_interpreter_workers_still_work(tmp_path):
    """`start="fresh"` (what a GPU box, a notebook or a threaded driver gets) runs
    the same study in new interpreters that never import the user's script."""
    script = write_script(tmp_path, '''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        for lr in [0.1, 0.01, 0.001]:
            Train(lr=lr, steps=2)(root)
        finish(exp.run(ab.ProcessExecutor(workers=2, start="fresh"), progress=False))
    ''')
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["ok"] and len(result["executed"]) == 4, result["text"]
    pids = {r["environment"]["pid"] for r in records(tmp_path / "exp").values()}
    assert result["driver_pid"] not in pids
