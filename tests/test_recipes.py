"""Built-in recipes (Train, Evaluate, Prune, MakePermanent, Reinit, Rewind) and TorchState,
on scikit-learn's digits with a small MLP."""
from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

import abgraph
from abgraph import sweep
from abgraph.recipes import Evaluate, MakePermanent, Prune, Reinit, Rewind, Train
from abgraph.torch_state import TorchState

sklearn_datasets = pytest.importorskip("sklearn.datasets")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


# -- module-level functions: part of the root's identity ---------------------------------

def make_digits(n_train=1200):
    digits = sklearn_datasets.load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(x))  # seeded by TorchState
    x, y = x[order], y[order]
    dataset = torch.utils.data.TensorDataset
    return dataset(x[:n_train], y[:n_train]), dataset(x[n_train:], y[n_train:])


def make_mlp(hidden=32):
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def identity_model():
    return nn.Identity()


HAND_LOGITS = torch.tensor([[2.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.0],
                            [0.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 0.0], [0.1, 0.2, 0.3, 0.0]])
HAND_TARGETS = torch.tensor([0, 1, 2, 2, 0, 1])  # class 3 never occurs nor is predicted


def hand_data():
    data = torch.utils.data.TensorDataset(HAND_LOGITS, HAND_TARGETS)
    return data, data


BINARY_LOGITS = torch.tensor([[1.5], [-0.5], [0.2], [-2.0], [0.7], [-0.1], [3.0]])
BINARY_TARGETS = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def binary_data():
    data = torch.utils.data.TensorDataset(BINARY_LOGITS, BINARY_TARGETS)
    return data, data


def serial():
    return abgraph.SerialExecutor()


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- one shared study: most tests only read it ---------------------------------------------

TRAIN = dict(epochs=4, lr=0.1, optimizer="sgd", momentum=0.9, batch_size=64, seed=0)


def build_study(directory):
    exp = abgraph.Experiment(directory, state_class=TorchState)
    nodes = {"root": exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=0)}
    nodes["trained"] = Train(**TRAIN)(nodes["root"])
    nodes["eval"] = Evaluate(metrics=("accuracy", "f1", "loss", "sparsity"))(nodes["trained"])
    nodes["l1"] = Prune("l1_unstructured", 0.5)(nodes["trained"])
    nodes["l1_twice"] = Prune("l1_unstructured", 0.5)(nodes["l1"])
    nodes["random"] = Prune("random_unstructured", 0.3, seed=1)(nodes["trained"])
    nodes["finetuned"] = Train(epochs=1, lr=0.05, seed=0)(nodes["l1"])
    nodes["permanent"] = MakePermanent()(nodes["l1"])
    nodes["reinit"] = Reinit(seed=0)(nodes["l1"])
    nodes["reinit_plain"] = Reinit(seed=0)(nodes["trained"])
    nodes["reinit_last"] = Reinit(targets=["2"], seed=5)(nodes["trained"])
    nodes["rewound"] = Rewind(to=nodes["root"])(nodes["l1_twice"])
    return exp, nodes


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    exp, nodes = build_study(tmp_path_factory.mktemp("study"))
    report = exp.run(executor=serial(), progress=False)
    assert report.ok, str(report)
    graph = exp.graph
    return {name: graph.node(promise.id) for name, promise in nodes.items()}, nodes, exp


def restored(node):
    return node.restore().model


# -- TorchState ----------------------------------------------------------------------------

def test_torch_state_builds_root_seeded(study):
    nodes, _, _ = study
    root = nodes["root"].restore()
    assert isinstance(root.model, nn.Sequential)
    assert len(root.train_data) == 1200 and len(root.eval_data) == 1797 - 1200
    torch.manual_seed(0)
    expected = make_mlp()
    for name, value in expected.state_dict().items():
        assert torch.equal(root.model.state_dict()[name], value), name
    assert root.properties["seed"] == 0


