"""Scale-out on one machine: a CPU-only head and a GPU worker node joined over loopback.

Mirrors cluster.yaml / the KubeRay manifest in miniature: the head has CPUs and no GPU, a
second Ray node brings its own (logical) GPUs, Serve places the GPU-share replicas on it,
HTTP enters through the head's proxy, and Serve's autoscaler adds replicas under load and
removes them when the load stops.

The pytest process may already hold the session's Ray cluster (tests/conftest.py), so this
cluster lives entirely in subprocesses: its own ports, its own --temp-dir, its own token, an
explicit RAY_ADDRESS for the driver. Teardown stops exactly the processes it started (each
`ray start --block` leads its own process group), never `ray stop`, which would take the
session cluster down with it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
DRIVER = ROOT / "tests" / "scripts" / "multinode_app.py"
WORKER_GPUS = 2  # logical: the driver's replicas take 0.5 each, at most 3 of them
START_TIMEOUT_S = 60
DRIVER_TIMEOUT_S = 150


@dataclass
class Cluster:
    gcs: str
    dashboard: str
    temp_dir: Path
    env: dict[str, str]
    token: str


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout_s: float) -> None:
    """Until `ray start --block` has printed ``text`` (it then blocks); fail with its log
    when it exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{path.name}: no {text!r} within {timeout_s}s "
                         f"(exit {proc.poll()}):\n{path.read_text(errors='replace')[-3000:]}")


def _leftovers(groups: set[int], temp_dir: Path) -> dict[int, str]:
    """Live processes in our `ray start` process groups, or carrying our temp dir in their
    command line (a worker that left the group): pid -> command."""
    found = {}
    for pid_dir in Path("/proc").iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            stat = (pid_dir / "stat").read_text()
            cmdline = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        # stat: "pid (comm) state ppid pgrp ..."; comm may hold spaces, so split after ')'.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if state != "Z" and (int(pgrp) in groups or str(temp_dir) in cmdline):
            found[int(pid_dir.name)] = cmdline[:80]
    return found


