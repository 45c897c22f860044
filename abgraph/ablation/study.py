"""`AblationStudy`: Maggy's ablation API, compiled into one abgraph experiment.

    study = AblationStudy("runs/titanic", dataset=df, label_name="survived")
    study.features.include("fare", "sibsp")
    study.model.set_base_model_generator(base_model_generator)
    study.model.layers.include("my_dense_two")
    study.model.layers.include_groups(prefix="my_dense")
    study.model.add_custom_model_generator(my_custom_model, "a custom model")
    result = study.run(train_fn=training_fn, ablator="loco", direction="max", seeds=[0, 1, 2])

The graph it builds, in `directory`:

    StudyState root (properties: the dataset's content digest, label_name)
      └─ StudyData (puts the datasets into the state)
           └─ AblationTrial(trial, kind, components, seed, model_generator, train_fn)
              one node per trial x seed, the base trial included
              [└─ train recipes └─ evaluate recipe, with run(train=..., evaluate=...)]

Each trial node makes its own data and model (features removed, model made by
its generator, input layer fitted, layers removed), seeds everything, calls the
user's `train_fn(dataset_function, model_function)` and stores the number it
returns as `metrics["metric"]`, with the trained model and the trial's data as
payload. Nodes are cached like any other: running the same study again executes
nothing; adding a seed or a trial executes only that. `ablation_study.json` in
the folder records which nodes make up the study, so `AblationStudy.restore`
gives the result back without running or unpickling anything.

Identity of a trial: its name, kind, components and seed, the model generator
and train_fn by qualified name AND by their normalized source (editing the
training function re-runs the study; editing a comment in it does not).
"""
from __future__ import annotations

import copy
import inspect
import json
import math
import numbers
import time
from pathlib import Path

import numpy as np

from abgraph import identity
from abgraph.device import current_device
from abgraph.ablation import surgery
from abgraph.ablation.ablators import LOCO, LeaveKOut, Trial, get_ablator
from abgraph.ablation.datasets import PandasDataset, ablate, example_input, fingerprint, is_dataset
from abgraph.ablation.errors import AblationError
from abgraph.ablation.recipes import build_trial, call_generator
from abgraph.ablation.result import StudyResult
from abgraph.ablation.surgery import Prefix
from abgraph.experiment import Experiment
from abgraph.recipes import _torch
from abgraph.recipes.base import Recipe
from abgraph.state import ExperimentState

__all__ = ["AblationStudy", "AblationTrial", "StudyData", "StudyState"]

STUDY_FILE = "ablation_study.json"
METRIC = "metric"


# --- the graph's pieces ----------------------------------------------------------------

class StudyState(ExperimentState):
    """A state of an ablation study: the model and the data of one trial."""

    PROPERTIES = ["dataset", "label_name"]
    NONHASHED_ATTRIBUTES = ["model", "train_data", "eval_data"]
    VERSION = "1"

    def initialize_state(self, **properties):
        self.model = self.train_data = self.eval_data = None


class StudyData(Recipe):
    """Puts the study's datasets into the state. They travel with the recipe, not
    as properties: the root's `dataset` property (their content digest) is what
    makes this node's identity."""

    VERSION = "1"

    def __init__(self, train_data, eval_data=None):
        self.train_data, self.eval_data = train_data, eval_data

    def run(self, state):
        state.train_data, state.eval_data = self.train_data, self.eval_data
        return state


