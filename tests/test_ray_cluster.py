"""RayExecutor on a real three-node Ray cluster started with `ray start` (head
plus workers `w0`, `w1`), blobs on a real S3 server, and nodes of the cluster
dying mid-study. One cluster for the module (see conftest.ray_cluster)."""
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import abgraph
from abgraph.store.maintenance import verify
from cluster_study import finish_study, run_study, start_study

pytest.importorskip("ray")
pytestmark = pytest.mark.cluster


def records(directory):
    exp = abgraph.Experiment.restore(directory)
    return exp, {n.id: n._ab_record for n in exp.graph.nodes}


def wait_for_markers(markers: Path, count: int, timeout=120) -> list:
    """pids of the Work tasks that have started, once `count` have."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = sorted(markers.glob("*"))
        if len(found) >= count:
            return [int(path.read_text()) for path in found]
        time.sleep(0.1)
    raise TimeoutError(f"fewer than {count} tasks started")


def test_study_runs_on_both_workers_with_blobs_on_s3(tmp_path, ray_cluster, s3_server):
    """The driver and the cluster know S3 only through storage_options, which
    travel with the tasks; each record names the Ray node that ran it."""
    options = {"endpoint_url": s3_server["AWS_ENDPOINT_URL"], "key": s3_server["AWS_ACCESS_KEY_ID"],
               "secret": s3_server["AWS_SECRET_ACCESS_KEY"]}
    env = ray_cluster.driver_env()
    assert "AWS_ENDPOINT_URL" not in env
    result = run_study(tmp_path, tmp_path / "exp", {"executor": "ray", "seconds": 1, "branches": 4,
                                                     "objects": f"s3://abgraph/{tmp_path.name}",
                                                     "storage_options": options}, env)
    assert len(result["executed"]) == 12 and not result["failed"], result["errors"]
    exp = abgraph.Experiment.restore(tmp_path / "exp", storage_options=options)
    ran_on = {n._ab_record.environment["ray_node"] for n in exp.graph.nodes}
    assert ran_on == {ray_cluster.node_id("w0"), ray_cluster.node_id("w1")}
    assert not (tmp_path / "exp" / "objects").exists()
    report = verify(exp.index, exp.objects)
    assert report.clean and not report.orphans and report.blobs > 0


def test_killed_worker_node(tmp_path, ray_cluster):
    """Without retries, the tasks of a dead node fail as "node lost", nothing
    finished is lost, and a rerun finishes the rest; with retries, Ray runs
    them on the node that is left and the study completes."""
    env = ray_cluster.driver_env()
    study = {"executor": "ray", "seconds": 3, "branches": 2, "retries": 0}
    running = start_study(tmp_path, tmp_path / "exp", study, env)
    victim = ray_cluster.raylet("w1")
    deadline = time.time() + 120
    while not {p.pid for p in victim.children()} & set(wait_for_markers(tmp_path / "markers", 1)):
        assert time.time() < deadline, "no task ran on w1"
        time.sleep(0.1)
    done_before = {i for i, r in records(tmp_path / "exp")[1].items() if r.status == "done"}
    victim.kill()
    result = finish_study(running)
    assert result["failed"], "killing w1 failed no node"
    assert all(result["errors"][node].startswith("node lost") for node in result["failed"])
    exp, stored = records(tmp_path / "exp")
    done = {i for i, r in stored.items() if r.status == "done"}
    assert done_before <= done and verify(exp.index, exp.objects).clean

    ray_cluster.restart("w1")
    rerun = run_study(tmp_path, tmp_path / "exp", study, env)
    assert not rerun["failed"] and set(rerun["cached"]) == done
    assert len(rerun["executed"]) == 6 - len(done)

    # with retries: kill w0 in the middle of a fresh study; w1 takes its tasks
    study = dict(study, retries=2)
    running = start_study(tmp_path, tmp_path / "retried", study, env)
    victim = ray_cluster.raylet("w0")
    markers = len(list((tmp_path / "markers").glob("*")))
    deadline = time.time() + 120
    while not {p.pid for p in victim.children()} & set(wait_for_markers(tmp_path / "markers", markers + 1)):
        assert time.time() < deadline, "no task ran on w0"
        time.sleep(0.1)
    victim.kill()
    result = finish_study(running)
    ray_cluster.restart("w0")
    assert len(result["executed"]) == 6 and not result["failed"], result["errors"]


def test_killed_driver_leaves_no_task_and_rerun_resumes(tmp_path, ray_cluster):
    env = ray_cluster.driver_env()
    study = {"executor": "ray", "seconds": 4, "branches": 2}
    driver = start_study(tmp_path, tmp_path / "exp", study, env)
    pids = wait_for_markers(tmp_path / "markers", 4)   # step 0 done on both branches, step 1 running
    time.sleep(0.5)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    deadline = time.time() + 60
    while [p for p in set(pids) if psutil.pid_exists(p)] and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in set(pids) if psutil.pid_exists(p)], "a task of the dead driver still runs"
    stored = {i for i, r in records(tmp_path / "exp")[1].items() if r.status == "done"}
    assert len(stored) == 4                              # two roots, two first steps
    rerun = run_study(tmp_path, tmp_path / "exp", study, env)
    assert set(rerun["cached"]) == stored and len(rerun["executed"]) == 2 and not rerun["failed"]


def test_fractional_gpus_put_four_tasks_on_one_gpu(tmp_path, ray_cluster):
    """`ray start --num-gpus 1` declares a GPU Ray hands out in quarters; the
    tasks compute on the CPU here (no CUDA), but never more than four at once."""
    ray_cluster.add_worker("gpu", num_cpus=0, num_gpus=1)
    try:
        result = run_study(tmp_path, tmp_path / "exp", {"executor": "ray", "seconds": 2, "branches": 5,
                                                         "num_cpus": 0, "num_gpus": 0.25},
                           ray_cluster.driver_env())
        gpu_node = ray_cluster.node_id("gpu")
    finally:
        ray_cluster.remove("gpu")
    assert len(result["executed"]) == 15 and not result["failed"], result["errors"]
    work = [r for r in records(tmp_path / "exp")[1].values() if r.recipe.endswith("Work")]
    assert {r.environment["ray_node"] for r in work} == {gpu_node}
    assert all(len(r.environment["ray_gpus"]) == 1 for r in work)
    events = sorted([(r.started, 1) for r in work] + [(r.finished, -1) for r in work])
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    assert peak == 4
