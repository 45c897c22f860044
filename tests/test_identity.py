"""Issue 3, item 3: a node's id is a Merkle hash of parents + recipe type +
PROPERTIES + code version, known before running, the same in every process."""
from __future__ import annotations

import dataclasses
import enum
import functools
import importlib.util
import sqlite3
import sys
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch

import abgraph
from abgraph import identity
from conftest import BASE_NODES


def key(value):
    return identity.digest(identity.canonical(value))


# -- across processes ------------------------------------------------------------

def test_ids_are_the_same_in_every_process_and_hash_seed(study_run, study_rerun):
    # the same script run in two processes (hash seeds 0 and 5, other folders); the
    # pruned nodes have a set-valued property, whose iteration order follows the seed
    assert study_rerun.ids == study_run.ids
    assert sorted(study_run.ids) == sorted(BASE_NODES)
    assert len(set(study_run.ids.values())) == len(study_run.ids)  # all distinct
    for node_id in study_run.ids.values():
        assert len(node_id) == identity.ID_LENGTH and int(node_id, 16) >= 0
    # what the subprocess printed before running is what it stored
    stored = sqlite3.connect(study_run.directory / "abgraph.sqlite").execute("SELECT id FROM nodes")
    assert sorted(row[0] for row in stored) == sorted(study_run.ids.values())


def test_ids_are_known_before_running_and_building_stores_nothing(study, tmp_path):
    exp, nodes = study.build(tmp_path / "exp")
    assert all(len(p.id) == identity.ID_LENGTH for p in nodes.values())
    count = sqlite3.connect(tmp_path / "exp" / "abgraph.sqlite").execute(
        "SELECT COUNT(*) FROM nodes").fetchone()[0]
    assert count == 0
    assert not any(p for p in (tmp_path / "exp" / "objects").rglob("*/*") if ".abgraph" not in str(p))  # no blob


def test_ids_do_not_depend_on_the_folder(study, tmp_path):
    _, first = study.build(tmp_path / "one")
    _, second = study.build(tmp_path / "two")
    assert {k: p.id for k, p in first.items()} == {k: p.id for k, p in second.items()}


# -- what is and is not identity -------------------------------------------------