def test_torch_state_identity_by_function_and_partial(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    a = exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=0)
    b = exp.spawn_new_tree(model_fn=functools.partial(make_mlp, hidden=16), data_fn=make_digits, seed=0)
    c = exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=1)
    assert len({a.id, b.id, c.id}) == 3
    assert exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=0).id == a.id
    with pytest.raises(TypeError, match="lambda"):
        exp.spawn_new_tree(model_fn=lambda: make_mlp(), data_fn=make_digits, seed=0)


# -- Train ---------------------------------------------------------------------------------

def test_train_reduces_loss_and_learns(study):
    nodes, _, _ = study
    history = nodes["trained"].metrics["loss_history"]
    assert len(history) == TRAIN["epochs"]
    assert history[-1] < history[0] * 0.5
    assert nodes["trained"].metrics["train_loss"] == history[-1]
    assert nodes["eval"].metrics["accuracy"] > 0.85
    model = restored(nodes["trained"])
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_train_is_deterministic_for_a_seed(study, tmp_path):
    nodes, promises, _ = study
    exp, again = build_study(tmp_path / "again")
    extra = Train(**dict(TRAIN, seed=1))(again["root"])
    report = exp.run(executor=serial(), progress=False)
    assert report.ok, str(report)
    graph = exp.graph
    for name in ("root", "trained", "l1", "l1_twice", "random", "finetuned", "reinit", "rewound"):
        assert again[name].id == promises[name].id
        assert graph.node(again[name].id)._ab_record.payload == nodes[name]._ab_record.payload, name
    assert graph.node(extra.id)._ab_record.payload != nodes["trained"]._ab_record.payload


def test_train_all_optimizers_and_losses(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_mlp, data_fn=functools.partial(make_digits, n_train=300), seed=0)
    trained = [Train(epochs=2, lr=0.01, optimizer=name, **extra)(root)
               for name, extra in [("sgd", {}), ("adam", {}), ("adamw", {"weight_decay": 0.01}),
                                   ("rmsprop", {"momentum": 0.5})]]
    mse = Train(epochs=2, lr=0.05, loss="mse")(root)
    binary_root = exp.spawn_new_tree(model_fn=functools.partial(nn.Linear, 1, 1), data_fn=binary_data, seed=0)
    bce = Train(epochs=20, lr=0.5, loss="bce", batch_size=4)(binary_root)
    assert exp.run(executor=serial(), progress=False).ok
    for promise in trained + [mse, bce]:
        history = exp.graph.node(promise.id).metrics["loss_history"]
        assert history[-1] < history[0], promise


# -- a chain of Trains continues one run -------------------------------------------------

def make_dropout_mlp():
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))


small_digits = functools.partial(make_digits, n_train=300)
CHAIN = dict(lr=0.01, batch_size=32, seed=3)


class ForgetfulState(TorchState):
    """Keeps no `train_resume`: every Train starts a fresh run (the behaviour before chains went on)."""
    NONHASHED_ATTRIBUTES = ["model", "train_data", "eval_data"]


class HalveFirstLayer(abgraph.Recipe):
    """A user's recipe that changes the weights in place."""

    def run(self, state):
        with torch.no_grad():
            state.model[0].weight.mul_(0.5)
        return state


def assert_same_weights(model, expected, what):
    assert list(model.state_dict()) == list(expected.state_dict()), what
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), f"{what}: {name}"


@pytest.mark.parametrize("optimizer", [dict(optimizer="adam"), dict(optimizer="sgd", momentum=0.9)])
def test_chained_trains_continue_one_run(tmp_path, optimizer):
    settings = dict(CHAIN, **optimizer)
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_dropout_mlp, data_fn=small_digits, seed=0)
    whole = Train(epochs=5, **settings)(root)
    first = Train(epochs=3, **settings)(root)
    evaluated = Evaluate(metrics=("accuracy",))(first)
    chained = {"Train(3) -> Train(2)": Train(epochs=2, **settings)(first),
               "Train(3) -> Evaluate -> Train(2)": Train(epochs=2, **settings)(evaluated)}
    assert exp.run(executor=serial(), progress=False).ok
    graph = exp.graph
    expected = graph.node(whole.id)
    assert expected.metrics["total_epochs"] == 5
    for what, promise in chained.items():
        node = graph.node(promise.id)
        assert_same_weights(restored(node), restored(expected), what)
        assert node.metrics["loss_history"] == expected.metrics["loss_history"][3:], what
        assert node.metrics["total_epochs"] == 5, what
    # the record is payload, never a metric or a column
    assert "train_resume" not in expected.metrics
    assert not [c for c in exp.graph.to_dataframe().columns if "train_resume" in c]
    assert graph.node(first.id).restore().train_resume["epochs"] == 3


