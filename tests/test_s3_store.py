"""Blobs on an S3 server (moto's standalone server on localhost, checking
credentials): workers write them, restore, `abgraph verify` and `abgraph gc`
read and clean them, and a bad location fails when the experiment is opened."""
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

import abgraph
from abgraph.store import BlobLocationError, FsspecObjectStore
from abgraph.store.maintenance import verify
from cluster_study import run_study
from conftest import run_cli

pytest.importorskip("s3fs")


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process and its children use the S3 server through the environment."""
    for name, value in s3_server.items():
        monkeypatch.setenv(name, value)
    return dict(os.environ)


def test_study_with_blobs_on_s3(tmp_path, s3_env):
    """The study knows S3 through storage_options only (its process and workers
    have no AWS variables); the commands afterwards through the environment."""
    url = f"s3://abgraph/{tmp_path.name}/study"
    options = {"endpoint_url": s3_env["AWS_ENDPOINT_URL"], "key": s3_env["AWS_ACCESS_KEY_ID"],
               "secret": s3_env["AWS_SECRET_ACCESS_KEY"]}
    bare = {name: value for name, value in s3_env.items() if not name.startswith("AWS_")}
    result = run_study(tmp_path, tmp_path / "exp", {"executor": "process", "objects": url, "seconds": 0,
                                                     "branches": 2, "storage_options": options}, bare)
    assert len(result["executed"]) == 6 and not result["failed"]
    assert not (tmp_path / "exp" / "objects").exists()   # the driver wrote only the index

    exp = abgraph.Experiment.restore(tmp_path / "exp")
    assert isinstance(exp.objects, FsspecObjectStore) and exp.objects.atomic_put
    blobs = set(exp.objects.digests())
    assert blobs and all(exp.objects.get(d, verify=True) for d in blobs)
    leaves = [n for n in exp.graph.nodes if not n.children]
    assert sorted(n.restore().weights[0].item() for n in leaves) == [1.0, 2.0]

    orphan = exp.objects.put(b"no record uses this")
    check = run_cli("verify", tmp_path / "exp")
    assert check.returncode == 0 and f"orphan blob {orphan}" in check.stdout, check.stdout + check.stderr
    collect = run_cli("gc", tmp_path / "exp")
    assert collect.returncode == 0, collect.stderr
    fresh = abgraph.Experiment.restore(tmp_path / "exp")
    assert set(fresh.objects.digests()) == blobs            # the orphan, and only it, is gone
    report = verify(fresh.index, fresh.objects)
    assert report.clean and not report.orphans and report.blobs == len(blobs)


@pytest.mark.parametrize("problem, environment, message", [
    ("credentials", {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}, "check the credentials"),
    ("bucket", {}, "bucket 'no-such-bucket' does not exist"),
])
def test_bad_location_fails_when_opened(tmp_path, s3_env, monkeypatch, problem, environment, message):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    bucket = "no-such-bucket" if problem == "bucket" else "abgraph"
    with pytest.raises(BlobLocationError, match=message):
        abgraph.Experiment(tmp_path / "exp", objects=f"s3://{bucket}/study",
                           storage_options={"skip_instance_cache": True})
    # nothing was recorded: the right location still opens the folder
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_env["AWS_SECRET_ACCESS_KEY"])
    abgraph.Experiment(tmp_path / "exp", objects="s3://abgraph/elsewhere")


def test_wrong_endpoint_fails_when_opened(tmp_path, s3_env):
    from ray_cluster import free_port
    options = {"endpoint_url": f"http://127.0.0.1:{free_port()}", "skip_instance_cache": True,
               "config_kwargs": {"retries": {"max_attempts": 1}}, "retries": 1}
    with pytest.raises(BlobLocationError, match="check the endpoint"):
        abgraph.Experiment(tmp_path / "exp", objects="s3://abgraph/study", storage_options=options)


UPLOAD = r'''
import sys
from abgraph.store import open_store
store = open_store(sys.argv[1])
store.put(bytes(range(256)) * (32 * 1024))   # 8 MiB, one PUT
print("uploaded", flush=True)
'''


class StallingProxy:
    """A TCP proxy to the S3 server that forwards the first `budget` bytes the
    client sends, then holds the rest: the client is stuck mid-upload, for sure."""

    def __init__(self, endpoint: str, budget: int):
        host, port = endpoint.rsplit("//", 1)[1].split(":")
        self.upstream, self.budget, self.sent = (host, int(port)), budget, 0
        self.stalled, self.sockets = threading.Event(), []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source, target, limited):
        try:
            while data := source.recv(65536):
                if limited:
                    data = data[:max(0, self.budget - self.sent)]
                    self.sent += len(data)
                    if self.sent >= self.budget:
                        self.stalled.set()
                if data:
                    target.sendall(data)
        except OSError:
            pass

    def close(self):
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def test_interrupted_upload_leaves_no_blob(tmp_path, s3_env):
    """S3 publishes an object only when its PUT completes: a writer killed when
    half its blob has reached the server leaves nothing a reader could see."""
    url = f"s3://abgraph/{tmp_path.name}/killed"
    proxy = StallingProxy(s3_env["AWS_ENDPOINT_URL"], budget=4 * 1024 * 1024)
    writer = subprocess.Popen([sys.executable, "-c", UPLOAD, url], stdout=subprocess.PIPE, text=True,
                              env=dict(s3_env, AWS_ENDPOINT_URL=proxy.endpoint))
    try:
        assert proxy.stalled.wait(120), "the upload never reached the server"
        writer.send_signal(signal.SIGKILL)
        assert writer.wait() == -signal.SIGKILL
    finally:
        proxy.close()
    assert writer.stdout.read() == ""                # it never finished
    store = abgraph.store.open_store(url, {"skip_instance_cache": True})
    assert list(store.digests()) == []
    assert store.fs.find(store.root) == []         # no partial key under any name
