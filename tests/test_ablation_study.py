"""Feature datasets, ablation recipes, ablators and the Maggy-style AblationStudy.

The study tests use scikit-learn's breast-cancer DataFrame, a small MLP with
named layers and a Maggy training function, run on a `SerialExecutor` (and once,
from a user script with everything in `__main__`, on the default executor).
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch
from torch import nn

import abgraph
from abgraph.ablation import (AblateFeature, AblateLayer, AblationError, AblationStudy, Ablator,
                              ChannelDataset, FeatureDataset, LeaveKOut, LOCO, PandasDataset, Prefix,
                              StudyResult, TokenDataset, Trial)
from abgraph.ablation.ablators import get_ablator
from abgraph.ablation.datasets import ablate, example_input

# --- shared pieces (module level: ProcessExecutor workers import them by name) -------------


def breast_cancer():
    from sklearn.datasets import load_breast_cancer
    df = load_breast_cancer(as_frame=True).frame
    features = [c for c in df.columns if c != "target"]
    df[features] = (df[features] - df[features].mean()) / df[features].std()
    return df


def base_model_generator():
    return nn.Sequential(OrderedDict([
        ("dense_in", nn.Linear(30, 16)), ("act_in", nn.ReLU()),
        ("my_dense_two", nn.Linear(16, 16)), ("act_two", nn.ReLU()),
        ("my_dense_three", nn.Linear(16, 8)), ("act_three", nn.ReLU()),
        ("out", nn.Linear(8, 2)),
    ]))


def my_custom_model():
    return nn.Sequential(nn.Linear(30, 4), nn.ReLU(), nn.Linear(4, 2))


def training_fn(dataset_function, model_function):
    """Maggy's contract: build model and data from the functions, return a number."""
    from torch.utils.data import DataLoader
    model = model_function()
    dataset = dataset_function()
    loader = DataLoader(dataset, batch_size=len(dataset), shuffle=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(15):
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
    inputs, labels = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    with torch.no_grad():
        return (model(inputs).argmax(1) == labels).float().mean().item()


def picky_training_fn(dataset_function, model_function):
    """Raises on one trial, returns a non-number on another, a number elsewhere."""
    dataset, model = dataset_function(), model_function()
    if "mean radius" not in dataset.feature_names:
        raise RuntimeError("cannot train without mean radius")
    if "my_dense_two" not in dict(model.named_children()):
        return "high"
    return float(len(dataset.feature_names))


def constant_training_fn(dataset_function, model_function):
    model_function()
    return 1.0


def eval_size_fn(dataset_function, model_function, eval_dataset_function):
    """A train_fn that asks for the (ablated) evaluation data too."""
    model_function()
    return float(len(eval_dataset_function().feature_names) * 1000 + len(dataset_function()))


def titanic_model():
    """The thesis' Listings 3.9 / 4.1."""
    return nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                         nn.ReLU(), nn.Linear(32, 2), nn.ReLU(), nn.Linear(2, 1), nn.Sigmoid())


class MaggyDataset(torch.utils.data.Dataset):
    """A user's dataset written for Maggy (Listing 4.3): ablate_feature edits itself."""

    def __init__(self):
        self.data = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        self.labels = (self.data[:, 0] > 0).long()

    def __getitem__(self, index):
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)

    def ablate_feature(self, feature):
        if feature != "ch1":
            raise RuntimeError("Ablation failed: feature not found")
        self.data = self.data[:, 1:]


class Columns(FeatureDataset):
    """A user's FeatureDataset: returns a new dataset and names its features."""

    def __init__(self, data, names):
        self.data, self.names = data, list(names)

    def __getitem__(self, index):
        return self.data[index], 0

    def __len__(self):
        return len(self.data)

    @property
    def feature_names(self):
        return self.names

    def ablate_feature(self, name):
        keep = [i for i, n in enumerate(self.names) if n != name]
        return Columns(self.data[:, keep], [self.names[i] for i in keep])


def linear_model():
    return nn.Sequential(nn.Linear(3, 2))