def test_a_chain_goes_on_from_stored_rungs_in_worker_processes(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_dropout_mlp, data_fn=small_digits, seed=0)
    settings = dict(CHAIN, optimizer="adam")
    whole = Train(epochs=4, **settings)(root)
    first = Train(epochs=1, **settings)(root)
    assert exp.run(executor=serial(), progress=False).ok
    again = abgraph.Experiment.restore(tmp_path, state_class=TorchState)  # a later session: from the store
    tail = Train(epochs=3, **settings)(again.graph.node(first.id))
    # bit for bit only with as many intra-op threads as the serial run had
    assert again.run(executor=abgraph.ProcessExecutor(workers=1, threads=torch.get_num_threads()),
                     progress=False).ok
    assert_same_weights(restored(again.graph.node(tail.id)), restored(again.graph.node(whole.id)), "stored chain")
    assert again.graph.node(tail.id).metrics["total_epochs"] == 4


@pytest.mark.parametrize("between", ["prune", "user recipe", "other lr", "other optimizer"])
def test_a_changed_model_or_setting_starts_a_fresh_run(tmp_path, between):
    """After a weight change, or with another lr or optimizer, Train starts afresh: exactly
    what the same graph gives on a state that keeps no record (every Train fresh)."""
    settings = dict(CHAIN, optimizer="adam")
    models = {}
    for state_class in (TorchState, ForgetfulState):
        exp = abgraph.Experiment(tmp_path / state_class.__name__, state_class=state_class)
        root = exp.spawn_new_tree(model_fn=make_dropout_mlp, data_fn=small_digits, seed=0)
        first = Train(epochs=3, **settings)(root)
        if between.startswith("other"):
            other = dict(lr=0.02) if between == "other lr" else dict(optimizer="sgd", momentum=0.9)
            last = Train(epochs=2, **dict(settings, **other))(first)
        else:
            changed = Prune("l1_unstructured", 0.5)(first) if between == "prune" else HalveFirstLayer()(first)
            last = Train(epochs=2, **settings)(changed)
        assert exp.run(executor=serial(), progress=False).ok
        node = exp.graph.node(last.id)
        assert node.metrics["total_epochs"] == 2
        models[state_class] = restored(node)
    assert_same_weights(models[TorchState], models[ForgetfulState], between)


def test_a_pruned_model_continues_its_run(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_dropout_mlp, data_fn=small_digits, seed=0)
    pruned = Prune("l1_unstructured", 0.5)(root)
    settings = dict(CHAIN, optimizer="adam")
    whole = Train(epochs=3, **settings)(pruned)
    chained = Train(epochs=2, **settings)(Train(epochs=1, **settings)(pruned))
    assert exp.run(executor=serial(), progress=False).ok
    model = restored(exp.graph.node(chained.id))
    assert_same_weights(model, restored(exp.graph.node(whole.id)), "pruned chain")
    assert torch.all(model[0].weight[model[0].weight_mask == 0] == 0)


# -- Evaluate ------------------------------------------------------------------------------

