"""The examples: the analysis notebook executed in a real kernel against a small
pruning study made here, the optimizer study run end to end in its quick mode,
and the full studies' graphs built (lazily, nothing run)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from torch import nn

import abgraph as dg
from abgraph.recipes import Evaluate, Prune, Train

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
NOTEBOOK = EXAMPLES / "analysis.ipynb"


def load_example(name):
    """An example script imported as a module (its `main` is not run)."""
    spec = importlib.util.spec_from_file_location(f"abgraph_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- a small pruning study, tagged like examples/pruning_study.py -------------------

def blobs_data():
    """Three Gaussian blobs in 8 dimensions: 150 training and 90 evaluation points."""
    centres = torch.randn(3, 8) * 2

    def sample(count):
        y = torch.arange(count) % 3
        return torch.utils.data.TensorDataset(centres[y] + torch.randn(count, 8), y)

    return sample(150), sample(90)


def small_mlp():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def small_pruning_study(folder):
    exp = dg.Experiment(folder, state_class=dg.TorchState)
    for seed in (0, 1):
        with exp.tag(f"seed:{seed}"):
            root = exp.spawn_new_tree(model_fn=small_mlp, data_fn=blobs_data, seed=seed)
            trained = Train(epochs=2, lr=0.1, seed=seed)(root)
            with exp.tag("method:none", "amount:0"):
                Evaluate()(trained)
            for method in ("l1_unstructured", "random_unstructured"):
                for amount in (0.5, 0.9):
                    with exp.tag(f"method:{method}", f"amount:{amount}"):
                        pruned = Prune(method, amount, seed=seed)(trained)
                        Evaluate()(pruned)
                        with exp.tag("finetuned"):
                            Evaluate()(Train(epochs=1, lr=0.05, seed=seed)(pruned))
    report = exp.run(executor=dg.SerialExecutor())
    assert report.ok, report
    return exp


def test_committed_notebook_has_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)


def test_analysis_notebook_runs_in_a_kernel(tmp_path, monkeypatch):
    folder = tmp_path / "experiment"
    small_pruning_study(folder)
    monkeypatch.setenv("ABGRAPH_EXPERIMENT", str(folder))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors

    def outputs_of(text):
        cells = [cell for cell in code if text in cell.source]
        assert len(cells) == 1, f"{len(cells)} code cells contain {text!r}"
        return cells[0].outputs

    def mime_types(outputs):
        return {kind for output in outputs for kind in output.get("data", {})}

    assert "image/svg+xml" in mime_types(outputs_of("graph.draw("))
    assert "image/png" in mime_types(outputs_of(".plot("))
    printed = "".join(output.get("text", "") for cell in code for output in cell.outputs)
    assert "<ExperimentGraph 38 nodes {'done': 38}>" in printed
    assert "2 dense, 8 pruned, 8 pruned and fine-tuned" in printed
    recomputed = [line for line in printed.splitlines() if line.startswith("accuracy recomputed")]
    assert recomputed, printed


# -- the studies --------------------------------------------------------------------

def test_optimizer_study_quick_run(tmp_path):
    folder = tmp_path / "optimizer_study"
    environment = dict(os.environ, ABGRAPH_QUICK="1")
    environment.pop("MPLBACKEND", None)
    result = subprocess.run([sys.executable, str(EXAMPLES / "optimizer_study.py"), str(folder)],
                            capture_output=True, text=True, timeout=180, env=environment)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "19 executed, 0 cached, 0 failed" in result.stdout, result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("SGD", "SGD+momentum", "Adam")}
    assert set(rows) == {"SGD", "SGD+momentum", "Adam"}, result.stdout
    for name, report_f1 in (("SGD", "0.946"), ("SGD+momentum", "0.949"), ("Adam", "0.975")):
        assert report_f1 in rows[name]
    for name in ("graph.pdf", "f1.csv", "best.csv", "f1.pdf", "f1.png"):
        assert (folder / name).stat().st_size > 0, name
    import pandas as pd
    best = pd.read_csv(folder / "best.csv")
    assert list(best["optimizer"]) == ["SGD", "SGD+momentum", "Adam"]
    assert best["n"].tolist() == [1, 1, 1]
    assert ((best["mean"] >= 0) & (best["mean"] <= 1)).all()
    assert len(pd.read_csv(folder / "f1.csv")) == 9


def test_optimizer_study_full_graph(tmp_path, monkeypatch):
    monkeypatch.delenv("ABGRAPH_QUICK", raising=False)
    study = load_example("optimizer_study")
    exp = study.build(tmp_path / "optimizer_study")
    assert len(exp._nodes) == 3 * (1 + 3 * 7 * 2)  # seeds x (root + optimizers x lrs x (Train, Evaluate))
    assert len(exp.graph) == 0  # built, not run
    evaluations = [node for node in exp._nodes.values() if node.recipe_name == "Evaluate"]
    assert len(evaluations) == 63
    tags = {tuple(sorted(t.partition(":")[0] for t in node.tags)) for node in evaluations}
    assert tags == {("lr", "optimizer", "seed")}
    assert {t for node in evaluations for t in node.tags if t.startswith("optimizer:")} == \
        {"optimizer:SGD", "optimizer:SGD+momentum", "optimizer:Adam"}


def test_optimizer_study_data_matches_the_report():
    study = load_example("optimizer_study")
    train, test = study.circle_data()
    for data in (train, test):
        x, y = data.tensors
        assert x.shape == (1000, 2) and x.min() >= 0 and x.max() <= 1
        inside = (x - 0.5).pow(2).sum(1).sqrt() < 1 / (2 * torch.pi) ** 0.5
        assert torch.equal(y, inside.long())
        assert 0.45 < y.float().mean() < 0.55  # the disc has area 1/2
    assert not torch.equal(train.tensors[0], test.tensors[0])
    sizes = [m.out_features for m in study.mlp() if isinstance(m, nn.Linear)]
    assert sizes == [25, 25, 25, 2]


def test_pruning_study_graph(tmp_path):
    study = load_example("pruning_study")
    exp = study.build(tmp_path / "pruning_study")
    per_seed = 1 + 2 + len(study.METHODS) * len(study.AMOUNTS) * 4  # root, Train, Evaluate; then
    assert len(exp._nodes) == len(study.SEEDS) * per_seed            # Prune, Evaluate, Train, Evaluate
    assert len(exp.graph) == 0
