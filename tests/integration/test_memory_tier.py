"""The memory tier with real processes: per pod, a snapshot server (the process the agent owns, which
outlives the workers) and a gloo worker; state in `Flat` ranges known as a function of the step, so
every restore is checked bit-exact. A "node kill" SIGKILLs both processes of a pod; a "worker kill"
only the worker. Surviving workers of a generation are stopped as their agents would stop them.

- worker kill -9: the new generation restores from each pod's own memory, nothing over the network;
- node kill, 4 -> 3: the lost pod's shards are rebuilt from parity and read from peers, bit-exact;
- two pods of one group lost with parity 1: memory cannot serve, the restore falls back to disk;
- a kill during parity encoding: that torn snapshot is never restored, the previous one is;
- grow 3 -> 4: the new pod reads everything from its peers' memory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from elastra.api.memory import plan_groups

pytestmark = pytest.mark.timeout(180)

WORKER = Path(__file__).with_name("memory_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Pod:
    name: str
    dir: Path
    port: int
    server: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes] | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass
class Cluster:
    tmp: Path
    pods: dict[str, Pod] = field(default_factory=dict)
    generation: int = 0

    def add_pod(self, name: str) -> Pod:
        port = _free_port()
        directory = self.tmp / "mem" / name
        log = open(self.tmp / f"{name}-server.log", "ab")  # noqa: SIM115 - closed with the process
        server = subprocess.Popen(
            [sys.executable, "-m", "elastra.storage.memory", "--dir", str(directory),
             "--host", "127.0.0.1", "--port", str(port)],
            stdout=log, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        pod = Pod(name, directory, port, server)
        self.pods[name] = pod
        return pod

    def run(
        self, members: list[str], *, steps: int, hold: int, fault_step: int | None = None,
        disk: Path | None = None,
    ) -> Path:  # fmt: skip
        """Start one generation's workers on `members` (in rank order); its output folder."""
        self.generation += 1
        out = self.tmp / f"gen{self.generation}"
        out.mkdir()
        port = _free_port()
        peers = ",".join(f"{p}={self.pods[p].addr}" for p in members)
        for rank, name in enumerate(members):
            pod = self.pods[name]
            env = {
                **os.environ, "RANK": str(rank), "WORLD_SIZE": str(len(members)), "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
                "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS": "20", "POD_NAME": name,
                "ELASTRA_MEMORY_DIR": str(pod.dir), "ELASTRA_MEMORY_ADDR": pod.addr,
                "ELASTRA_MEMORY_PEERS": peers, "ELASTRA_MEMORY_PARITY": "1", "ELASTRA_MEMORY_GROUP_SIZE": "4",
            }  # fmt: skip
            env.pop("ELASTRA_CKPT_FAULT", None)
            if disk is not None:
                env.update(ELASTRA_CHECKPOINT_URI=str(disk), ELASTRA_CHECKPOINT_EVERY_STEPS="4")
            argv = [sys.executable, str(WORKER), str(steps), str(hold), str(out)]
            argv += [str(fault_step)] if fault_step is not None else []
            log = open(out / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
            pod.worker = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        return out

    def wait_files(self, out: Path, prefix: str, n: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while len(list(out.glob(f"{prefix}-*"))) < n:
            crashed = [p.name for p in self.pods.values() if p.worker is not None and p.worker.poll()]
            if time.monotonic() > deadline or crashed:
                logs = {p.name: p.read_text()[-2000:] for p in out.glob("*.log")}
                raise AssertionError(f"{n} {prefix} files not written in {timeout}s: {logs}")
            time.sleep(0.1)

    def results(self, out: Path, n: int) -> list[dict[str, object]]:
        self.wait_files(out, "restored", n)
        return [json.loads((out / f"restored-{r}.json").read_text()) for r in range(n)]

    def stop_workers(self) -> None:
        for pod in self.pods.values():
            if pod.worker is not None and pod.worker.poll() is None:
                pod.worker.kill()
            if pod.worker is not None:
                pod.worker.wait()

    def kill_node(self, name: str) -> None:
        pod = self.pods.pop(name)
        for proc in (pod.worker, pod.server):
            if proc is not None:
                proc.send_signal(signal.SIGKILL)
                proc.wait()

    def close(self) -> None:
        self.stop_workers()
        for pod in self.pods.values():
            pod.server.kill()
            pod.server.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


PODS = ["p0", "p1", "p2", "p3"]


def _start(cluster: Cluster, pods: list[str], hold: int = 5, **kw: object) -> None:
    for name in pods:
        cluster.add_pod(name)
    out = cluster.run(pods, steps=50, hold=hold, **kw)  # type: ignore[arg-type]
    cluster.wait_files(out, "held", len(pods))


def test_groups_of_four_pods_parity_one() -> None:
    """The layout the tests below rely on: p0-p2 form a group whose parity p3 holds."""
    groups = plan_groups(PODS, 4, 1)
    assert [(g.members, g.holders) for g in groups] == [(("p0", "p1", "p2"), ("p3",)), (("p3",), ("p0",))]


def test_worker_kill_restores_from_own_pod_memory(cluster: Cluster) -> None:
    _start(cluster, PODS)
    cluster.pods["p2"].worker.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    cluster.stop_workers()  # its peers' collectives fail; their agents restart them in place
    results = cluster.results(cluster.run(PODS, steps=50, hold=99), 4)
    for r in results:
        assert r["restored"] == 5 and r["exact"] and r["tier"] == "memory", r
        assert r["sources"]["peer"] == 0 and r["sources"]["rebuilt"] == 0 and r["sources"]["own"] > 0, r


def test_node_kill_rebuilds_from_parity_bit_exact(cluster: Cluster) -> None:
    _start(cluster, PODS)
    cluster.kill_node("p1")
    cluster.stop_workers()
    results = cluster.results(cluster.run(["p0", "p2", "p3"], steps=50, hold=99), 3)
    assert all(r["restored"] == 5 and r["exact"] and r["tier"] == "memory" for r in results), results
    assert sum(r["sources"]["rebuilt"] for r in results) > 0, results  # p1's shard came from parity
    assert sum(r["sources"]["peer"] for r in results) > 0, results


def test_two_pods_of_one_group_lost_falls_back_to_disk(cluster: Cluster, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    _start(cluster, PODS, hold=6, disk=disk)  # disk checkpoints every 4 steps: step 4
    cluster.kill_node("p0")
    cluster.kill_node("p1")
    cluster.stop_workers()
    results = cluster.results(cluster.run(["p2", "p3"], steps=50, hold=99, disk=disk), 2)
    for r in results:
        assert r["restored"] == 4 and r["exact"] and r["tier"] != "memory", r


def test_kill_during_encoding_never_restores_the_torn_snapshot(cluster: Cluster) -> None:
    for name in PODS:
        cluster.add_pod(name)
    out = cluster.run(PODS, steps=50, hold=99, fault_step=5)
    deadline = time.monotonic() + 90
    while cluster.pods["p3"].worker.poll() is None:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "rank 3 did not die in the encode phase"
        time.sleep(0.1)
    assert cluster.pods["p3"].worker.returncode == -signal.SIGKILL  # type: ignore[union-attr]
    cluster.stop_workers()
    # torn: data (under the save's unique shard name), no parity, no manifest
    assert list((cluster.pods["p0"].dir / "step-5").glob("rank-00000-*.safetensors")), out
    assert not (cluster.pods["p0"].dir / "step-5" / "manifest.json").exists()
    results = cluster.results(cluster.run(PODS, steps=50, hold=99), 4)
    for r in results:
        assert 1 <= r["restored"] < 5 and r["exact"] and r["tier"] == "memory", (r, out)


def test_grow_three_to_four_reads_peers_memory(cluster: Cluster) -> None:
    _start(cluster, PODS[:3])
    cluster.stop_workers()
    cluster.add_pod("p3")
    results = cluster.results(cluster.run(PODS, steps=50, hold=99), 4)
    for r in results:
        assert r["restored"] == 5 and r["exact"] and r["tier"] == "memory", r
    assert results[3]["sources"]["own"] == 0 and results[3]["sources"]["peer"] > 0, results[3]