def test_evaluate_multiclass_by_hand(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=identity_model, data_fn=hand_data, seed=0)
    node = Evaluate(metrics=("accuracy", "f1", "precision", "recall", "loss"))(root)
    assert exp.run(executor=serial(), progress=False).ok
    metrics = exp.graph.node(node.id).metrics
    predicted = HAND_LOGITS.argmax(1)  # [0, 1, 0, 2, 1, 2]
    assert metrics["accuracy"] == pytest.approx(3 / 6)
    assert metrics["f1"] == pytest.approx(sklearn_metrics.f1_score(HAND_TARGETS, predicted, average="macro"))
    assert metrics["precision"] == pytest.approx(
        sklearn_metrics.precision_score(HAND_TARGETS, predicted, average="macro", zero_division=0))
    assert metrics["recall"] == pytest.approx(sklearn_metrics.recall_score(HAND_TARGETS, predicted, average="macro"))
    assert metrics["loss"] == pytest.approx(nn.functional.cross_entropy(HAND_LOGITS, HAND_TARGETS).item())
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert metrics["per_class_accuracy"] == [0.5, 0.5, 0.5, None]


def test_evaluate_binary_single_logit(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=identity_model, data_fn=binary_data, seed=0)
    node = Evaluate(metrics=("accuracy", "f1", "f1_binary", "loss"))(root)
    assert exp.run(executor=serial(), progress=False).ok
    metrics = exp.graph.node(node.id).metrics
    predicted = (BINARY_LOGITS.view(-1) > 0).long()
    truth = BINARY_TARGETS.long()
    assert metrics["accuracy"] == pytest.approx(sklearn_metrics.accuracy_score(truth, predicted))
    assert metrics["f1_binary"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted))
    assert metrics["f1"] == pytest.approx(sklearn_metrics.f1_score(truth, predicted, average="macro"))
    expected_loss = nn.functional.binary_cross_entropy_with_logits(BINARY_LOGITS.view(-1), BINARY_TARGETS)
    assert metrics["loss"] == pytest.approx(expected_loss.item())
    assert metrics["confusion_matrix"] == sklearn_metrics.confusion_matrix(truth, predicted).tolist()


# -- Prune ---------------------------------------------------------------------------------

def test_each_prune_method_reaches_its_sparsity(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_mlp, data_fn=functools.partial(make_digits, n_train=200), seed=0)
    # 64x32 and 32x10 weights: 2048 + 320 entries, 32 + 10 rows
    cases = {"l1_unstructured": (0.3, (614 + 96) / 2368), "random_unstructured": (0.3, (614 + 96) / 2368),
             "ln_structured": (0.5, 0.5), "random_structured": (0.5, 0.5),
             "global_unstructured": (0.3, 710 / 2368)}
    promises = {method: Prune(method, amount)(root) for method, (amount, _) in cases.items()}
    bias = Prune("l1_unstructured", 3, targets=["0.bias", "2"])(root)
    assert exp.run(executor=serial(), progress=False).ok
    for method, (_, expected) in cases.items():
        node = exp.graph.node(promises[method].id)
        assert node.metrics["sparsity"] == pytest.approx(expected, abs=1e-9), method
        model = restored(node)
        for layer in (model[0], model[2]):
            assert torch.equal(layer.weight, layer.weight_orig * layer.weight_mask)
        if method in ("ln_structured", "random_structured"):
            rows = model[0].weight_mask.sum(1)
            assert set(rows.tolist()) == {0.0, 64.0} and int((rows == 0).sum()) == 16
    node = exp.graph.node(bias.id)
    assert node.metrics["sparsity_per_target"] == {"0.bias": 3 / 32, "2.weight": 3 / 320}
    assert not hasattr(restored(node)[0], "weight_mask")


def test_masks_survive_store_and_restore(study):
    nodes, _, _ = study
    model = restored(nodes["l1"])
    assert nodes["l1"].metrics["sparsity"] == pytest.approx(0.5)
    for layer in (model[0], model[2]):
        assert "weight_mask" in dict(layer.named_buffers())
        assert "weight_orig" in dict(layer.named_parameters())
        mask = layer.weight_mask
        assert torch.all(layer.weight[mask == 0] == 0)
        assert torch.equal(layer.weight, layer.weight_orig * mask)
        assert any(isinstance(h, torch_prune.BasePruningMethod) for h in layer._forward_pre_hooks.values())
    # the hook still works after restore: a forward pass recomputes the masked weight
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)
        model(torch.zeros(1, 64))
    assert torch.all(model[0].weight[model[0].weight_mask == 0] == 0)


