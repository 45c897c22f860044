"""ProcessExecutor workers that persist between runs, share a device, and are
replaced when they die or run out of GPU memory (issue 15).

No GPU is needed: device placement uses faked `cuda:N` names (a recipe only
reads `abgraph.current_device()`), and out-of-memory is torch's own
`OutOfMemoryError` raised by a recipe. Scripts run as users run them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from abgraph.executors.process import ProcessExecutor, assign_devices, threads_per_worker
from test_process_executor import (TIMEOUT, alive, parse_result, records, run_script, script_env,
                                   write_script)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and signals")

PIDS = '''
class Where(ab.Recipe):
    """Records where it ran; `oom` raises torch's CUDA out-of-memory error."""
    PROPERTIES = ["k", "oom"]

    def run(self, state):
        if self.oom:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(0.05)
        state.metrics["device"] = str(ab.current_device())
        state.metrics["pid"] = os.getpid()
        return state


def pids(report, exp):
    graph = exp.graph
    return sorted({graph.node(n)._ab_record.environment["pid"] for n in report.executed})
'''


def test_an_interactive_session_keeps_its_workers_between_runs_and_leaves_none_behind(tmp_path):
    """`python -i` is a REPL: the default executor is the session's, its workers
    serve the second run (same pids, the new node only), and end with the interpreter."""
    script = write_script(tmp_path, PIDS + textwrap.dedent('''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        for k in range(4):
            Where(k=k, oom=False)(root)
        first = exp.run()
        added = Where(k=99, oom=False)(root)
        second = exp.run()
        assert ab.executors.default_executor() is ab.executors.default_executor()
        finish(second, first_pids=pids(first, exp), second_pids=pids(second, exp), added=added.id,
               live_workers=[w.process.pid for w in ab.executors.default_executor().workers])
    '''))
    done = subprocess.run([sys.executable, "-i", str(script), str(tmp_path / "exp")], cwd=tmp_path,
                          env=script_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    result = parse_result(done.stdout)
    assert result["executed"] == [result["added"]]
    assert set(result["second_pids"]) <= set(result["first_pids"]), "the second run started new workers"
    assert set(result["second_pids"]) <= set(result["live_workers"])
    assert not any(alive(pid) for pid in result["live_workers"]), "a worker outlived its interpreter"


def test_a_script_keeps_workers_inside_a_with_block_and_closes_them_after(tmp_path):
    script = write_script(tmp_path, PIDS + textwrap.dedent('''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        with ab.ProcessExecutor(workers=2) as executor:
            first = exp.run(executor)
            Where(k=1, oom=False)(root)
            second = exp.run(executor)
            kept = [w.process.pid for w in executor.workers]
        closed = [w.process for w in executor.workers]
        once = ab.ProcessExecutor(workers=2)
        Where(k=2, oom=False)(root)
        third = exp.run(once)
        finish(second, first_pids=pids(first, exp), second_pids=pids(second, exp), kept=kept,
               closed=[p is None for p in closed], once=[w.process is None for w in once.workers])
    '''))
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["ok"]
    assert set(result["second_pids"]) <= set(result["kept"]) and set(result["first_pids"]) <= set(result["kept"])
    assert all(result["closed"]), "the with block left workers running"
    assert all(result["once"]), "a script's executor outside a with block kept its workers"
    assert not any(alive(pid) for pid in result["kept"])


def test_kept_workers_exit_after_their_idle_timeout_and_are_restarted(tmp_path):
    script = write_script(tmp_path, PIDS + textwrap.dedent('''
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        executor = ab.ProcessExecutor(workers=1, keep_alive=True, idle_timeout=0.3)
        first = exp.run(executor)
        old = executor.workers[0].process.pid
        time.sleep(1.5)
        Where(k=1, oom=False)(root)
        second = exp.run(executor)
        finish(second, old=old, old_alive=os.path.exists(f"/proc/{old}") and
               open(f"/proc/{old}/stat").read().split()[2] not in "ZX", second_pids=pids(second, exp))
        executor.close()
    '''))
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert result["ok"] and len(result["executed"]) == 1
    assert not result["old_alive"]
    assert result["second_pids"] != [result["old"]]


def test_an_idle_worker_that_dies_is_replaced_and_the_run_goes_on(tmp_path):
    """Issue 18's BrokenPipeError: a recipe kills the other (idle) worker; the
    nodes that follow go to a fresh one and the run finishes."""
    script = write_script(tmp_path, PIDS + textwrap.dedent('''
