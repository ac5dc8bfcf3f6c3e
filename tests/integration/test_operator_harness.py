"""The real operator process against localcluster, with the stub trainer as the pods' command.

Imported by the operator integration tests; holds no tests itself.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from polling import until

from elastra.api.membership import MEMBERSHIP_KEY, Membership, membership_configmap_name

ROOT = pathlib.Path(__file__).resolve().parents[2]
STUB = pathlib.Path(__file__).with_name("stub_trainer.py")
ELASTRA = pathlib.Path(sys.executable).with_name("elastra")
GROUP, VERSION, NS = "elastra.dev", "v1alpha1", "default"
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Harness:
    """A localcluster, the CRDs, and the operator as a subprocess (`elastra operator --standalone`)."""

    def __init__(self, workdir: pathlib.Path, nodes: int, **cluster_options: Any) -> None:
        from localcluster import LocalCluster

        self.workdir = workdir
        options: dict[str, Any] = {"node_grace_s": 2, "heartbeat_interval_s": 0.5, **cluster_options}
        self.cluster = LocalCluster(workdir=workdir / "cluster", nodes=nodes, gpus_per_node=1, **options)
        self.cluster.start()
        client = kubernetes.config.new_client_from_config(config_file=self.cluster.kubeconfig)
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        ext = kubernetes.client.ApiextensionsV1Api(client)
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(crd.read_text()))
        self.metrics_port = _free_port()
        self.operators: list[subprocess.Popen[bytes]] = []
        self.log = workdir / "operator.log"
        self.start_operator()

    # ------------------------------------------------------------------ the operator process
    def start_operator(self, *, metrics: bool = True) -> None:
        """One more operator process (the first serves metrics on `metrics_port`)."""
        env = {**os.environ, "ELASTRA_RESYNC_SECONDS": "0.3"}
        argv = [str(ELASTRA), "operator", "--kubeconfig", self.cluster.kubeconfig, "--standalone"]
        argv += ["--metrics-port", str(self.metrics_port if metrics else 0)]
        with self.log.open("ab") as log:
            self.operators.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))

    def kill_operator(self) -> None:
        """SIGKILL every operator: no clean shutdown, exactly like a crashed or evicted operator pod."""
        for proc in self.operators:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)

    def close(self) -> None:
        for proc in self.operators:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.cluster.stop()

    # ------------------------------------------------------------------ jobs
    def create_job(
        self, name: str, *, env: dict[str, str] | None = None, namespace: str = NS, **spec: Any
    ) -> None:
        container_env = [{"name": "STUB_STEP_SECONDS", "value": "0.05"}]
        container_env += [{"name": k, "value": v} for k, v in (env or {}).items()]
        body: dict[str, Any] = {
            "replicas": {"min": 2, "max": 3},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "stub",
                            "command": [sys.executable, str(STUB)],
                            "env": container_env,
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ]
                }
            },
            "checkpoint": {"everySteps": 20, "directory": {"path": str(self.workdir / "ckpt"), "keep": 3}},
            "elastic": {
                "nodeLossTimeoutSeconds": 1,
                "scaleUpCooldownSeconds": 1,
                "checkpointDeadlineSeconds": 30,
            },
        }
        body.update(spec)
        manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name}}
        self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, "trainingjobs", {**manifest, "spec": body}
        )

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", name, {"spec": spec})

    def status(self, name: str) -> dict[str, Any]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", name)
        status: dict[str, Any] = job.get("status") or {}
        return status

    def membership(self, name: str) -> Membership | None:
        try:
            cm = self.core.read_namespaced_config_map(membership_configmap_name(name), NS)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return Membership.model_validate_json((cm.data or {})[MEMBERSHIP_KEY])

    def pods(self, name: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(NS, label_selector=f"elastra.dev/job={name}").items)

    def live_pods(self, name: str) -> list[str]:
        return sorted(p.metadata.name for p in self.pods(name) if p.metadata.deletion_timestamp is None)

    def node_of(self, pod: str) -> str:
        return str(self.core.read_namespaced_pod(pod, NS).spec.node_name)

    def checkpoints(self, name: str) -> list[dict[str, Any]]:
        raw = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, NS, "checkpoints", label_selector=f"elastra.dev/job={name}"
        )
        return sorted(raw["items"], key=lambda c: c["spec"]["step"])

    def events(self, name: str) -> list[str]:
        items = self.core.list_namespaced_event(NS).items
        return [e.reason for e in items if e.involved_object.name == name]

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def running(
        self, name: str, world: int, after_generation: int = 0
    ) -> Callable[[], dict[str, Any] | None]:
        """A predicate: the job Runs at this world size in a generation newer than `after_generation`."""

        def check() -> dict[str, Any] | None:
            s = self.status(name)
            ok = s.get("phase") == "Running" and s.get("worldSize") == world
            return s if ok and s.get("generation", 0) > after_generation else None

        return check

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        """Poll until `predicate` returns a truthy value; on timeout fail with the operator's log."""

        def operator_log() -> str:
            tail = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            return f"--- operator log ---\n{tail}"

        return until(predicate, timeout, what, diagnostics=operator_log)


def agent_template(command: list[str], image: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """A worker pod template: the real agent running `command` (`python -m elastra.agent -- …`), with
    the timings the localcluster tests use (1 s reports and membership polls, 20 s collective timeout)
    and one GPU."""
    settings = {
        "OMP_NUM_THREADS": "1",
        "ELASTRA_METRICS_PORT": "0",
        "ELASTRA_REPORT_INTERVAL_SECONDS": "1",
        "ELASTRA_MEMBERSHIP_POLL_SECONDS": "1",
        "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS": "20",
        **(env or {}),
    }
    container = {
        "name": "trainer",
        "image": image,
        "command": [sys.executable, "-m", "elastra.agent", "--", *command],
        "env": [{"name": k, "value": v} for k, v in settings.items()],
        "resources": {"limits": {"nvidia.com/gpu": 1}},
    }
    return {"spec": {"containers": [container]}}


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def make_harness(tmp_path: pathlib.Path) -> Iterator[Callable[[int], Harness]]:
    made: list[Harness] = []

    def make(nodes: int) -> Harness:
        harness = Harness(tmp_path, nodes)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


__all__ = ["Harness", "json", "make_harness", "metric_value"]
