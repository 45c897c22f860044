"""Archived studies: an experiment folder that cannot be written (`chmod -R a-w`, a
read-only mount) is browsed, verified and restored without writing anything."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import cli_command, copy_experiment, to_old_layout

RESTORE = """
import sys
import abgraph
exp = abgraph.Experiment.restore(sys.argv[1])
leaves = exp.graph.leaves
for node in leaves:
    node.restore(verify=True)
full = abgraph.Experiment.restore(sys.argv[1], slim=False)
print("restored", len(leaves), len(full.graph))
"""


@pytest.fixture(params=[3, 2], ids=["schema 3", "schema 2"])
def archive(study_run, tmp_path, request):
    """A read-only copy of the study: every file and folder `chmod a-w`, and for
    root (whom file modes do not stop) a read-only bind mount of it. Its index has
    this version's schema, or that of an older abgraph (read as it is)."""
    folder = copy_experiment(study_run.directory, tmp_path / "study")
    if request.param < 3:
        to_old_layout(folder, schema=request.param)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    mounted = None
    if os.geteuid() == 0:
        mounted = tmp_path / "mounted"
        mounted.mkdir()
        made = subprocess.run(f"mount --bind {folder} {mounted} && mount -o remount,ro,bind {mounted}",
                              shell=True, capture_output=True, text=True)
        if made.returncode:
            subprocess.run(["umount", str(mounted)], capture_output=True)
            pytest.skip(f"root cannot make a read-only mount here: {made.stderr.strip()}")
    yield mounted or folder
    if mounted:
        subprocess.run(["umount", str(mounted)], check=True)
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_a_read_only_folder_is_browsed_verified_and_restored(archive, study_run):
    before = sorted((p.name, p.stat().st_mtime_ns) for p in archive.rglob("*"))
    commands = [cli_command("ls", archive), cli_command("report", archive), cli_command("verify", archive),
                [sys.executable, "-c", RESTORE, str(archive)]]
    started = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [p.communicate(timeout=180) for p in started]
    for command, process, (out, err) in zip(commands, started, outputs):
        assert process.returncode == 0, (command, out, err)
    ls, report, verify, restore = (out for out, _ in outputs)
    assert all(node_id[:12] in ls for node_id in study_run.ids.values())
    assert "clean" in verify and "restored 2 5" in restore
    assert sorted((p.name, p.stat().st_mtime_ns) for p in archive.rglob("*")) == before
    assert not list(archive.glob("*-shm")) and not list(archive.glob("*-wal"))
