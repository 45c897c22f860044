"""The GPU path of the executors, for a machine with CUDA (run it where one is lent).

    python benchmarks/gpu_check.py

Trains and prunes small MLPs on scikit-learn-free generated data with the
default executor (one worker per visible GPU) and checks: every node ran on a
`cuda:N` device, payloads are stored on the CPU and restore without a GPU
mapping, serial-on-GPU and process-on-GPU give the same node ids and payload
digests, and prints the speed of the GPU run against the CPU serial run.
"""
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import abgraph as dg
from abgraph.recipes import Evaluate, Prune, Train


def blobs_data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 32, generator=generator)
    y = (x[:, :4].sum(1) > 0).long() + (x[:, 4:8].sum(1) > 0).long()
    cut = 6144
    return (torch.utils.data.TensorDataset(x[:cut], y[:cut]),
            torch.utils.data.TensorDataset(x[cut:], y[cut:]))


def wide_mlp():
    return nn.Sequential(nn.Linear(32, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 3))


def build(folder):
    exp = dg.Experiment(folder, state_class=dg.TorchState)
    for seed in [0, 1]:
        root = exp.spawn_new_tree(model_fn=wide_mlp, data_fn=blobs_data, seed=seed)
        trained = Train(epochs=3, lr=0.05, batch_size=256, seed=seed)(root)
        for amount in [0.5, 0.9]:
            with exp.tag(f"seed:{seed}", f"amount:{amount}"):
                Evaluate()(Train(epochs=1, lr=0.01, batch_size=256, seed=seed)(Prune("l1_unstructured", amount)(trained)))
    return exp


def run(folder, executor):
    exp = build(folder)
    start = time.perf_counter()
    report = exp.run(executor=executor, progress=False)
    assert report.ok, report
    return time.perf_counter() - start, dg.Experiment.restore(folder).graph


def main():
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 0
    work = Path(tempfile.mkdtemp())
    t_cpu, _ = run(work / "cpu", dg.SerialExecutor(device="cpu"))
    t_gpu_serial, serial = run(work / "gpu-serial", dg.SerialExecutor(device="cuda:0"))
    t_gpu_process, process = run(work / "gpu-process", None)  # the default executor
    devices = {n._ab_record.environment["device"] for n in process.nodes}
    print("devices used by the default executor:", sorted(devices))
    assert all(d.startswith("cuda") for d in devices), devices
    ids_equal = {n.id for n in serial.nodes} == {n.id for n in process.nodes}
    digests_equal = all(serial.node(n.id)._ab_record.payload == n._ab_record.payload for n in process.nodes)
    print(f"same ids serial/process on GPU: {ids_equal}; same payload digests: {digests_equal}")
    leaf = process.nodes.where(recipe="Evaluate")[0]
    model = leaf.parent.restore().model
    assert all(p.device.type == "cpu" for p in model.parameters()), "payload not stored on the CPU"
    print(f"restored on the CPU: {type(model).__name__}, accuracy {leaf.metrics['accuracy']:.3f}")
    print(f"CPU serial {t_cpu:.1f}s | GPU serial {t_gpu_serial:.1f}s ({t_cpu / t_gpu_serial:.1f}x) | "
          f"GPU default executor {t_gpu_process:.1f}s ({t_cpu / t_gpu_process:.1f}x, worker start-up included)")
    return 0 if ids_equal else 1


if __name__ == "__main__":
    sys.exit(main())