class AblationTrial(Recipe):
    """One trial with one seed: build its data and model, then (with a `train_fn`)
    train and record the metric.

    `model_generator` makes the model before any layer is removed (the base
    generator, or the custom one for a "model" trial). Without `train_fn` the
    node only prepares the trial (for a graph that goes on with `Train`).
    """

    PROPERTIES = ["trial", "kind", "components", "seed", "model_generator", "train_fn",
                  "with_activation"]
    VERSION = "1"

    def __init__(self, trial: Trial, seed, model_generator, train_fn=None, with_activation=False):
        self.trial, self.kind, self.components = trial.name, trial.kind, tuple(trial.components)
        self.seed, self.model_generator, self.train_fn = seed, model_generator, train_fn
        self.with_activation = bool(with_activation)

    def code_version(self) -> str:
        """The class's VERSION plus the normalized source of the user's functions."""
        sources = [_source(self.model_generator), _source(self.train_fn)]
        return f"{super().code_version()}+src:{identity.digest(sources)}"

    def run(self, state):
        trial = Trial(self.trial, self.kind, self.components)
        role = "custom model generator" if trial.kind == "model" else "base model generator"
        with seeded(self.seed):
            train, evaluation, model = build_trial(trial, state.train_data, self.model_generator,
                                                   self.with_activation, eval_data=state.eval_data,
                                                   role=role)
        state.train_data, state.eval_data, state.model = train, evaluation, model
        if self.train_fn is None:
            return state
        handed = []

        def dataset_function():
            return train

        def model_function():
            fresh = copy.deepcopy(model)
            handed.append(fresh)
            return fresh

        arguments = {}
        if "eval_dataset_function" in _parameters(self.train_fn):
            arguments["eval_dataset_function"] = lambda: evaluation
        with seeded(self.seed):   # re-seeded: the same data order in every trial of a seed
            value = self.train_fn(dataset_function, model_function, **arguments)
        state.metrics.update(_metrics(value, _name(self.train_fn)))
        if handed:
            state.model = handed[-1]   # what the user trained
        return state


def _with_seed(recipe, seed):
    """`recipe` with `seed` as its seed property, where it has one (a copy)."""
    if "seed" not in getattr(recipe, "PROPERTIES", ()):
        return recipe
    reseeded = copy.copy(recipe)
    reseeded.seed = seed
    return reseeded


def seeded(seed):
    """Python, NumPy and torch (CPU and the current CUDA device) seeded with `seed`
    inside the block; the caller's random state is back afterwards (on a
    `SerialExecutor` trials run in the user's process)."""
    return _torch.seeded(int(seed), current_device())


def _metrics(value, name) -> dict:
    """The train_fn's return value as metrics: a number, or a dict with "metric"."""
    if isinstance(value, dict):
        if METRIC not in value:
            raise TypeError(f"{name} returned a dict without a {METRIC!r} key ({sorted(value)}); "
                            "return a number, or a dict with the study's metric under 'metric'")
        return {str(k): _number(v, f"{name}()[{k!r}]") for k, v in value.items()}
    return {METRIC: _number(value, f"{name}()")}


def _number(value, where) -> float:
    if hasattr(value, "numel") and hasattr(value, "item"):          # a torch tensor
        if value.numel() != 1:
            raise TypeError(f"{where} returned a tensor of shape {tuple(value.shape)}, not a number")
        value = value.item()
    elif isinstance(value, np.ndarray) and value.size == 1 or isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} returned {type(value).__name__} ({value!r:.60}), not a number: "
                        "the training function returns the metric to compare trials on")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{where} returned {value}: the metric must be a finite number "
                         "(did the training diverge?)")
    return value


def _name(fn) -> str:
    inner = getattr(fn, "func", fn)
    return getattr(inner, "__qualname__", None) or type(fn).__name__


def _source(fn) -> str:
    if fn is None:
        return ""
    inner = getattr(fn, "func", fn)
    try:
        return identity.normalized_source(inner)
    except Exception:   # builtins and the like: the name alone identifies them
        return _name(fn)


def _parameters(fn) -> list:
    try:
        return list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return []


def _check_signature(train_fn) -> None:
    try:
        signature = inspect.signature(train_fn)
    except (TypeError, ValueError):
        return
    extra = {"eval_dataset_function": None} if "eval_dataset_function" in signature.parameters else {}
    try:
        signature.bind(None, None, **extra)
    except TypeError:
        raise TypeError(f"train_fn {_name(train_fn)!r}{signature} must take two arguments: "
                        "(dataset_function, model_function)") from None


def _named_function(fn, role):
    """A callable usable as part of identity: a named function or a partial of one."""
    if not callable(fn):
        raise TypeError(f"{role} must be a function, not {type(fn).__name__} ({fn!r:.60})")
    try:
        identity.canonical(fn, role)
    except identity.UnsupportedValue as error:
        raise TypeError(f"{role} must be a named function (def ...) or a functools.partial of one, "
                        f"because it is part of every trial's identity: {error}") from None
    return fn