def _stop(procs: list[subprocess.Popen], temp_dir: Path) -> dict[int, str]:
    """SIGTERM each `ray start --block` (it stops its own Ray processes), then SIGKILL by pid
    whatever of ours is still alive; returns those, for the log."""
    for proc in reversed(procs):  # worker first, so it does not wait for a dead GCS
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    # start_new_session: each `ray start` leads a group of its own, holding nobody else's.
    forced = _leftovers({p.pid for p in procs}, temp_dir)
    for pid in forced:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for proc in procs:
        proc.wait(timeout=10)
    return forced


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Short path: Ray's unix sockets live under it (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="gs-mn-", dir="/tmp"))
    token = secrets.token_hex(32)
    # Ray rewrites a bootstrap address of 127.0.0.1 to the host's outward IP
    # (resolve_ip_for_localhost); any other 127/8 address is loopback all the same and is
    # left alone, so the driver and the second node reach the GCS over `lo` only.
    gcs = f"127.0.0.2:{free_port()}"
    dashboard = f"127.0.0.1:{free_port()}"
    # Nothing from the pytest process's own Ray session leaks in: no RAY_* variables but
    # the ones set here, token auth on with this cluster's own token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_ADDRESS": gcs,
            "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)}
    common = ["--block", "--node-ip-address=127.0.0.1", f"--temp-dir={temp_dir}",
              "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> None:
        log_path = temp_dir / f"{name}.log"
        with log_path.open("w") as log:  # the child keeps its own copy of the descriptor
            procs.append(subprocess.Popen(
                [RAY, "start", *args, *common], env=env, stdout=log, stderr=subprocess.STDOUT,
                cwd=temp_dir, start_new_session=True))
        _wait_for(log_path, "Ray runtime started", procs[-1], START_TIMEOUT_S)

    try:
        start("head", "--head", f"--port={gcs.split(':')[1]}",
              # The head: CPUs for the proxy, controller and ingress; no GPU at all.
              "--num-cpus=2", "--num-gpus=0", '--resources={"head_node": 1}',
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard.split(':')[1]}",
              f"--ray-client-server-port={free_port()}",
              f"--dashboard-agent-listen-port={free_port()}")
        start("worker", f"--address={gcs}",
              # The GPU worker: its own logical GPUs, one CPU for the replica processes.
              "--num-cpus=1", f"--num-gpus={WORKER_GPUS}",
              f"--dashboard-agent-listen-port={free_port()}")
        yield Cluster(gcs=gcs, dashboard=dashboard, temp_dir=temp_dir, env=env, token=token)
    finally:
        forced = _stop(procs, temp_dir)
        if forced:
            print(f"multinode teardown: SIGKILLed {forced}")
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_token_auth_guards_the_test_cluster(cluster):
    # Dashboard / jobs API: nothing without the cluster's token.
    url = f"http://{cluster.dashboard}/api/cluster_status"
    assert httpx.get(url, timeout=10).status_code == 401
    wrong = secrets.token_hex(32)
    assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"},
                     timeout=10).status_code == 403
    assert httpx.get(url, headers={"Authorization": f"Bearer {cluster.token}"},
                     timeout=10).status_code == 200
    # GCS: a driver holding another token is refused (the good one is the next test's).
    # Two connection attempts instead of Ray's default twenty: the answer will not change.
    env = {**cluster.env, "RAY_AUTH_TOKEN": wrong, "RAY_gcs_server_port_wait_time_s": "2"}
    bad = subprocess.run([sys.executable, "-c", "import ray; ray.init()"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0
    assert "InvalidAuthToken" in bad.stderr, bad.stderr[-2000:]


def test_gpu_replicas_on_worker_http_through_head_autoscaling(cluster):
    out = cluster.temp_dir / "result.json"
    port = free_port()
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, str(DRIVER), f"--port={port}", f"--dashboard={cluster.dashboard}",
         f"--out={out}"],
        env=cluster.env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S, cwd=ROOT)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    r = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in r.items() if k not in ("nodes", "actors_at_peak")},
                     indent=1), f"driver wall {time.monotonic() - started:.1f}s")

    assert r["gcs_address"] == cluster.gcs  # loopback, not rewritten to the host's IP
    # Two live nodes: a head without GPUs and a worker with exactly its logical GPUs.
    nodes = [n for n in r["nodes"] if n["alive"]]
    assert len(nodes) == 2
    head = next(n for n in nodes if "head_node" in n["resources"])
    worker = next(n for n in nodes if n is not head)
    assert head["resources"].get("GPU", 0) == 0
    assert worker["resources"]["GPU"] == WORKER_GPUS

    # Placement: the GPU-share replicas run on the worker, the ingress on the head, both by
    # the replicas' own report and by Ray's actor table.
    assert r["first"]["replica"]["node_id"] == worker["node_id"]
    assert r["first"]["ingress"]["node_id"] == head["node_id"]
    assert r["first"]["replica"]["gpu_ids"]  # Ray handed the replica a (logical) GPU
    # Separate processes on one host: the node id, not the hostname, tells the nodes apart.
    assert r["first"]["replica"]["pid"] != r["first"]["ingress"]["pid"]
    assert r["first"]["replica"]["host"] == r["first"]["ingress"]["host"] == socket.gethostname()
    by_class: dict[str, set[str]] = {}
    for actor in r["actors_at_peak"]:
        by_class.setdefault(actor["class_name"].rsplit(":", 1)[1], set()).add(actor["node_id"])
    assert by_class == {"GpuModel": {worker["node_id"]}, "Ingress": {head["node_id"]}}
    assert sum(a["class_name"].endswith(":GpuModel") for a in r["actors_at_peak"]) == 3

    # HTTP through the head's proxy reached every replica, all on the worker; no errors.
    assert r["load_errors"] == []
    assert r["requests_under_load"] >= 20
    assert r["replica_nodes_seen"] == [worker["node_id"]]
    assert r["ingress_nodes_seen"] == [head["node_id"]]
    assert len(r["replicas_seen"]) == 3
    assert set(r["gpu_ids_seen"]) <= {str(i) for i in range(WORKER_GPUS)}

    # Autoscaling: 1 → 3 under load within the bound, back to 1 after it stops.
    assert r["peak_replicas"] == 3 and r["scale_up_s"] is not None and r["scale_up_s"] < 45
    assert r["scale_down_s"] is not None and r["scale_down_s"] < 45
    assert r["replicas_after"] == 1