def test_iterative_pruning_composes(study):
    nodes, _, _ = study
    assert nodes["l1_twice"].metrics["sparsity"] == pytest.approx(0.75)
    model = restored(nodes["l1_twice"])
    once = restored(nodes["l1"])
    for layer, before in ((model[0], once[0]), (model[2], once[2])):
        assert isinstance(next(iter(layer._forward_pre_hooks.values())), torch_prune.PruningContainer)
        assert torch.all(layer.weight_mask <= before.weight_mask)  # the second mask lies inside the first


def test_training_a_pruned_model_keeps_zeros(study):
    nodes, _, _ = study
    model = restored(nodes["finetuned"])
    mask = restored(nodes["l1"])[0].weight_mask
    assert torch.equal(model[0].weight_mask, mask)
    assert torch.all(model[0].weight[mask == 0] == 0)
    assert not torch.equal(model[0].weight_orig, restored(nodes["l1"])[0].weight_orig)  # it did train


def test_random_pruning_is_seeded(study):
    nodes, _, _ = study
    mask = restored(nodes["random"])[0].weight_mask
    assert nodes["random"].metrics["sparsity"] == pytest.approx((614 + 96) / 2368)
    assert not torch.equal(mask, restored(nodes["l1"])[0].weight_mask)
    # l1 ignores the seed: it is not part of its identity
    assert Prune("l1_unstructured", 0.5, seed=3).property_values() == Prune("l1_unstructured", 0.5).property_values()
    assert Prune("random_unstructured", 0.5, seed=3).property_values()["seed"] == 3
    # only the random methods' nodes changed when their masks got their own stream
    assert Prune("l1_unstructured", 0.5).code_version() == "v:1"
    assert Prune("random_structured", 0.5).code_version() == "v:1+masks:2"