# --- the builder: features, layers, custom models -------------------------------------------

def _flatten(items) -> list:
    flat = []
    for item in items:
        if isinstance(item, (list, tuple)):
            flat.extend(item)
        else:
            flat.append(item)
    return flat


class Features:
    """`study.features`: the features to leave out, one trial each (LOCO)."""

    def __init__(self, study):
        self._study = study
        self.included: list = []

    def include(self, *names) -> None:
        """Include features by name, separately or as lists: `include("fare", "sibsp")`,
        `include(["pclass"])`. An unknown name is refused, listing the valid ones."""
        for name in _flatten(names):
            self._add(name)

    def include_groups(self, *groups) -> None:
        """Include groups of features, each removed together in one trial, e.g. the
        one-hot columns of one variable: `include_groups(["sex_f", "sex_m"])`, or
        the words of one idea: `include_groups(["good", "great"])`."""
        for group in groups:
            if not isinstance(group, (list, tuple)) or not group:
                raise AblationError(f"a feature group is a non-empty list of features, not {group!r}; "
                                    "use features.include() for single features")
            self._add(tuple(group))

    def _add(self, name) -> None:
        data = self._study.dataset
        if data is None:
            raise AblationError(f"cannot include feature {name!r}: the study has no dataset")
        if not callable(getattr(data, "ablate_feature", None)):
            raise AblationError(f"cannot include feature {name!r}: {type(data).__name__} has no "
                                "ablate_feature(name); use PandasDataset, ChannelDataset or "
                                "TokenDataset, or subclass abgraph.ablation.FeatureDataset")
        check = getattr(data, "check_feature", None)
        if callable(check):
            check(name)
        if name not in self.included:
            self.included.append(name)

    def exclude(self, *names) -> None:
        """Take features (or a group, given as a tuple) out of the study again."""
        for name in names:
            if name not in self.included:
                raise AblationError(f"feature {name!r} is not included; included: {self.included}")
            self.included.remove(name)

    def list_all(self) -> None:
        """Print the included features."""
        print("Included features are:" if self.included else "No feature is included.")
        for name in self.included:
            print(f"--- Feature group {list(name)}" if isinstance(name, tuple) else f"--- {name}")
        names = getattr(self._study.dataset, "feature_names", None)
        if names is not None:
            shown = list(names)
            print(f"(the dataset has {len(shown)} features: {shown[:30]}"
                  f"{' …' if len(shown) > 30 else ''})")

    def __repr__(self):
        return f"<features included: {self.included}>"


class Layers:
    """`study.model.layers`: single layers and layer groups to leave out."""

    def __init__(self, model):
        self._model = model
        self.included: list = []     # single targets: names or indices
        self.groups: list = []       # tuples of targets; a prefix group is (Prefix(p),)

    def include(self, *targets) -> None:
        """Include single layers by name or index, separately or as lists
        (`include("my_dense_two", "my_dense_three")`, `include(2, 4)`): one trial each."""
        for target in _flatten(targets):
            _check_target(target)
            self._model._validate([target])
            if target not in self.included:
                self.included.append(target)

    def include_groups(self, *groups, prefix=None) -> None:
        """Include layer groups, each removed in one trial: lists of names or indices
        (`include_groups([2, 3], [4, 5])`) and/or every layer whose name starts with
        `prefix` (`include_groups(prefix="my_dense")`)."""
        if not groups and prefix is None:
            raise AblationError("include_groups needs at least one list of layers or prefix=...")
        new = []
        for group in groups:
            if not isinstance(group, (list, tuple)) or not group:
                raise AblationError(f"a layer group is a non-empty list of layer names or indices, "
                                    f"not {group!r}; use layers.include() for single layers")
            for target in group:
                _check_target(target)
            new.append(tuple(group))
        if prefix is not None:
            if not isinstance(prefix, str) or not prefix:
                raise AblationError(f"prefix must be a non-empty string, not {prefix!r}")
            new.append((Prefix(prefix),))
        for group in new:
            self._model._validate(list(group))
            if group not in self.groups:
                self.groups.append(group)

    def exclude(self, *targets) -> None:
        for target in _flatten(targets):
            if target not in self.included:
                raise AblationError(f"layer {target!r} is not included; included: {self.included}")
            self.included.remove(target)

    def list_all(self) -> None:
        """Print the included single layers and layer groups (Maggy's format)."""
        self.print_all()
        self.print_all_groups()

    def print_all(self) -> None:
        print("Included single layers are:" if self.included else "No single layer is included.")
        for target in self.included:
            print(f"--- {target}")

    def print_all_groups(self) -> None:
        print("Included layer groups are:" if self.groups else "No layer group is included.")
        for group in self.groups:
            if len(group) == 1 and isinstance(group[0], Prefix):
                print(f'---- All layers prefixed "{group[0].prefix}"')
            else:
                print(f"--- Layer group {list(group)}")

    def __repr__(self):
        return f"<layers included: {self.included}, groups: {self.groups}>"