def test_tags_are_not_part_of_the_id(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    plain = study.Train(epochs=3, lr=0.1)(root)
    with exp.tag("a", "b"):
        with exp.tag("c"):
            tagged = study.Train(epochs=3, lr=0.1)(root)
    assert tagged.id == plain.id
    assert plain == tagged


def test_recipe_properties_change_the_id(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    ids = {study.Train(epochs=3, lr=0.1)(root).id, study.Train(epochs=4, lr=0.1)(root).id,
           study.Train(epochs=3, lr=0.2)(root).id, study.Prune(amount=0.1)(root).id,
           study.Prune(amount=0.2)(root).id}
    assert len(ids) == 5
    assert study.Train(epochs=3, lr=0.1)(root).id == study.Train(lr=0.1, epochs=3)(root).id


def test_parents_and_root_properties_change_the_id(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    small = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    large = exp.spawn_new_tree(dataset_name="toy", hidden=16)
    other = exp.spawn_new_tree(dataset_name="other", hidden=8)
    assert len({small.id, large.id, other.id}) == 3
    on_small, on_large = study.Prune(amount=0.5)(small), study.Prune(amount=0.5)(large)
    assert on_small.id != on_large.id
    # the Merkle chain: a grandchild changes with its grandparent
    train_small = study.Train(epochs=1, lr=0.1)(small)
    train_large = study.Train(epochs=1, lr=0.1)(large)
    assert study.Prune(amount=0.5)(train_small).id != study.Prune(amount=0.5)(train_large).id
    # same recipe, other position in the chain
    assert study.Prune(amount=0.5)(train_small).id != on_small.id


def _versioned_recipe(version, factor):
    class Scale(abgraph.Recipe):  # the same qualified name at every call
        VERSION = version
        PROPERTIES = ["k"]

        def run(self, state):
            state.metrics["k"] = self.k * factor
            return state
    return Scale


def test_version_decides_when_the_cache_is_invalidated(study, tmp_path):
    exp = abgraph.Experiment(tmp_path, state_class=study.State)
    root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
    v1, v1_again, v2 = (_versioned_recipe("1", 1), _versioned_recipe("1", 2),
                        _versioned_recipe("2", 1))
    assert v1(k=1).type_name == v2(k=1).type_name  # only VERSION differs
    assert v1(k=1)(root).id == v1_again(k=1)(root).id
    assert v1(k=1)(root).id != v2(k=1)(root).id


# -- code version: edit code vs edit a comment ------------------------------------

STEP_SOURCE = '''
import abgraph


class Step(abgraph.Recipe):
    PROPERTIES = ["k"]

    def run(self, state):
        state.metrics["k"] = self.k
        return state
'''

STEP_WITH_COMMENTS = '''
import abgraph


class Step(abgraph.Recipe):   # a step
    PROPERTIES = ["k"]
    # the property above is the step size

    def run(self, state):
        # record the step size
        state.metrics["k"] = self.k   # as a metric


        return state
'''

STEP_EDITED = STEP_SOURCE.replace('state.metrics["k"] = self.k', 'state.metrics["k"] = self.k * 2')


def _load(directory: Path, source: str, name="user_steps"):
    """Import `source` as module `name` from its own file (as a user's edited file)."""
    directory.mkdir(parents=True)
    path = directory / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def _step_id(study, tmp_path, module):
    sys.modules[module.__name__] = module  # inspect finds the source through the module
    try:
        exp = abgraph.Experiment(tmp_path / "exp", state_class=study.State)
        root = exp.spawn_new_tree(dataset_name="toy", hidden=8)
        return module.Step(k=1)(root).id, identity.code_version(module.Step, abgraph.Recipe)
    finally:
        del sys.modules[module.__name__]


def test_editing_a_comment_keeps_the_id_editing_code_changes_it(study, tmp_path):
    original = _load(tmp_path / "v1", STEP_SOURCE)
    commented = _load(tmp_path / "v2", STEP_WITH_COMMENTS)
    edited = _load(tmp_path / "v3", STEP_EDITED)
    original_id, original_version = _step_id(study, tmp_path, original)
    commented_id, commented_version = _step_id(study, tmp_path, commented)
    edited_id, edited_version = _step_id(study, tmp_path, edited)
    assert commented_version == original_version
    assert commented_id == original_id
    assert edited_version != original_version
    assert edited_id != original_id


def test_an_explicit_version_wins_over_the_source(tmp_path):
    original = _load(tmp_path / "v1", STEP_SOURCE.replace('PROPERTIES = ["k"]', 'VERSION = 3\n    PROPERTIES = ["k"]'))
    edited = _load(tmp_path / "v2", STEP_EDITED.replace('PROPERTIES = ["k"]', 'VERSION = 3\n    PROPERTIES = ["k"]'))
    assert identity.code_version(original.Step, abgraph.Recipe) == "v:3"
    assert identity.code_version(edited.Step, abgraph.Recipe) == "v:3"


def _compile_without_source(source, name="Step"):
    """A class whose source inspect cannot find (as in `python -c` or `python - < file`)."""
    namespace = {"__name__": "nosource"}
    exec(compile(source, "<string>", "exec"), namespace)
    return namespace[name]


def test_code_version_without_source_sees_names():
    first = _compile_without_source(
        "import abgraph\nclass Step(abgraph.Recipe):\n    def run(self, state):\n"
        "        state.model.fc1.reset_parameters()\n        return state\n")
    second = _compile_without_source(
        "import abgraph\nclass Step(abgraph.Recipe):\n    def run(self, state):\n"
        "        state.model.fc2.reset_parameters()\n        return state\n")
    assert identity.code_version(first, abgraph.Recipe) != identity.code_version(second, abgraph.Recipe)


def test_code_version_without_source_is_deterministic():
    source = ("import abgraph\nclass Step(abgraph.Recipe):\n    def run(self, state):\n"
              "        state.metrics['n'] = sum([i for i in range(3)])\n        return state\n")
    first, second = _compile_without_source(source), _compile_without_source(source)
    assert identity.code_version(first, abgraph.Recipe) == identity.code_version(second, abgraph.Recipe)


# -- canonical encoding ------------------------------------------------------------

class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Level(enum.IntEnum):
    LOW = 1


@dataclasses.dataclass
class Options:
    lr: float
    betas: tuple = (0.9, 0.99)


def scale(x, factor=1):
    return x * factor


def shift(x, factor=1):
    return x + factor


def test_dicts_encode_independently_of_insertion_order():
    assert key({"a": 1, "b": [1, 2], "c": {"x": 1, "y": 2}}) == key({"c": {"y": 2, "x": 1}, "b": [1, 2], "a": 1})
    assert key({1: "x", 2: "y"}) == key({2: "y", 1: "x"})
    assert key({1: "x"}) != key({"1": "x"})
    assert key({"a": 1}) != key({"a": 2})


def test_floats_encode_exactly():
    assert key(0.1) == key(float("0.1"))
    assert key(0.1 + 0.2) != key(0.3)
    assert key(1.0) != key(1)
    assert key(True) != key(1)
    assert key(0.0) != key(-0.0)
    specials = [key(float("nan")), key(float("inf")), key(float("-inf"))]
    assert len(set(specials)) == 3
    assert key(float("nan")) == key(float("nan"))


def test_tuples_lists_and_sets_are_distinct():
    assert key((1, 2)) != key([1, 2])
    assert key([(1, 2)]) != key([[1, 2]])
    assert key({1, 2}) != key([1, 2])
    assert key({"b", "a", "c"}) == key({"c", "a", "b"}) == key(frozenset("abc"))
    assert key([1, 2]) != key([2, 1])


def test_enums_paths_partials_functions_dataclasses():
    assert key(Color.RED) == key(Color.RED)
    assert key(Color.RED) != key(Color.BLUE)
    assert key(Color.RED) != key(1)
    assert key(Level.LOW) != key(1)
    assert key(Path("data/x.csv")) == key(PurePosixPath("data/x.csv"))
    assert key(Path("data/x.csv")) != key("data/x.csv")
    assert key(functools.partial(scale, 2, factor=3)) == key(functools.partial(scale, 2, factor=3))
    assert key(functools.partial(scale, 2, factor=3)) != key(functools.partial(scale, 2, factor=4))
    assert key(functools.partial(scale, 2, factor=3)) != key(functools.partial(shift, 2, factor=3))
    assert key(scale) == key(scale) != key(shift)
    assert key(Options(0.1)) == key(Options(lr=0.1, betas=(0.9, 0.99)))
    assert key(Options(0.1)) != key(Options(0.2))
    assert key(Options(0.1)) != key({"lr": 0.1, "betas": (0.9, 0.99)})


def test_tensors_and_arrays_encode_by_content():
    a = torch.arange(6, dtype=torch.float32)
    assert key(a) == key(torch.arange(6, dtype=torch.float32))
    assert key(a) == key(a.clone().reshape(2, 3).t().contiguous().t().reshape(-1))
    assert key(a.reshape(2, 3).t()) == key(a.reshape(2, 3).t().contiguous())  # strides do not matter
    assert key(a) != key(a + 1)
    assert key(a) != key(a.double())
    assert key(a) != key(a.reshape(2, 3))
    assert key(np.arange(6.0)) == key(np.arange(6.0))
    assert key(np.arange(6.0)) != key(np.arange(6.0) + 1)
    assert key(torch.zeros(0)) == key(torch.zeros(0))


def test_canonical_encoding_is_plain_json():
    import json
    encoded = identity.canonical({"t": (1, 2.5), "s": {"x"}, "p": Path("a"), "e": Color.RED,
                                  "f": functools.partial(scale, factor=2), "d": Options(0.1),
                                  "w": torch.ones(2), "n": None})
    assert json.loads(json.dumps(encoded)) == encoded


def test_unsupported_values_are_refused_with_the_property_named():
    with pytest.raises(identity.UnsupportedValue) as caught:
        identity.canonical(object(), "Train.lr")
    assert "Train.lr" in str(caught.value) and "object" in str(caught.value)
    with pytest.raises(TypeError) as caught:  # UnsupportedValue is a TypeError
        identity.canonical({"opts": [1, object()]}, "Train.config")
    assert "Train.config.opts[1]" in str(caught.value)
    with pytest.raises(identity.UnsupportedValue, match="lambda"):
        identity.canonical(lambda x: x, "Train.fn")
    with pytest.raises(identity.UnsupportedValue, match=r"Options|\.lr"):
        identity.canonical(Options(lr=object()), "Train.options")