@pytest.mark.parametrize("seed", [0, 1])
def test_random_masks_are_not_the_initial_weights_order(tmp_path, seed):
    """A root built with torch seeded with `seed`, pruned at random with the same
    seed: were the masks drawn from torch.manual_seed(seed)'s stream, the first
    layer's would prune exactly its largest initial weights."""
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=seed)
    pruned = Prune("random_unstructured", 0.5, seed=seed, targets="0")(root)
    exp.run(executor=serial(), progress=False)
    initial = exp.graph.node(root.id).restore().model[0].weight.detach().flatten()
    mask = exp.graph.node(pruned.id).restore().model[0].weight_mask.flatten()
    largest = set(torch.topk(initial, len(initial) // 2).indices.tolist())
    removed = set((mask == 0).nonzero().flatten().tolist())
    overlap = len(largest & removed) / len(removed)
    assert 0.4 < overlap < 0.6, overlap  # as two random halves of 2,048 weights overlap; it was 1.0


def test_make_permanent(study):
    nodes, _, _ = study
    model = restored(nodes["permanent"])
    mask = restored(nodes["l1"])[0].weight_mask
    layer = model[0]
    assert "weight_mask" not in dict(layer.named_buffers())
    assert "weight_orig" not in dict(layer.named_parameters())
    assert isinstance(layer.weight, nn.Parameter) and not layer._forward_pre_hooks
    assert torch.all(layer.weight[mask == 0] == 0)
    assert nodes["permanent"].metrics["sparsity"] == pytest.approx(0.5)


# -- Reinit and Rewind ---------------------------------------------------------------------

def test_reinit_keeps_masks(study):
    nodes, _, _ = study
    pruned, model = restored(nodes["l1"]), restored(nodes["reinit"])
    root = restored(nodes["root"])
    for index in (0, 2):
        mask = pruned[index].weight_mask
        assert torch.equal(model[index].weight_mask, mask)
        assert torch.all(model[index].weight[mask == 0] == 0)
        assert not torch.equal(model[index].weight_orig, pruned[index].weight_orig)
        # reset_parameters in model order, seeded like the root: the initial weights again
        assert torch.equal(model[index].weight_orig, root[index].weight)


def test_reinit_plain_and_targets(study):
    nodes, _, _ = study
    root, trained = restored(nodes["root"]), restored(nodes["trained"])
    plain, last = restored(nodes["reinit_plain"]), restored(nodes["reinit_last"])
    for name, value in weights(root).items():
        assert torch.equal(weights(plain)[name], value), name
    assert torch.equal(last[0].weight, trained[0].weight)  # not a target: untouched
    assert not torch.equal(last[2].weight, trained[2].weight)


def test_rewind_takes_ancestor_weights_and_keeps_masks(study):
    nodes, promises, _ = study
    node = nodes["rewound"]
    assert node._ab_record.parents == [promises["l1_twice"].id, promises["root"].id]
    assert node.recipe.properties == {}
    model, root, pruned = restored(node), restored(nodes["root"]), restored(nodes["l1_twice"])
    for index in (0, 2):
        mask = model[index].weight_mask
        assert torch.equal(mask, pruned[index].weight_mask)
        assert torch.equal(model[index].weight[mask == 1], root[index].weight[mask == 1])
        assert torch.all(model[index].weight[mask == 0] == 0)
        assert torch.equal(model[index].bias, root[index].bias)


# -- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("make, words", [
    (lambda: Train(1, 0.1, optimizer="adma"), ["unknown optimizer 'adma'", "valid: 'adam'", "'sgd'", "'rmsprop'"]),
    (lambda: Train(1, 0.1, loss="cross-entropy"), ["unknown loss", "valid: 'cross_entropy'", "'mse'", "'bce'"]),
    (lambda: Evaluate(metrics=("accuracy", "f2")), ["unknown metric 'f2'", "valid: 'f1'", "'accuracy'"]),
    (lambda: Prune("l2_unstructured", 0.5), ["unknown method", "valid: 'l1_unstructured'", "'global_unstructured'"]),
    (lambda: Prune("ln_structured", 0.5, n="frob"), ["unknown norm", "'fro'"]),
    (lambda: Prune("l1_unstructured", 1.5), ["[0, 1]"]),
    (lambda: Prune("l1_unstructured", 0.5, dim=1), ["dim=1 applies to the structured methods"]),
    (lambda: Train(1, 0.1, optimizer="adam", momentum=0.9), ["takes no momentum"]),
    (lambda: Train(0, 0.1), ["epochs must be at least 1"]),
    (lambda: Train(1, -0.1), ["lr must be > 0"]),
])
def test_bad_recipe_arguments(make, words):
    with pytest.raises((ValueError, TypeError)) as caught:
        make()
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def test_bad_choices_list_closest_first():
    with pytest.raises(ValueError) as caught:
        Train(1, 0.1, optimizer="rmsprp")
    assert "valid: 'rmsprop'" in str(caught.value) and "did you mean 'rmsprop'" in str(caught.value)


class NoModelState(abgraph.ExperimentState):
    NONHASHED_ATTRIBUTES = ["train_data"]


class NoDataState(abgraph.ExperimentState):
    NONHASHED_ATTRIBUTES = ["model", "eval_data"]


def test_state_without_required_attributes_fails_at_build_time(tmp_path):
    root = abgraph.Experiment(tmp_path / "a", state_class=NoModelState).spawn_new_tree()
    with pytest.raises(ValueError, match=r"Train needs the state attribute 'model'.*NoModelState"):
        Train(1, 0.1)(root)
    with pytest.raises(ValueError, match=r"Prune needs the state attribute 'model'"):
        Prune("l1_unstructured", 0.5)(root)
    root = abgraph.Experiment(tmp_path / "b", state_class=NoDataState).spawn_new_tree()
    with pytest.raises(ValueError, match=r"Train needs the state attribute 'train_data'.*NoDataState"):
        Train(1, 0.1)(root)
    with pytest.raises(ValueError, match=r"Evaluate\(data='test_data'\) needs the state attribute 'test_data'"):
        Evaluate(data="test_data")(root)
    with pytest.raises(TypeError, match="state promise"):
        Rewind(to="root")


