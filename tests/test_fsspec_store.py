"""Blobs behind an fsspec URL: the same experiment, stored elsewhere than its folder."""
import subprocess
import sys

import pytest
import torch

import abgraph
from abgraph.store import FsspecObjectStore, open_store
from abgraph.store.maintenance import verify

pytest.importorskip("fsspec")


class Weights(abgraph.ExperimentState):
    PROPERTIES = ["width"]
    NONHASHED_ATTRIBUTES = ["weights"]

    def initialize_state(self, width):
        self.weights = torch.arange(width, dtype=torch.float32)


class Double(abgraph.Recipe):
    PROPERTIES = ["times"]

    def run(self, state):
        state.weights = state.weights * 2 ** self.times
        return state


def test_experiment_with_blobs_behind_a_url(tmp_path):
    url = f"file://{tmp_path / 'bucket' / 'objects'}"
    exp = abgraph.Experiment(tmp_path / "exp", state_class=Weights, objects=url)
    assert isinstance(exp.objects, FsspecObjectStore)
    root = exp.spawn_new_tree(width=4)
    leaf = Double(times=3)(Double(times=1)(root))
    report = exp.run(executor=abgraph.ProcessExecutor(workers=2))
    assert report.ok and len(report.executed) == 3
    assert not (tmp_path / "exp" / "objects").exists()          # nothing in the folder itself
    assert list((tmp_path / "bucket" / "objects").rglob("*"))   # ... all behind the URL

    again = abgraph.Experiment.restore(tmp_path / "exp")        # the location is remembered
    assert isinstance(again.objects, FsspecObjectStore)
    assert again.graph.node(leaf.id).restore().weights.tolist() == [0.0, 16.0, 32.0, 48.0]
    assert verify(again.index, again.objects).clean
    with pytest.raises(ValueError, match="keeps its blobs in"):
        abgraph.Experiment(tmp_path / "exp", state_class=Weights, objects=tmp_path / "elsewhere")
    result = subprocess.run([sys.executable, "-m", "abgraph.cli", "verify", str(tmp_path / "exp")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "clean" in result.stdout


def test_open_store_picks_the_medium(tmp_path):
    assert type(open_store(tmp_path / "a")).__name__ == "ObjectStore"
    store = open_store(f"file://{tmp_path / 'b'}")
    digest = store.put(b"hello")
    assert store.get(digest) == b"hello" and list(store.digests()) == [digest]
    assert store.delete(digest) == 5 and not store.exists(digest)
