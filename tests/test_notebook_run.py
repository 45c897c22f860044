"""Classes defined in a notebook run on the default (process) executor: the
notebook's `__main__` has no file for workers to import, so recipes and states
travel by value."""
import nbformat
from nbclient import NotebookClient

CELLS = [
    '''
import torch
from torch import nn
import abgraph as dg

class State(dg.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["model", "x"]
    def initialize_state(self, width):
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 1))
        self.x = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))

def shrink(weight, factor):          # a helper function from the notebook, used by the recipe
    return weight * factor

class Scale(dg.Recipe):
    PROPERTIES = ["factor"]
    def run(self, state):
        with torch.no_grad():
            state.model[0].weight.copy_(shrink(state.model[0].weight, self.factor))
        state.metrics["out"] = state.model(state.x).mean().item()
        state.metrics["device"] = str(dg.current_device())
        return state

@dg.function
def norm(state):
    return {"weight_norm": state.model[0].weight.norm().item()}
''',
    '''
exp = dg.Experiment(FOLDER, state_class=State)
root = exp.spawn_new_tree(width=4)
for factor in [0.5, 2.0]:
    with exp.tag(f"factor:{factor}"):
        norm(Scale(factor=factor)(root))
report = exp.run(executor=dg.ProcessExecutor(workers=2))
assert not report.failed, report.errors
print(report)
''',
    '''
again = exp.run(executor=dg.ProcessExecutor(workers=2))
assert again.executed == [] and len(again.cached) == 3, again
restored = dg.Experiment.restore(FOLDER).graph
half = restored.nodes.filter("factor:0.5")[0]
assert half.results["norm"]["weight_norm"] > 0 and half.metrics["device"] == "cpu"
assert half._ab_record.environment["pid"] != __import__("os").getpid()
half.restore().model
''',
]


def test_notebook_classes_run_in_worker_processes(tmp_path):
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"FOLDER = {str(tmp_path / 'exp')!r}")]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in CELLS]
    NotebookClient(notebook, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[-1].outputs
    assert any("Sequential" in str(o.get("data", {}).get("text/plain", "")) for o in outputs)
