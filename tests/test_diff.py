"""Issue 16, item 2: the diff of two nodes (`node.diff`, `abgraph diff`), and the
tensor manifest it reads from the payload pickles without unpickling them."""
from __future__ import annotations

import contextlib
import io
import json

import dill
import numpy
import pytest
import torch

import abgraph
from abgraph.cli import main
from abgraph.diff import zero_fraction, _bytes
from abgraph.store import ObjectStore, payload
from abgraph.store.manifest import read


@contextlib.contextmanager
def no_unpickling():
    """Any attempt to unpickle a payload inside the block fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a diff unpickled something")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(payload, "load", refuse)
        patch.setattr(dill, "loads", refuse)
        patch.setattr(dill.Unpickler, "load", refuse)
        yield


@pytest.fixture(scope="module")
def graph(edited_study):
    return abgraph.Experiment.restore(edited_study.directory).graph


def node(graph, edited_study, name, edited=False):
    return graph.node((edited_study.edited if edited else edited_study.ids)[name])


def restored_model(graph, node_id):
    state = graph.node(node_id)
    with state.lazy_load():
        return {name: tensor.detach().clone() for name, tensor in state.model.state_dict().items()} | \
               {"fc1.weight": state.model.fc1.weight.detach().clone(),
                "fc2.weight": state.model.fc2.weight.detach().clone()}


def test_a_prune_shows_as_changed_elements_and_zeros(graph, edited_study):
    trained, pruned = node(graph, edited_study, "train:0.05"), node(graph, edited_study, "prune:0.05")
    with no_unpickling():
        difference = trained.diff(pruned)
    assert difference.ancestor == trained.id
    assert difference.path_a == [] and difference.path_b == ["Prune(amount=0.5, layers=('fc1', 'fc2'))"]
    assert [t for t in difference.tags_b if t not in difference.tags_a] == ["pruned"]
    tensors = {t.name: t for t in difference.tensors}
    assert tensors["model.fc1.weight_orig"].status == "only in b"
    assert tensors["model.fc1.weight_mask"].status == "only in b"
    assert tensors["model.fc1.bias"].status == "equal"
    assert tensors["train_data.0"].status == "equal"
    assert difference.tensors.index(tensors["model.fc1.weight"]) < difference.tensors.index(tensors["model.fc1.bias"])

    before, after = restored_model(graph, trained.id), restored_model(graph, pruned.id)
    for name in ("fc1.weight", "fc2.weight"):
        entry = tensors[f"model.{name}"]
        assert (entry.status, entry.dtype, entry.shape_a) == ("changed", "float32", tuple(before[name].shape))
        assert entry.changed == pytest.approx((before[name] != after[name]).float().mean().item())
        assert entry.zeros_a == pytest.approx((before[name] == 0).float().mean().item())
        assert entry.zeros_b == pytest.approx(0.5)
    text = str(difference)
    assert "model.fc1.weight  float32 8x4  changed: 50.0% of elements changed, zeros 0.0% -> 50.0%" in text


def test_a_recipe_whose_code_changed_is_named(graph, edited_study):
    old, new = node(graph, edited_study, "prune:0.5"), node(graph, edited_study, "prune:0.5", edited=True)
    assert old.id != new.id and old.recipe == new.recipe  # indistinguishable in `ls`
    with no_unpickling():
        difference = old.diff(new)
    assert difference.ancestor == edited_study.ids["train:0.5"]
    (step,) = difference.steps
    assert step.code_changed and step.properties == {} and step.a == step.b
    assert "Prune's code changed between the runs" in str(difference)
    weight = next(t for t in difference.tensors if t.name == "model.fc1.weight")
    assert weight.status == "changed" and weight.zeros_a == weight.zeros_b == pytest.approx(0.5)


def test_siblings_compare_through_their_common_root(graph, edited_study):
    a, b = node(graph, edited_study, "prune:0.05"), node(graph, edited_study, "prune:0.5")
    with no_unpickling():
        difference = a.diff(b)
    assert difference.ancestor == edited_study.ids["root"]
    first, second = difference.steps
    assert first.properties == {"lr": [0.05, 0.5]} and not first.code_changed
    assert second.a == second.b and second.properties == {}
    accuracy_a = a.results["accuracy"]["accuracy"]
    accuracy_b = b.results["accuracy"]["accuracy"]
    assert difference.metrics["accuracy.accuracy"] == [accuracy_a, accuracy_b,
                                                      pytest.approx(accuracy_b - accuracy_a)]
    assert difference.metrics["accuracy.n"][2] == 0
    assert difference.properties == {}  # one root: same state properties


def test_cli_diff_prints_text_and_json_without_unpickling(edited_study):
    ids = edited_study.ids
    out = io.StringIO()
    with contextlib.redirect_stdout(out), no_unpickling():
        assert main(["diff", str(edited_study.directory), ids["train:0.5"][:8], ids["prune:0.5"][:8]]) == 0
    assert "model.fc2.weight  float32 2x8  changed" in out.getvalue()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), no_unpickling():
        assert main(["diff", str(edited_study.directory), ids["train:0.5"], ids["prune:0.5"], "--json"]) == 0
    parsed = json.loads(out.getvalue())
    assert parsed["ancestor"] == ids["train:0.5"]
    assert {t["name"]: t["status"] for t in parsed["tensors"]}["model.fc2.weight_mask"] == "only in b"


def test_cli_diff_names_a_bad_node(edited_study):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        assert main(["diff", str(edited_study.directory), "zzzz", edited_study.ids["root"]]) == 2
    assert "no node id starts with 'zzzz'" in err.getvalue()


def test_a_failed_node_diffs_without_tensors(graph, edited_study):
    failed = node(graph, edited_study, "explode", edited=True)
    difference = node(graph, edited_study, "train:0.05").diff(failed)
    assert difference.ancestor == edited_study.ids["train:0.05"]
    assert {t.status for t in difference.tensors} == {"only in a"}


def test_nodes_of_two_restores_are_refused(edited_study):
    one = abgraph.Experiment.restore(edited_study.directory).graph
    two = abgraph.Experiment.restore(edited_study.directory).graph
    with pytest.raises(ValueError, match="two nodes of one experiment"):
        one.node(edited_study.ids["root"]).diff(two.node(edited_study.ids["root"]))


def test_manifest_names_every_tensor_as_the_state_dict_does(tmp_path):
    store = ObjectStore(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    shared = torch.arange(6.0)
    state = {"model": model, "optimizer": optimizer, "table": numpy.eye(2, dtype="float16"),
             "pair": (shared, shared), "half": torch.tensor([0.0, -0.0, 1.0], dtype=torch.bfloat16),
             "closure": lambda x: x}  # dill pickles this one: the reader follows dill's opcodes too
    digest, blobs, _ = payload.dump(state, store)
    entries = read(store.get(digest))
    names = [e.name for e in entries]
    assert names[:7] == [f"model.{key}" for key in model.state_dict()]
    assert "optimizer.state.[model.0.weight].momentum_buffer" in names
    assert "pair.0" in names and "pair.1" not in names  # one tensor stored once, named once
    assert {e.digest for e in entries} == set(blobs)
    by_name = {e.name: e for e in entries}
    assert (by_name["table"].dtype, by_name["table"].shape) == ("<f2", (2, 2))
    assert (by_name["model.0.weight"].dtype, by_name["model.0.weight"].shape) == ("float32", (4, 3))
    half = by_name["half"]
    assert half.numpy_dtype is None and half.itemsize == 2
    assert zero_fraction(_bytes(store, half), half) == pytest.approx(2 / 3)  # -0.0 is a zero
    assert zero_fraction(_bytes(store, by_name["table"]), by_name["table"]) == pytest.approx(0.5)


def four_points():
    x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    data = torch.utils.data.TensorDataset(x, torch.tensor([0, 1, 1, 0]))
    return data, data


def tiny_mlp():
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))


def test_trains_record_is_one_line_of_the_printed_diff(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=abgraph.TorchState)
    first = abgraph.Train(epochs=1, lr=0.1, optimizer="adam")(
        exp.spawn_new_tree(model_fn=tiny_mlp, data_fn=four_points, seed=0))
    second = abgraph.Train(epochs=1, lr=0.1, optimizer="adam")(first)
    exp.run(executor=abgraph.SerialExecutor(), progress=False)
    difference = exp.graph.node(first.id).diff(exp.graph.node(second.id))
    recorded = [t.name for t in difference.changed_tensors if t.name.startswith("train_resume.")]
    assert "train_resume.optimizer.state.0.exp_avg" in recorded  # all of it in .tensors and .to_dict()
    lines = str(difference).splitlines()
    assert [line for line in lines if "train_resume" in line] == [
        f"  train_resume.*  {len(recorded)} changed (Train's optimizer and random state, see .to_dict())"]
    assert any(line.startswith("  model.0.weight  float32 3x2  changed") for line in lines)


def test_a_list_metric_prints_as_its_length_and_ends(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=abgraph.TorchState)
    root = exp.spawn_new_tree(model_fn=tiny_mlp, data_fn=four_points, seed=0)
    short, long = abgraph.Train(epochs=2, lr=0.1)(root), abgraph.Train(epochs=5, lr=0.1)(root)
    exp.run(executor=abgraph.SerialExecutor(), progress=False)
    difference = exp.graph.node(short.id).diff(exp.graph.node(long.id))
    history = exp.graph.node(long.id).metrics["loss_history"]
    line = next(line for line in str(difference).splitlines() if "loss_history" in line)
    assert f"[5: {history[0]:.4g} … {history[-1]:.4g}]" in line and len(line) < 80
    assert difference.to_dict()["metrics"]["loss_history"][1] == history  # the whole list is kept