def _check_target(target):
    if isinstance(target, bool) or not isinstance(target, (str, numbers.Integral, Prefix)):
        raise AblationError(f"{target!r} ({type(target).__name__}) is not a layer: give a layer "
                            "name or an index")


class Model:
    """`study.model`: the base model generator, its layers, custom models."""

    def __init__(self, study):
        self._study = study
        self.base_model_generator = None
        self.custom_models: dict = {}
        self.layers = Layers(self)
        self._base = None   # one instance, for checking names and shapes before running

    def set_base_model_generator(self, generator) -> None:
        """The function (no argument) that returns the base `nn.Module`. It is
        called once now to check what it returns and the layers included so far."""
        _named_function(generator, "the base model generator")
        model = call_generator(generator, "the base model generator")
        self.base_model_generator, self._base = generator, model
        self._validate(self.layers.included)
        for group in self.layers.groups:
            self._validate(list(group))

    def add_custom_model_generator(self, generator, model_identifier: str) -> None:
        """A whole alternative model, one trial of its own, named `model_identifier`."""
        if not isinstance(model_identifier, str) or not model_identifier:
            raise AblationError(f"a custom model needs a non-empty string name, not {model_identifier!r}")
        if model_identifier in self.custom_models:
            raise AblationError(f"a custom model named {model_identifier!r} is already included")
        _named_function(generator, f"custom model generator {model_identifier!r}")
        call_generator(generator, f"custom model generator {model_identifier!r}")
        self.custom_models[model_identifier] = generator

    def _validate(self, targets) -> None:
        """Check layer targets against the base model (later, at run start, if it is not set)."""
        if self._base is None or not targets:
            return
        surgery._resolve_targets(self._base, list(targets))

    def list_layers(self) -> list:
        """Every layer name of the base model (what `layers.include` accepts)."""
        if self._base is None:
            raise AblationError("set the base model generator first")
        return surgery.list_layers(self._base)

    def __repr__(self):
        return (f"<model: base {_name(self.base_model_generator) if self.base_model_generator else None}, "
                f"custom {list(self.custom_models)}>")


# --- the study ------------------------------------------------------------------------