def test_stored_nodes_serve_as_rewind_targets_and_halving_roots(study):
    """A later session grows the restored study: stored nodes stand for their promises."""
    _, nodes, exp = study
    again = abgraph.Experiment.restore(exp.directory, state_class=TorchState)
    stored = again.graph.node
    rewound = Rewind(to=stored(nodes["root"].id))(stored(nodes["l1_twice"].id))
    assert rewound.id == nodes["rewound"].id
    report = again.run(executor=serial(), progress=False)
    assert report.ok and not report.executed
    leaves = sweep.halving(stored(nodes["trained"].id), sweep.grid(Train, lr=[0.1, 0.01], epochs=1, seed=0),
                           evaluate=Evaluate(metrics=("accuracy",)), rungs=[1, 2], keep=0.5, metric="accuracy")
    assert len(leaves) == 2


def test_missing_prune_and_reinit_targets_fail_with_module_names(tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_mlp, data_fn=functools.partial(make_digits, n_train=100), seed=0)
    bad_prune = Prune("l1_unstructured", 0.5, targets=["0.weight", "3.weight"])(root)
    bad_module = Prune("l1_unstructured", 0.5, targets=["1"])(root)  # ReLU: nothing to prune
    bad_reinit = Reinit(targets=["fc"])(root)
    report = exp.run(executor=serial(), progress=False, raise_on_failure=False)
    assert set(report.failed) == {bad_prune.id, bad_module.id, bad_reinit.id}
    error = exp.graph.node(bad_prune.id).error
    assert "target '3.weight' is not in the model" in error
    modules, parameters = error.split("Its modules: ")[1].split("; its parameters: ")
    assert sorted(modules.split(", ")) == ["'0'", "'1'", "'2'"]
    assert sorted(parameters.strip().split(", ")) == ["'0.bias'", "'0.weight'", "'2.bias'", "'2.weight'"]
    assert "has no weight to prune" in exp.graph.node(bad_module.id).error
    assert "target 'fc' is not a module" in exp.graph.node(bad_reinit.id).error


# -- in worker processes -------------------------------------------------------------------

def test_pipeline_in_process_executor_matches_serial(study, tmp_path):
    nodes, _, _ = study
    exp = abgraph.Experiment(tmp_path, state_class=TorchState)
    root = exp.spawn_new_tree(model_fn=make_mlp, data_fn=make_digits, seed=0)
    trained = Train(**TRAIN)(root)
    pruned = Prune("l1_unstructured", 0.5)(trained)
    twice = Prune("l1_unstructured", 0.5)(pruned)
    rewound = Rewind(to=root)(twice)
    random = Prune("random_unstructured", 0.3, seed=1)(trained)
    evaluated = Evaluate()(Train(epochs=1, lr=0.05, seed=0)(pruned))
    # bit for bit only with as many intra-op threads as the serial run had (float sums
    # are split differently across threads)
    executor = abgraph.ProcessExecutor(workers=2, threads=torch.get_num_threads())
    report = exp.run(executor=executor, progress=False)
    assert report.ok, str(report)
    for promise, name in ((trained, "trained"), (pruned, "l1"), (twice, "l1_twice"), (rewound, "rewound"),
                          (random, "random")):
        assert exp.graph.node(promise.id)._ab_record.payload == nodes[name]._ab_record.payload, name
    assert exp.graph.node(evaluated.id).metrics["accuracy"] > 0.8


# -- identity of built-in recipes ----------------------------------------------------------

class LoudTrain(Train):
    def make_optimizer(self, parameters):
        return torch.optim.SGD(parameters, lr=self.lr, nesterov=True, momentum=0.9)


class PinnedTrain(Train):
    VERSION = "mine-3"


def test_builtin_versions_and_subclasses():
    assert Train(1, 0.1).code_version() == "v:2"
    assert Prune("l1_unstructured", 0.5).code_version() == "v:1"
    # a subclass without its own VERSION is versioned by its source, not by Train's VERSION
    loud = LoudTrain(1, 0.1).code_version()
    assert loud.startswith("src:") and loud != Train(1, 0.1).code_version()
    assert PinnedTrain(1, 0.1).code_version() == "v:mine-3"
