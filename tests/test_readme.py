"""Issue 14, item 4: the README runs as written.

Every ```python block of README.md runs as a script of its own, in order, in
one empty folder, with the interpreter of this test run: what a new user does
when copying the blocks one after another. A block that cannot run there
(needs a cluster, S3, a prior folder) belongs in a ```bash or ```text block.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(text: str) -> list:
    return PYTHON_BLOCK.findall(text)


def test_the_readme_has_python_blocks():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 4, "the quick start, browsing, built-in recipes and ablation blocks"


def test_every_python_block_runs_in_order_in_an_empty_folder(tmp_path):
    for number, block in enumerate(python_blocks(README.read_text()), 1):
        script = tmp_path / f"readme_block_{number}.py"
        script.write_text(block)
        done = subprocess.run([sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, (f"README python block {number} failed:\n{block}\n"
                                      f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}")
    assert (tmp_path / "runs" / "quickstart" / "abgraph.sqlite").is_file()
    for written in ("graph.pdf", "accuracy.pdf", "prune_graph.pdf", "loco.pdf"):
        assert (tmp_path / written).read_bytes().startswith(b"%PDF-"), written