class KillOthers(ab.Recipe):
    PROPERTIES = []

    def run(self, state):
        me, driver = os.getpid(), os.getppid()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != me:
                try:
                    fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == driver:
                    os.kill(int(entry), signal.SIGKILL)
                    open(os.path.join(WORK, "killed"), "a").write(f"{entry}\\n")
        time.sleep(0.3)
        return state


exp = ab.Experiment(sys.argv[1], state_class=State)
root = exp.spawn_new_tree(seed=0)
after = KillOthers()(root)
where = [Where(k=k, oom=False)(after).id for k in range(4)]
finish(exp.run(ab.ProcessExecutor(workers=2)), total=len(exp._nodes), where=where)
'''))
    result, _ = run_script(tmp_path, script, tmp_path / "exp")
    assert (tmp_path / "killed").exists(), "the other worker was not killed"
    assert result["ok"], result["text"]
    assert len(result["executed"]) == result["total"]
    killed = {int(p) for p in (tmp_path / "killed").read_text().split()}
    stored = records(tmp_path / "exp")
    after = {stored[n]["environment"]["pid"] for n in result["where"]}
    assert killed and not killed & after


def test_workers_per_device_places_workers_and_oom_fails_only_its_node(tmp_path):
    """Two faked GPUs, two workers each. One node raises CUDA out-of-memory: it
    fails naming its device and how many workers shared it; its worker is
    replaced; every other node finishes on its own device."""
    script = write_script(tmp_path, PIDS + textwrap.dedent('''
        executor = ab.ProcessExecutor(devices=["cuda:0", "cuda:1"], workers_per_device=2, start="fork")
        exp = ab.Experiment(sys.argv[1], state_class=State)
        root = exp.spawn_new_tree(seed=0)
        oom = Where(k=0, oom=True)(root)
        ok = [Where(k=k, oom=False)(root).id for k in range(1, 9)]
        report = exp.run(executor, raise_on_failure=False)
        finish(report, oom=oom.id, ok_ids=ok, devices=executor.devices, threads=executor.threads,
               cores=os.cpu_count())
    '''))
    result, _ = run_script(tmp_path, script, tmp_path / "exp", ABGRAPH_UNCHECKED_DEVICES="1")
    assert result["devices"] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert result["threads"] == max(1, result["cores"] // 4)
    stored = records(tmp_path / "exp")
    oom = stored[result["oom"]]
    assert oom["status"] == "failed" and result["failed"] == [result["oom"]]
    device = oom["environment"]["device"]
    assert f"{device} ran out of memory while 2 worker(s) of this executor shared it" in oom["error"]
    assert "workers_per_device=2" in oom["error"] and "OutOfMemoryError" in oom["error"]
    for node_id in result["ok_ids"]:
        assert stored[node_id]["status"] == "done"
    assert {stored[n]["environment"]["device"] for n in result["ok_ids"]} == {"cuda:0", "cuda:1"}
    assert not alive(oom["environment"]["pid"]), "the worker that ran out of memory was not replaced"


def test_assign_devices_with_workers_per_device():
    assert assign_devices(None, ["cuda:0", "cuda:1"], 2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert assign_devices(None, ["cuda:0"], 4) == ["cuda:0"] * 4
    assert threads_per_worker(["cuda:0"] * 4) == max(1, (os.cpu_count() or 1) // 4)
    executor = ProcessExecutor(devices=["cuda:0"], workers_per_device=3)  # starts nothing, needs no GPU
    assert [w.device for w in executor.workers] == ["cuda:0"] * 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="workers_per_device must be a positive int"):
            ProcessExecutor(devices=["cuda:0"], workers_per_device=bad)
    with pytest.raises(ValueError, match="not both"):
        ProcessExecutor(workers=4, workers_per_device=2)
    with pytest.raises(ValueError, match="idle_timeout"):
        ProcessExecutor(idle_timeout=0)
