"""The channel-ablation and token-masking examples, run as a user runs them: a
script in a subprocess (functions in `__main__`, the default executor), with
ABGRAPH_QUICK=1 (2 seeds). Each must exit 0, say that it found the component
that carries the signal, and leave a study that restores to the same answer.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from abgraph.ablation import AblationStudy

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name, folder):
    env = dict(os.environ, ABGRAPH_QUICK="1", PYTHONUNBUFFERED="1")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), str(folder)], capture_output=True,
                          text=True, timeout=300, env=env, cwd=EXAMPLES.parent)
    assert done.returncode == 0, f"{name} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.parametrize("script, found, worst", [
    ("channel_ablation.py", "OK: the largest drop is the signal channel: green", "feature green"),
    ("token_masking.py", "OK: masking the sentiment words hurts most", "masked: sentiment words"),
])
def test_example_finds_the_component_that_carries_the_signal(tmp_path, script, found, worst):
    folder = tmp_path / "study"
    out = run_example(script, folder)
    assert found in out, out
    assert "------ LOCO Results ------" in out and "FAIL" not in out, out

    table = pd.read_csv(folder / "ablation.csv")
    assert (table.n == 2).all() and (table.failed == 0).all(), table
    removed = table[table.kind == "feature"]
    assert removed.sort_values("diff").iloc[0].trial == worst, table
    assert (folder / "ablation.pdf").stat().st_size > 0

    restored = AblationStudy.restore(folder)
    assert restored.ok and restored.worst["trial"] == worst