class AblationStudy:
    """Maggy's ablation study on an abgraph experiment stored in `directory`.

    dataset: a pandas DataFrame (made a `PandasDataset` with `label_name` as the
    label), a dataset (anything indexable with a length; one with
    `ablate_feature(name)` for feature ablation), a function returning either
    (called once, now), or None for a study of models only. `eval_dataset`
    (optional, same forms) is ablated alongside and handed to a train_fn that
    takes an `eval_dataset_function` argument.
    """

    def __init__(self, directory, dataset=None, label_name=None, eval_dataset=None):
        self.directory = Path(directory).expanduser()
        self.label_name = label_name
        self.dataset = _as_dataset(dataset, label_name, "dataset")
        self.eval_dataset = _as_dataset(eval_dataset, label_name, "eval_dataset")
        self.features = Features(self)
        self.model = Model(self)
        self.experiment = self.report = None   # the Experiment and RunReport of the last run

    # -- running ---------------------------------------------------------------------
    def run(self, train_fn=None, ablator="loco", direction="max", seeds=(0, 1, 2), executor=None,
            with_activation: bool = False, progress=None, confidence: float = 0.95,
            train=None, evaluate=None, metric=None) -> StudyResult:
        """Run every trial x seed not stored yet; return the `StudyResult`.

        train_fn: Maggy's `training_fn(dataset_function, model_function)` returning
            the metric (a number, or a dict with the metric under "metric").
            Instead of it: `train` (a recipe such as `Train(...)`, or a list of
            recipes applied in order), `evaluate` (e.g. `Evaluate(...)`) and
            `metric`, the name of the metric they record (e.g. "accuracy").
            A recipe with a `seed` property is given each run's seed.
        ablator: "loco", "leave_k_out", or an `Ablator` (e.g. `LeaveKOut(3)`).
        direction: "max" or "min" (which metric is better).
        seeds: one run of every trial per seed; three give a confidence interval.
        executor: where trials run (default: `ProcessExecutor`, every core or GPU;
            `SerialExecutor()` runs them in this process).
        with_activation: a removed layer takes the activation after it along.
        """
        direction = _direction(direction)
        seeds = _seeds(seeds)
        steps, metric = self._training(train_fn, train, evaluate, metric)
        ablator = get_ablator(ablator)
        trials = self.trials(ablator)
        self._check(trials, with_activation)

        experiment = Experiment(self.directory, state_class=StudyState)
        root = experiment.spawn_new_tree(dataset=self._fingerprint(), label_name=self.label_name)
        data = StudyData(self.dataset, self.eval_dataset)(root)
        nodes = {}
        for trial in trials:
            generator = (self.model.custom_models[trial.model] if trial.kind == "model"
                         else self.model.base_model_generator)
            for seed in seeds:
                with experiment.tag(f"trial:{trial.name}", f"kind:{trial.kind}", f"seed:{seed}"):
                    promise = AblationTrial(trial, seed, generator, train_fn, with_activation)(data)
                    for step in steps:
                        promise = _with_seed(step, seed)(promise)
                nodes.setdefault(trial.name, {})[seed] = promise.id
        record = {"format": 1, "ablator": ablator.label, "direction": direction, "metric": metric,
                  "confidence": confidence, "seeds": seeds,
                  "training": _name(train_fn) if train_fn is not None else [repr(s) for s in steps],
                  "trials": [_trial_record(t) for t in trials],
                  "nodes": {name: [[seed, node] for seed, node in by_seed.items()]
                            for name, by_seed in nodes.items()}}
        _write_record(self.directory, record)   # restorable even if the run is interrupted
        started = time.perf_counter()
        report = experiment.run(executor=executor, progress=progress, raise_on_failure=False)
        record.update(elapsed=time.perf_counter() - started, finished=time.time(),
                      counts={"executed": len(report.executed), "cached": len(report.cached),
                              "failed": len(report.failed), "blocked": len(report.blocked)})
        _write_record(self.directory, record)
        self.experiment, self.report = experiment, report
        return _result(record, experiment.graph, self.directory)

    def _training(self, train_fn, train, evaluate, metric):
        """Check the two ways to train: Maggy's train_fn, or recipes and a metric name."""
        if train_fn is not None:
            if train is not None or evaluate is not None:
                raise TypeError("give either train_fn (Maggy's training function) or "
                                "train=/evaluate= recipes, not both")
            if metric not in (None, METRIC):
                raise TypeError(f"with train_fn the metric is what it returns; metric={metric!r} "
                                "applies to train=/evaluate= recipes")
            _named_function(train_fn, "train_fn")
            _check_signature(train_fn)
            return [], METRIC
        if train is None and evaluate is None:
            raise TypeError("run() needs train_fn=training_fn (Maggy's training function, taking "
                            "(dataset_function, model_function) and returning the metric), or "
                            "train=Train(...), evaluate=Evaluate(...), metric='accuracy'")
        steps = [] if train is None else list(train) if isinstance(train, (list, tuple)) else [train]
        steps += [] if evaluate is None else [evaluate]
        for step in steps:
            if not isinstance(step, Recipe):
                raise TypeError(f"train and evaluate take recipes (e.g. Train(...), Evaluate(...)), "
                                f"not {type(step).__name__}")
        if not isinstance(metric, str) or not metric:
            raise TypeError("with train=/evaluate= recipes, name the metric to compare trials on: "
                            "metric='accuracy' (one that the recipes write to state.metrics)")
        written = getattr(evaluate, "metrics", None)
        if isinstance(written, (list, tuple)) and metric not in written and evaluate is steps[-1]:
            raise AblationError(f"metric {metric!r} is not one that {evaluate!r} records; it "
                                f"records {list(written)}")
        data_name = getattr(evaluate, "data", None)
        if data_name == "eval_data" and self.eval_dataset is None:
            raise AblationError(f"{evaluate!r} measures eval_data, but the study has no eval_dataset: "
                                "give AblationStudy(..., eval_dataset=...) or Evaluate(data='train_data')")
        return steps, metric

    def trials(self, ablator="loco") -> list:
        """The trials `run` would run with `ablator`, the base first."""
        ablator = get_ablator(ablator)
        trials = ablator.trials(self)
        if not isinstance(trials, (list, tuple)) or not all(isinstance(t, Trial) for t in trials):
            raise AblationError(f"{ablator!r}.trials(study) must return a list of Trial, got "
                                f"{trials!r:.80}")
        trials = list(trials)
        if not any(t.kind == "base" for t in trials):
            trials.insert(0, Trial.base())
        if len(trials) < 2:
            raise AblationError(
                "the study is empty: include features (study.features.include), layers "
                "(study.model.layers.include / include_groups) or custom models "
                "(study.model.add_custom_model_generator) before running it"
                + ("" if type(ablator).trials in (LOCO.trials, LeaveKOut.trials)
                   else f"; {ablator!r} returned no trial besides the base"))
        names = [t.name for t in trials]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise AblationError(f"{ablator!r} returned several trials named {duplicated}")
        trials.sort(key=lambda t: t.kind != "base")
        return trials

    def _check(self, trials, with_activation) -> None:
        """Before anything trains: every name exists and every removal can be repaired
        (a dry run of each trial's surgery on a few samples)."""
        if self.model.base_model_generator is None:
            raise AblationError("set the base model generator first: "
                                "study.model.set_base_model_generator(base_model_generator)")
        base = self.model._base
        sample = _head(self.dataset)
        for trial in trials:
            if trial.kind == "model" and trial.model not in self.model.custom_models:
                raise AblationError(f"trial {trial.name!r} uses custom model {trial.model!r}, which "
                                    f"is not added; custom models: {list(self.model.custom_models)}")
            if trial.features and self.dataset is None:
                raise AblationError(f"trial {trial.name!r} removes features {trial.features}, but "
                                    "the study has no dataset")
            for feature in trial.features:
                check = getattr(self.dataset, "check_feature", None)
                if callable(check):
                    check(feature)
            if trial.layers:
                surgery._resolve_targets(base, list(trial.layers))
            if not (trial.features or trial.layers):
                continue
            try:
                data = sample
                for feature in trial.features:
                    try:
                        data = ablate(data, feature)
                    except AblationError:   # not in the first samples (a rare word): use all
                        data = _head(ablate(self.dataset, feature))
                example = None if data is None else example_input(data)
                model = surgery.repair_input_layer(base, example) if trial.features else base
                if trial.layers:
                    surgery.ablate_layers(model, list(trial.layers), example_input=example,
                                          with_activation=with_activation)
            except Exception as error:   # a user's ablate_feature may raise anything
                raise AblationError(f"trial {trial.name!r} cannot be built: "
                                    + (str(error) if isinstance(error, AblationError)
                                       else f"{type(error).__name__}: {error}")) from error

    def _fingerprint(self) -> str:
        content = [None if d is None else fingerprint(d) for d in (self.dataset, self.eval_dataset)]
        return identity.digest(content)

    # -- coming back later -------------------------------------------------------------
    @classmethod
    def restore(cls, directory) -> StudyResult:
        """The result of the study stored in `directory`, without running anything
        (reads only the index: nothing is unpickled)."""
        directory = Path(directory).expanduser()
        path = directory / STUDY_FILE
        if not path.exists():
            raise FileNotFoundError(f"no ablation study in {directory} (no {STUDY_FILE}): "
                                    "run one there with AblationStudy(...).run(...)")
        record = json.loads(path.read_text())
        experiment = Experiment.restore(directory, state_class=StudyState)
        return _result(record, experiment.graph, directory)

    def __repr__(self):
        return (f"<AblationStudy {self.directory}: features {self.features.included}, layers "
                f"{self.model.layers.included}, groups {self.model.layers.groups}, custom models "
                f"{list(self.model.custom_models)}>")


