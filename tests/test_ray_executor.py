"""RayExecutor against a real local Ray cluster: same ids and payload digests as
the other executors for a deterministic recipe."""
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("ray")

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    import abgraph as dg

    class State(dg.ExperimentState):
        PROPERTIES = ["width"]
        NONHASHED_ATTRIBUTES = ["model", "data"]

        def initialize_state(self, width):
            torch.manual_seed(0)
            self.model = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))
            self.data = torch.randn(64, 4, generator=torch.Generator().manual_seed(1))

    class Train(dg.Recipe):
        PROPERTIES = ["lr"]

        def run(self, state):
            torch.manual_seed(0)
            optimizer = torch.optim.SGD(state.model.parameters(), lr=self.lr)
            for _ in range(5):
                optimizer.zero_grad()
                state.model(state.data).pow(2).mean().backward()
                optimizer.step()
            state.metrics["device"] = str(dg.current_device())
            return state

    class Fail(dg.Recipe):
        PROPERTIES = []

        def run(self, state):
            raise ValueError("this branch fails on purpose")

    executor = {"serial": lambda: dg.SerialExecutor(),
                "process": lambda: dg.ProcessExecutor(workers=2),
                "ray": lambda: dg.RayExecutor(num_cpus=1, include_dashboard=False)}[sys.argv[2]]()
    exp = dg.Experiment(sys.argv[1], state_class=State)
    root = exp.spawn_new_tree(width=8)
    for lr in [0.1, 0.01, 0.001]:
        with exp.tag(f"lr:{lr}"):
            Train(lr=lr)(Train(lr=lr)(root))
    Train(lr=0.5)(Fail()(root))
    report = exp.run(executor=executor, raise_on_failure=False)
    print("RESULT", len(report.executed), len(report.failed), len(report.blocked))
''')


def run(tmp_path, name):
    script = tmp_path / "study.py"
    script.write_text(SCRIPT)
    folder = tmp_path / name
    result = subprocess.run([sys.executable, str(script), str(folder), name], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULT")][0]
    import abgraph
    graph = abgraph.Experiment.restore(folder).graph
    return line, {n.id: (n.status, n._ab_record.payload) for n in graph.nodes}, graph


def test_ray_matches_serial_and_process(tmp_path):
    serial_line, serial, _ = run(tmp_path, "serial")
    process_line, process, _ = run(tmp_path, "process")
    ray_line, ray, graph = run(tmp_path, "ray")
    assert serial_line == process_line == ray_line == "RESULT 7 1 1"
    assert serial == process == ray
    workers = {n._ab_record.environment.get("pid") for n in graph.nodes if n.status == "done"}
    assert len(workers) >= 1 and all(n._ab_record.metrics.get("device", "cpu") == "cpu"
                                     for n in graph.nodes if n.status == "done")
    failed = [n for n in graph.nodes if n.status == "failed"]
    assert "this branch fails on purpose" in failed[0].error
