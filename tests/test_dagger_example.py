"""examples/from_dagger.ipynb (dagger's tutorial on abgraph) executed in real
kernels: the first half in one, the second half in a fresh one (after its
definitions cell), the way a user comes back to an experiment weeks later."""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parent.parent / "examples" / "from_dagger.ipynb"


def tagged(cell, tag) -> bool:
    return tag in cell.metadata.get("tags", [])


def execute(cells, tmp_path):
    notebook = nbformat.v4.new_notebook(cells=cells)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [output for cell in cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]
    return cells


def printed(cells) -> str:
    return "".join(output.get("text", "") for cell in cells for output in cell.outputs)


def test_the_dagger_tutorial_runs_and_a_fresh_kernel_grows_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ABGRAPH_EXPERIMENT", str(tmp_path / "from_dagger"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    split = next(i for i, cell in enumerate(code) if tagged(cell, "fresh-kernel"))
    definitions = [cell for cell in code if tagged(cell, "definitions")]
    assert len(definitions) == 1 and code.index(definitions[0]) == 0

    first = execute(code[:split], tmp_path)
    assert "3 executed, 1 cached, 0 failed, 0 blocked" in printed(first)  # the root was made by exp.root

    later = execute([nbformat.v4.new_code_cell(definitions[0].source)] + code[split:], tmp_path)
    text = printed(later)
    assert "<ExperimentGraph 4 nodes {'done': 4}>" in text
    assert "1 executed, 1 cached, 0 failed, 0 blocked" in text  # only the new node ran
    accuracies = {line.split(":")[0]: float(line.rsplit(" ", 1)[1])
                  for line in text.splitlines() if ": accuracy " in line}
    assert set(accuracies) == {"['train']", "['prune-then-train']", "['train-longer']"}
    assert all(0.0 <= value <= 1.0 for value in accuracies.values()) and accuracies["['train']"] > 0.5
    assert "fc1 weights pruned: 50%, slim: False" in text and text.count("True") >= 2
    kinds = {kind for cell in later for output in cell.outputs for kind in output.get("data", {})}
    assert {"image/png", "image/svg+xml", "text/html"} <= kinds  # draw(view=True), to_graphviz, the table
