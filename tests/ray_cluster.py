"""A real multi-node Ray cluster on this machine, the way a user starts one:
`ray start --head` and worker nodes joining it with `ray start --address`,
each its own raylet with its own resources.

Everything is private to one cluster, so other Ray users of the machine are
never touched: ports picked free at run time, its own `--temp-dir`, its own
auth token (Ray >= 2.5x turns token auth on whenever `~/.ray/auth_token`
exists, and a node started without the same token is refused with
`InvalidAuthToken`; we set `RAY_AUTH_MODE=token` and a fresh `RAY_AUTH_TOKEN`
for every process of the cluster, the driver included). `ray stop` would stop
every Ray on the machine, so `stop()` ends only the processes it started.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
READY = "This command will now block"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _node_ports() -> list:
    ports = []
    for flag in ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]:
        ports += [flag, str(free_port())]
    return ports


class LocalCluster:
    """A head (no CPUs, so tasks land on workers) and named worker nodes."""

    def __init__(self, head_cpus: int = 0):
        self.temp_dir = tempfile.mkdtemp(prefix="abray-", dir="/tmp")  # short: raylet sockets live there
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
                        # notice a dead node within seconds, not Ray's default half-minute
                        RAY_health_check_period_ms="1000", RAY_health_check_timeout_ms="1000",
                        RAY_health_check_failure_threshold="3")
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: dict[str, subprocess.Popen] = {}
        self._start("head", ["--head", "--port", str(self.port), "--ray-client-server-port", str(free_port()),
                             "--include-dashboard", "false", "--dashboard-port", str(free_port()),
                             "--num-cpus", str(head_cpus), "--temp-dir", self.temp_dir,
                             "--disable-usage-stats"])

    def add_worker(self, name: str, num_cpus: int = 1, num_gpus: int = 0, resources: dict | None = None):
        """A node joining the head; `resources` (e.g. {name: 1}) lets a task be pinned to it."""
        import json
        self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
                           "--resources", json.dumps(resources or {name: 1})])

    def restart(self, name, **resources) -> None:
        """Bring a dead worker node back (a fresh raylet, same name and resource)."""
        self.remove(name)
        self.add_worker(name, **resources)

    def remove(self, name) -> None:
        """End a worker node and everything it started."""
        process = self.nodes.pop(name)
        try:
            tree = [psutil.Process(process.pid)] + psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        process.wait(timeout=10)

    def _start(self, name, arguments, timeout=90):
        """Start one node with `ray start --block` (it stays our child, so we can
        end it) and wait until it says it is up; nodes start one at a time, as
        Ray's own port choices race when two start at once."""
        log = Path(self.temp_dir) / f"{name}.log"
        process = subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1",
                                    "--min-worker-port", "0", "--max-worker-port", "0",
                                    *_node_ports(), *arguments],
                                   env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.nodes[name] = process
        deadline = time.time() + timeout
        while READY not in log.read_text():
            if process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"ray node {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def raylet(self, name) -> psutil.Process:
        """The raylet of a node: killing it is a node dying."""
        for child in psutil.Process(self.nodes[name].pid).children(recursive=True):
            if child.name() == "raylet":
                return child
        raise LookupError(f"node {name} has no raylet")

    def node_id(self, name) -> str:
        """The Ray node id of a node, as `ray.get_runtime_context().get_node_id()` gives it."""
        flag = "--node_id="
        return next(arg[len(flag):] for arg in self.raylet(name).cmdline() if arg.startswith(flag))

    def driver_env(self) -> dict:
        """The environment a driver process needs to join (address and token)."""
        return dict(self.env, RAY_ADDRESS=self.address)

    def processes(self) -> list:
        """Every process of this cluster: the nodes, their children, and any
        worker whose command line names our private temp dir."""
        found = {}
        for process in self.nodes.values():
            try:
                parent = psutil.Process(process.pid)
                found[parent.pid] = parent
                found.update((child.pid, child) for child in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        for process in psutil.process_iter(["cmdline"]):
            if self.temp_dir in " ".join(process.info["cmdline"] or []):
                found[process.pid] = process
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """End every process of the cluster (TERM, then KILL what lingers)."""
        processes = self.processes()
        for process in processes:
            try:
                process.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=5)
        for process in alive + self.processes():
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        for process in self.nodes.values():
            process.wait(timeout=5)
        self.nodes.clear()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