def _as_dataset(dataset, label_name, role):
    if dataset is None:
        return None
    if callable(dataset) and not is_dataset(dataset) and not _is_dataframe(dataset):
        generator = dataset
        dataset = generator()
        if not (_is_dataframe(dataset) or is_dataset(dataset)):
            raise TypeError(f"the {role} generator {_name(generator)!r} returned "
                            f"{type(dataset).__name__}, not a dataset (a pandas DataFrame, or "
                            "anything indexable with a length such as a torch Dataset)")
    if _is_dataframe(dataset):
        if label_name is None:
            raise TypeError(f"the {role} is a DataFrame: give label_name=<the column to predict>; "
                            f"columns: {[str(c) for c in dataset.columns]}")
        return PandasDataset(dataset, label_name)
    if not is_dataset(dataset):
        raise TypeError(f"{role} must be a pandas DataFrame, a dataset (indexable with a length, "
                        f"e.g. a torch Dataset) or a function returning one, not "
                        f"{type(dataset).__name__}")
    return dataset


def _is_dataframe(obj) -> bool:
    return type(obj).__module__.startswith("pandas") and type(obj).__name__ == "DataFrame"


def _head(dataset):
    """A few samples for dry runs: `head(n)` where the dataset has it, else the dataset."""
    if dataset is None:
        return None
    head = getattr(dataset, "head", None)
    return head(4) if callable(head) else dataset