def not_a_model():
    return "a model"


class MeanPool(nn.Module):
    """Embedding bag for the token tests: mean of the token vectors, <pad> (id 0) left out."""

    def __init__(self, vocabulary, width=8):
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, width, padding_idx=0)
        self.head = nn.Linear(width, 2)

    def forward(self, ids):
        vectors = self.embedding(ids)
        mask = (ids != 0).unsqueeze(-1).float()
        return self.head((vectors * mask).sum(1) / mask.sum(1).clamp(min=1))


def token_model():
    return MeanPool(len(token_dataset().vocab))


def channel_model():
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(3, 4, 3, padding=1)), ("act", nn.ReLU()),
        ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("head", nn.Linear(4, 2)),
    ]))


def fit_and_score(dataset_function, model_function):
    """Full-batch Adam on the first 3/4 of any (input, label) dataset; accuracy on the rest."""
    dataset, model = dataset_function(), model_function()
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    labels = torch.stack([torch.as_tensor(dataset[i][1]) for i in range(len(dataset))])
    cut = len(dataset) * 3 // 4
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs[:cut]), labels[:cut]).backward()
        optimizer.step()
    with torch.no_grad():
        return (model(inputs[cut:]).argmax(1) == labels[cut:]).float().mean().item()


def channel_data(n=160):
    """RGB 6x6 images; only the green channel tells the classes apart."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, 6, 6, generator=generator)
    y = torch.arange(n) % 2
    x[:, 1] += (y.float() * 2 - 1).view(-1, 1, 1) * 1.5
    return ChannelDataset(x, y, dim=1, names=["red", "green", "blue"])


FILLER = ["the", "movie", "plot", "was", "really", "quite", "a", "film", "story", "seen"]


def token_dataset(n=120):
    """Sentences of filler words with one sentiment word: "good" or "poor"."""
    import random
    rng = random.Random(0)
    sentences, labels = [], []
    for i in range(n):
        words = rng.sample(FILLER, 5)
        words.insert(rng.randrange(6), "good" if i % 2 else "poor")
        sentences.append(" ".join(words))
        labels.append(i % 2)
    return TokenDataset(sentences, labels)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models train faster on one thread (and do not fight other tests for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def df():
    return breast_cancer()


def make_study(directory, df, features=("mean radius", "worst area")):
    study = AblationStudy(directory, dataset=df, label_name="target")
    study.features.include(*features)
    study.model.set_base_model_generator(base_model_generator)
    study.model.layers.include("my_dense_two")
    study.model.layers.include_groups(prefix="my_dense")
    study.model.add_custom_model_generator(my_custom_model, "a custom model")
    return study


@pytest.fixture(scope="module")
def loco(tmp_path_factory, df):
    """The LOCO study over 2 features, 1 layer, 1 prefix group and 1 custom model, 2 seeds."""
    directory = tmp_path_factory.mktemp("loco") / "study"
    study = make_study(directory, df)
    result = study.run(train_fn=training_fn, ablator="loco", direction="max", seeds=[0, 1],
                       executor=abgraph.SerialExecutor())
    return study, result, directory


# --- datasets -----------------------------------------------------------------------------

def test_pandas_dataset_drops_a_column_and_leaves_the_original(df):
    data = PandasDataset(df, "target")
    assert len(data) == 569 and data.feature_names[0] == "mean radius"
    x, y = data[0]
    assert x.dtype == torch.float32 and x.shape == (30,) and y.dtype == torch.int64
    smaller = data.ablate_feature("worst area")
    assert "worst area" not in smaller.feature_names and len(smaller.feature_names) == 29
    assert smaller[0][0].shape == (29,) and len(data.feature_names) == 30
    assert torch.equal(smaller.data[:, :23], data.data[:, :23])
    assert PandasDataset(df, "target", label_first=True)[0][0].dim() == 0   # Maggy's order
    assert data.ablate_feature("Worst Area").feature_names == smaller.feature_names  # Maggy: any case


def test_pandas_dataset_unknown_names_list_the_columns_closest_first(df):
    data = PandasDataset(df, "target")
    with pytest.raises(AblationError) as error:
        data.ablate_feature("worst aera")
    message = str(error.value)
    assert "'worst aera'" in message and message.index("'worst area'") < message.index("'mean radius'")
    with pytest.raises(AblationError, match="label"):
        PandasDataset(df, "tagret")
    with pytest.raises(TypeError, match="not numeric"):
        PandasDataset(df.assign(sex="m"), "target")


def test_channel_dataset_drops_or_zeroes_a_channel():
    data = channel_data(8)
    assert data.feature_names == ["red", "green", "blue"]
    no_green = data.ablate_feature("green")
    assert no_green.x.shape == (8, 2, 6, 6) and no_green.feature_names == ["red", "blue"]
    assert torch.equal(no_green.x[:, 1], data.x[:, 2]) and data.x.shape == (8, 3, 6, 6)
    assert torch.equal(data.ablate_feature(0).x, data.ablate_feature("red").x)
    zeroed = ChannelDataset(data.x, data.y, names=["r", "g", "b"], mode="zero").ablate_feature("g")
    assert zeroed.x.shape == data.x.shape and zeroed.x[:, 1].abs().sum() == 0
    last = ChannelDataset(data.x.permute(0, 2, 3, 1), data.y, dim=3)   # N x H x W x C
    assert last.ablate_feature(2).x.shape == (8, 6, 6, 2)
    with pytest.raises(AblationError, match="'green'"):
        data.ablate_feature("gren")
    with pytest.raises(AblationError, match="out of range"):
        data.ablate_feature(3)
    with pytest.raises(ValueError, match="dim"):
        ChannelDataset(data.x, data.y, dim=0)


def test_token_dataset_masks_a_word_and_keeps_the_input_size():
    data = TokenDataset(["Bank A cut jobs .", "bank b grew", "the bank a story"], [0, 1, 0])
    masked = data.ablate_feature("bank a")
    assert masked.sentences == ["<mask> <mask> cut jobs .", "bank b grew", "the <mask> <mask> story"]
    assert masked.ids.shape == data.ids.shape and masked.vocab == data.vocab
    assert data.sentences[0] == "bank a cut jobs ."              # the original is untouched
    assert (masked.ids == data.vocab["<mask>"]).sum() == 4
    both = data.ablate_feature(["cut", "grew"])
    assert "cut" not in both.feature_names and "grew" not in both.feature_names
    with pytest.raises(AblationError, match="'bank'"):
        data.ablate_feature("banc")
    labelled = TokenDataset(["good", "bad"], ["pos", "neg"])
    assert labelled.classes == ["neg", "pos"] and labelled.labels.tolist() == [1, 0]


def test_ablate_accepts_maggy_style_in_place_datasets():
    class MaggyDataset(torch.utils.data.Dataset):
        def __init__(self):
            self.data = torch.ones(4, 3)

        def __getitem__(self, i):
            return self.data[i], 0

        def __len__(self):
            return 4

        def ablate_feature(self, feature):          # Maggy edits itself and returns None
            self.data = self.data[:, 1:]

    original = MaggyDataset()
    smaller = ablate(original, "first")
    assert smaller.data.shape == (4, 2) and original.data.shape == (4, 3)
    assert example_input(smaller).shape == (2, 2)
    with pytest.raises(AblationError, match="no ablate_feature"):
        ablate(torch.utils.data.TensorDataset(torch.ones(2, 2)), "x")


# --- ablators ----------------------------------------------------------------------------

def test_loco_and_leave_k_out_trials(tmp_path, df):
    study = make_study(tmp_path / "s", df)
    names = [t.name for t in study.trials("loco")]
    assert names == ["base", "feature mean radius", "feature worst area", "layer my_dense_two",
                     "layers prefixed my_dense", "model a custom model"]
    trials = study.trials(LeaveKOut(2))
    assert len(trials) == 1 + 6 + 1          # base, C(4, 2) combinations, the custom model
    mixed = next(t for t in trials if t.name == "feature mean radius + layer my_dense_two")
    assert mixed.kind == "mixed" and mixed.features == ["mean radius"] and mixed.layers == ["my_dense_two"]
    both = next(t for t in trials if t.name == "feature mean radius + feature worst area")
    assert both.kind == "feature" and both.components == ("mean radius", "worst area")
    assert isinstance(get_ablator("leave_k_out"), LeaveKOut) and isinstance(get_ablator(LOCO), LOCO)
    with pytest.raises(AblationError) as error:
        get_ablator("lcoo")
    assert "'loco'" in str(error.value) and "'leave_k_out'" in str(error.value)
    with pytest.raises(AblationError, match="at least 5"):
        study.trials(LeaveKOut(5))


def test_a_user_ablator_implements_one_method(tmp_path, df):
    class FeaturesInPairs(Ablator):
        def trials(self, study):
            return [Trial.feature("mean radius", "worst area")]

    study = make_study(tmp_path / "s", df)
    trials = study.trials(FeaturesInPairs())
    assert [t.kind for t in trials] == ["base", "feature"]   # the base is added
    result = study.run(train_fn=constant_training_fn, ablator=FeaturesInPairs(), seeds=[0],
                       executor=abgraph.SerialExecutor())
    assert result.to_dataframe().trial.tolist() == ["base", "feature mean radius + feature worst area"]


# --- recipes -------------------------------------------------------------------------------

class _State(abgraph.ExperimentState):
    PROPERTIES = ["name"]
    NONHASHED_ATTRIBUTES = ["model", "train_data", "eval_data"]

    def initialize_state(self, **properties):
        self.train_data = channel_data(16)
        self.eval_data = channel_data(8)
        self.model = channel_model()


def test_ablate_feature_and_ablate_layer_recipes(tmp_path):
    experiment = abgraph.Experiment(tmp_path / "e", state_class=_State)
    root = experiment.spawn_new_tree(name="rgb")
    no_green = AblateFeature("green")(root)
    no_act = AblateLayer("act")(no_green)
    both = AblateLayer(["act", "pool"], with_activation=False)(root)
    report = experiment.run(executor=abgraph.SerialExecutor())
    assert report.ok, report
    graph = experiment.graph
    state = graph.node(no_green.id).restore()
    assert state.model.conv.in_channels == 2 and state.train_data.x.shape[1] == 2
    assert state.eval_data.x.shape[1] == 2
    assert state.model(state.train_data.x[:2]).shape == (2, 2)
    assert "act" not in dict(graph.node(no_act.id).restore().model.named_children())
    assert graph.node(root.id).restore().model.conv.in_channels == 3   # the parent is untouched
    assert graph.node(both.id).status == "done"
    assert AblateLayer(prefix="my").targets == Prefix("my")
    with pytest.raises(AblationError, match="not a layer target"):
        AblateLayer(3.5)


# --- the study ---------------------------------------------------------------------------

def test_loco_study_runs_every_trial_and_seed_as_a_node(loco):
    study, result, directory = loco
    table = result.to_dataframe()
    assert table.trial.tolist() == ["base", "feature mean radius", "feature worst area",
                                    "layer my_dense_two", "layers prefixed my_dense", "model a custom model"]
    assert (table.n == 2).all() and (table.failed == 0).all() and result.ok
    assert table.loc[0, "diff"] == 0 and table["mean"].between(0.8, 1.0).all()
    for column in ["std", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"]:
        assert column in table
    assert (table.p_holm.dropna() >= table.p_value.dropna()).all()
    assert len(study.report.executed) == 2 + 6 * 2          # root, data, 6 trials x 2 seeds
    # every run is a stored, restorable branch with its trained model and its data
    node = result.node("feature worst area", 1).restore()
    assert node.model.dense_in.in_features == 29 and len(node.train_data.feature_names) == 29
    assert node.metrics["metric"] == result.runs.set_index(["trial", "seed"]).loc[
        ("feature worst area", 1), "metric"]
    grouped = result.node("layers prefixed my_dense", 0).restore().model
    assert list(dict(grouped.named_children())) == ["dense_in", "act_in", "act_two", "act_three", "out"]
    assert grouped.out.in_features == 16
    assert "seed:1" in result.node("base", 1).tags and "trial:base" in result.node("base", 1).tags


def test_printed_result_is_what_a_maggy_user_knows(loco):
    _, result, _ = loco
    text = str(result)
    lines = text.splitlines()
    assert lines[0].startswith("------ LOCO Results ------")
    # what was removed in words, not a serialized dict; the metric to the table's 4 digits
    assert re.match(r"BEST Config Excludes (feature|layer|model|nothing)\S*.* -- metric \d\.\d{4} \(mean of 2 seeds\)$",
                    lines[1]), lines[1]
    assert lines[2].startswith("WORST Config Excludes ") and "{" not in lines[2]
    assert lines[3].startswith("AVERAGE metric -- ")
    assert lines[4].startswith("Total Job Time 0 hours, ")
    assert "diff to base" in text and "layers prefixed my_dense" in text
    best = result.best
    assert best["mean"] == result.to_dataframe()["mean"].max()
    assert result.worst["mean"] == result.to_dataframe()["mean"].min()
    assert result.average == pytest.approx(result.to_dataframe()["mean"].mean())


def test_rerun_executes_nothing_and_restore_gives_the_same_table(loco, df):
    study, result, directory = loco
    again = make_study(directory, df)
    rerun = again.run(train_fn=training_fn, seeds=[0, 1], executor=abgraph.SerialExecutor())
    assert again.report.executed == [] and len(again.report.cached) == 14
    assert rerun.to_dataframe().equals(result.to_dataframe())
    restored = AblationStudy.restore(directory)
    assert isinstance(restored, StudyResult)
    assert restored.to_dataframe().equals(result.to_dataframe())
    assert str(restored).splitlines()[1:4] == str(result).splitlines()[1:4]
    # one more seed runs only that seed's trials
    more = make_study(directory, df)
    more.run(train_fn=training_fn, seeds=[0, 1, 2], executor=abgraph.SerialExecutor())
    assert len(more.report.executed) == 6 and len(more.report.cached) == 14


def test_plot_is_saved(loco, tmp_path):
    _, result, _ = loco
    figure = result.plot(tmp_path / "loco.png")
    assert (tmp_path / "loco.png").stat().st_size > 10_000
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert len(labels) == 5 and all("(n=2)" in label for label in labels)
    result.plot(tmp_path / "loco.pdf")
    assert (tmp_path / "loco.pdf").read_bytes()[:4] == b"%PDF"


def test_users_own_datasets_take_part(tmp_path):
    study = AblationStudy(tmp_path / "maggy", dataset=MaggyDataset())
    study.features.include("ch1", "ch9")              # nothing to check them against yet
    study.model.set_base_model_generator(linear_model)
    with pytest.raises(AblationError, match="'feature ch9' cannot be built: RuntimeError: Ablation failed"):
        study.run(train_fn=constant_training_fn, seeds=[0], executor=abgraph.SerialExecutor())
    study.features.exclude("ch9")
    result = study.run(train_fn=constant_training_fn, seeds=[0], executor=abgraph.SerialExecutor())
    assert result.node("feature ch1", 0).restore().model[0].in_features == 2
    assert result.node("base", 0).restore().train_data.data.shape == (16, 3)

    columns = AblationStudy(tmp_path / "columns", dataset=Columns(torch.ones(4, 3), "abc"))
    with pytest.raises(AblationError, match="unknown feature 'd' in Columns; valid features"):
        columns.features.include("d")
    columns.features.include("b")
    columns.model.set_base_model_generator(linear_model)
    result = columns.run(train_fn=constant_training_fn, seeds=[0], executor=abgraph.SerialExecutor())
    assert result.node("feature b", 0).restore().train_data.names == ["a", "c"]


def test_failing_train_fn_fails_its_trials_and_the_others_finish(tmp_path, df):
    study = make_study(tmp_path / "s", df)
    result = study.run(train_fn=picky_training_fn, seeds=[0, 1], executor=abgraph.SerialExecutor())
    table = result.to_dataframe().set_index("trial")
    assert table.loc["feature mean radius", "failed"] == 2 and table.loc["feature mean radius", "n"] == 0
    assert table.loc["layer my_dense_two", "failed"] == 2
    assert table.loc["layers prefixed my_dense", "failed"] == 2
    assert table.loc["base", "n"] == 2 and table.loc["base", "mean"] == 30.0
    assert table.loc["feature worst area", "mean"] == 29.0
    assert table.loc["model a custom model", "failed"] == 2     # no my_dense_two there either
    assert not result.ok and len(result.failed) == 8
    errors = dict(zip(result.failed.trial, result.failed.error))
    assert "cannot train without mean radius" in errors["feature mean radius"]
    assert "returned str ('high'), not a number" in errors["layer my_dense_two"]
    text = str(result)
    assert "8 run(s) failed" in text and "cannot train without mean radius" in text
    assert "no result (failed): feature mean radius" in _plot_text(result, tmp_path)


def _plot_text(result, tmp_path):
    figure = result.plot(tmp_path / "failed.png")
    return " ".join(t.get_text() for t in figure.texts)


def test_bad_input_is_refused_early(tmp_path, df):
    study = AblationStudy(tmp_path / "s", dataset=df, label_name="target")
    with pytest.raises(AblationError) as error:
        study.features.include("worst aera")
    assert "'worst area'" in str(error.value)
    study.model.layers.include("my_dense_tow")              # no base model yet: checked later
    with pytest.raises(AblationError) as error:
        study.model.set_base_model_generator(base_model_generator)
    assert "'my_dense_two'" in str(error.value) and "valid names" in str(error.value)
    study.model.layers.exclude("my_dense_tow")
    study.model.set_base_model_generator(base_model_generator)
    with pytest.raises(AblationError, match="my_dense_three"):
        study.model.layers.include_groups(["my_dense_two", "my_dense_thre"])
    with pytest.raises(AblationError, match="no layer name starts with"):
        study.model.layers.include_groups(prefix="conv")
    with pytest.raises(AblationError, match="out of range"):
        study.model.layers.include(7)
    with pytest.raises(AblationError, match="'not_a_model' returned str"):
        study.model.add_custom_model_generator(not_a_model, "broken")
    with pytest.raises(TypeError, match="named function"):
        study.model.add_custom_model_generator(lambda: my_custom_model(), "anonymous")
    with pytest.raises(AblationError, match="the study is empty"):
        study.run(train_fn=training_fn, executor=abgraph.SerialExecutor())
    study.model.layers.include("out")                        # cannot be repaired: the output changes
    with pytest.raises(AblationError, match="trial 'layer out' cannot be built.*output shape"):
        study.run(train_fn=training_fn, executor=abgraph.SerialExecutor())
    assert not (tmp_path / "s").exists()                     # refused before anything was stored
    with pytest.raises(TypeError, match="dataset_function, model_function"):
        study.run(train_fn=not_a_model)
    with pytest.raises(ValueError, match="direction"):
        study.run(train_fn=training_fn, direction="up")
    with pytest.raises(TypeError, match="not a dataset"):
        AblationStudy(tmp_path / "t", dataset=not_a_model)
    with pytest.raises(TypeError, match="label_name"):
        AblationStudy(tmp_path / "t", dataset=df)
    no_base = AblationStudy(tmp_path / "u", dataset=df, label_name="target")
    no_base.features.include("mean radius")
    with pytest.raises(AblationError, match="base model generator"):
        no_base.run(train_fn=training_fn)


def test_removing_the_signal_channel_hurts_most(tmp_path):
    study = AblationStudy(tmp_path / "rgb", dataset=channel_data())
    study.features.include("red", "green", "blue")
    study.model.set_base_model_generator(channel_model)
    result = study.run(train_fn=fit_and_score, seeds=[0, 1], executor=abgraph.SerialExecutor())
    table = result.to_dataframe().set_index("trial")
    assert table.loc["base", "mean"] > 0.9
    assert table["diff"].idxmin() == "feature green"
    assert table.loc["feature green", "mean"] < 0.75 and table.loc["feature red", "mean"] > 0.9
    assert result.worst["trial"] == "feature green"
    assert result.node("feature green", 0).restore().model.conv.in_channels == 2


def test_masking_the_sentiment_words_hurts_most(tmp_path):
    study = AblationStudy(tmp_path / "text", dataset=token_dataset())
    study.features.include("good", "movie")
    study.features.include_groups(["good", "poor"])
    study.model.set_base_model_generator(token_model)
    result = study.run(train_fn=fit_and_score, seeds=[0, 1], executor=abgraph.SerialExecutor())
    table = result.to_dataframe().set_index("trial")
    assert table.index.tolist() == ["base", "feature good", "feature movie", "features ['good', 'poor']"]
    assert table.loc["base", "mean"] > 0.95 and table.loc["feature movie", "mean"] > 0.95
    # "poor" (or the mask in its place) still tells the classes apart; masking both does not
    assert table.loc["feature good", "mean"] > 0.95
    assert table.loc["features ['good', 'poor']", "mean"] < 0.75
    assert result.worst["trial"] == "features ['good', 'poor']"
    masked = result.node("features ['good', 'poor']", 0).restore().train_data
    assert masked.ids.shape == token_dataset().ids.shape
    assert "good" not in masked.feature_names and "poor" not in masked.feature_names


def test_train_and_evaluate_recipes_instead_of_a_train_fn(tmp_path, df):
    from abgraph.recipes import Evaluate, Train
    study = AblationStudy(tmp_path / "s", dataset=df.iloc[:400], eval_dataset=df.iloc[400:],
                          label_name="target")
    study.features.include("worst area")
    study.model.set_base_model_generator(base_model_generator)
    result = study.run(train=Train(epochs=2, lr=0.01, optimizer="adam"),
                       evaluate=Evaluate(metrics=["accuracy"]), metric="accuracy", seeds=[0, 1],
                       executor=abgraph.SerialExecutor())
    table = result.to_dataframe()
    assert table.trial.tolist() == ["base", "feature worst area"] and (table.n == 2).all()
    assert table["mean"].between(0.7, 1.0).all() and result.metric == "accuracy"
    node = result.node("feature worst area", 0)
    assert node.recipe.name == "Evaluate" and node.parent.recipe.properties["seed"] == 0
    assert node.restore().eval_data.data.shape == (169, 29)
    with pytest.raises(AblationError, match="records"):
        study.run(train=Train(epochs=1, lr=0.01), evaluate=Evaluate(metrics=["accuracy"]), metric="f1")


USER_SCRIPT = '''
import json, sys
from collections import OrderedDict
import torch
from torch import nn
from sklearn.datasets import load_breast_cancer
from abgraph.ablation import AblationStudy

def base_model_generator():
    return nn.Sequential(OrderedDict([("dense_in", nn.Linear(30, 8)), ("act", nn.ReLU()),
                                      ("my_dense_two", nn.Linear(8, 8)), ("out", nn.Linear(8, 2))]))

def training_fn(dataset_function, model_function):
    model, dataset = model_function(), dataset_function()
    x, y = dataset.data, dataset.labels
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(10):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return (model(x).argmax(1) == y).float().mean()       # a tensor, as in Maggy's listing

df = load_breast_cancer(as_frame=True).frame
study = AblationStudy(sys.argv[1], dataset=df, label_name="target")
study.features.include("mean radius")
study.model.set_base_model_generator(base_model_generator)
study.model.layers.include("my_dense_two")
result = study.run(train_fn=training_fn, ablator="loco", direction="max", seeds=[0, 1])
print(result)
print("RESULT " + json.dumps({"executed": len(study.report.executed),
                              "cached": len(study.report.cached), "ok": result.ok,
                              "n": result.to_dataframe().n.tolist()}))
'''


def test_user_script_functions_in_main_run_on_the_default_executor(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(USER_SCRIPT)

    def run():
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "study")],
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stdout + done.stderr
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
        return json.loads(line[len("RESULT "):]), done.stdout

    first, text = run()
    assert first == {"executed": 2 + 3 * 2, "cached": 0, "ok": True, "n": [2, 2, 2]}, text
    assert "BEST Config Excludes" in text
    restored = AblationStudy.restore(tmp_path / "study")
    assert restored.to_dataframe().n.tolist() == [2, 2, 2]
    second, _ = run()
    assert second["executed"] == 0 and second["cached"] == 8


def test_restore_without_a_study_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ablation study"):
        AblationStudy.restore(tmp_path)


def test_listings_print_what_is_included(tmp_path, df, capsys):
    study = make_study(tmp_path / "s", df)
    study.model.layers.include_groups(["my_dense_two", "my_dense_three"], [4, 5])
    study.features.list_all()
    study.model.layers.list_all()
    out = capsys.readouterr().out
    assert "--- mean radius" in out and "--- worst area" in out
    assert '---- All layers prefixed "my_dense"' in out
    assert "--- Layer group ['my_dense_two', 'my_dense_three']" in out and "--- Layer group [4, 5]" in out
    assert "--- my_dense_two" in out


LISTING_4_2 = {
    "layers [2, 3]": [(0, 6, 64), (2, 64, 32), (4, 32, 2), (6, 2, 1)],
    "layers [4, 5]": [(0, 6, 64), (2, 64, 64), (4, 64, 2), (6, 2, 1)],
}


def test_maggy_listing_3_10_gives_the_models_of_listing_4_2(tmp_path):
    import pandas
    generator = torch.Generator().manual_seed(0)
    columns = ["pclass", "sex", "age", "sibsp", "parch", "fare"]
    frame = pandas.DataFrame(torch.randn(32, 6, generator=generator).numpy(), columns=columns)
    frame["survived"] = (frame.fare > 0).astype(int)
    study = AblationStudy(tmp_path / "titanic", dataset=frame, label_name="survived")
    study.model.set_base_model_generator(titanic_model)
    study.model.layers.include(2, 4)
    study.model.layers.include_groups([2, 3], [4, 5])
    study.features.include("Fare")                                  # Maggy matches any case
    result = study.run(train_fn=constant_training_fn, seeds=[0], executor=abgraph.SerialExecutor(),
                       direction="min")
    assert result.to_dataframe().trial.tolist() == ["base", "feature Fare", "layer 2", "layer 4",
                                                    "layers [2, 3]", "layers [4, 5]"]
    for trial, linears in LISTING_4_2.items():
        model = result.node(trial, 0).restore().model
        assert [(i, m.in_features, m.out_features) for i, m in enumerate(model)
                if isinstance(m, nn.Linear)] == linears
        assert len(model) == 8 and isinstance(model[7], nn.Sigmoid)
    assert result.node("feature Fare", 0).restore().model[0].in_features == 5


def test_train_fn_may_ask_for_the_eval_data(tmp_path, df):
    study = AblationStudy(tmp_path / "s", dataset=df.iloc[:400], eval_dataset=df.iloc[400:],
                          label_name="target")
    study.features.include("worst area")
    study.model.set_base_model_generator(base_model_generator)
    result = study.run(train_fn=eval_size_fn, seeds=[0], executor=abgraph.SerialExecutor())
    assert result.to_dataframe()["mean"].tolist() == [30400.0, 29400.0]


def test_editing_the_training_function_is_a_new_trial_and_a_comment_is_not():
    from abgraph.ablation.study import AblationTrial

    def version(fn):
        return AblationTrial(Trial.base(), 0, base_model_generator, fn).code_version()

    assert version(training_fn) == version(training_fn)
    assert version(training_fn) != version(constant_training_fn)
    # the source (AST) counts, not its comments and layout
    from abgraph import identity
    first = identity.normalized_source(training_fn)
    assert first == identity.normalized_source(training_fn)
    assert "Adam" in first and "#" not in first