def _direction(direction) -> str:
    aliases = {"max": "max", "maximize": "max", "maximise": "max",
               "min": "min", "minimize": "min", "minimise": "min"}
    if not isinstance(direction, str) or direction.lower() not in aliases:
        raise ValueError(f"direction must be 'max' or 'min', not {direction!r}")
    return aliases[direction.lower()]


def _seeds(seeds) -> list:
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        seeds = [seeds]
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=[0, 1, 2]")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise TypeError(f"a seed is an int, not {seed!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds} repeat a value: each seed is one run")
    return [int(s) for s in seeds]


def _trial_record(trial: Trial) -> dict:
    described = trial.describe()
    removed = "; ".join(f"{k.replace('ablated_', '')}: {v}" for k, v in described.items() if v != "None")
    return {"name": trial.name, "kind": trial.kind, "removed": removed or "nothing",
            "excludes": described}


def _write_record(directory: Path, record: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f".{STUDY_FILE}.tmp"
    temporary.write_text(json.dumps(record, indent=1, default=str))
    temporary.replace(directory / STUDY_FILE)


def _result(record, graph, directory) -> StudyResult:
    runs = []
    for name, pairs in record["nodes"].items():
        for seed, node_id in pairs:
            try:
                node = graph.node(node_id)
            except KeyError:
                runs.append([name, seed, node_id, "missing", math.nan, "not in the index", None])
                continue
            stored = node._ab_record
            runs.append([name, seed, node_id, stored.status, stored.metrics.get(record["metric"], math.nan),
                         stored.error, stored.duration])
    return StudyResult(record["trials"], runs, direction=record["direction"], ablator=record["ablator"],
                       metric=record["metric"], elapsed=record.get("elapsed"),
                       counts=record.get("counts"), confidence=record.get("confidence", 0.95),
                       graph=graph, directory=directory)

