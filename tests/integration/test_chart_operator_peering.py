"""The chart's two operator replicas as real pods of localcluster's Deployment controller, with Kopf
peering: install the chart with helm-python-sdk, run a TrainingJob of stub trainers, check that exactly
one replica acts, SIGKILL that replica's process (a crash: no goodbye in the peering object) and check
that the standby takes over: a node kill afterwards still leads to exactly one new generation.

Which replica acts is read from each replica's own `/metrics` at `<pod IP>:<port>`: only a replica that
ran the job's reconcile pass exports the job's gauges. Both replicas bind the same ports on their own
pod IPs, which is what `--metrics-host $(POD_IP)` and the liveness endpoint on `$(POD_IP)` make possible
on a shared host network."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import helm_python as helm
import kubernetes
import pytest
from kubernetes.client.exceptions import ApiException
from polling import until
from test_operator_harness import metric_value

from elastra.api.membership import MEMBERSHIP_KEY, Membership, membership_configmap_name
from localcluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
STUB = pathlib.Path(__file__).with_name("stub_trainer.py")
RELEASE, OPERATOR_NS, JOB_NS, JOB = "elastra", "elastra-system", "default", "peered"
GROUP, VERSION = "elastra.dev", "v1alpha1"
LIFETIME_S = 6  # a crashed replica's peering entry counts as gone after this
T = TypeVar("T")
pytestmark = pytest.mark.timeout(120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A localcluster with the chart installed, and reads of what the operator replicas did."""

    def __init__(self, local: LocalCluster) -> None:
        self.local = local
        client = kubernetes.config.new_client_from_config(config_file=local.kubeconfig)
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        # Ports nothing else on this machine listens on: a busy 0.0.0.0:PORT would block 127.0.x.y:PORT.
        self.metrics_port = _free_port()

    def install(self) -> None:
        values = {
            "peering": {"lifetimeSeconds": LIFETIME_S},
            "trainer": {"namespaces": [JOB_NS]},
            "metrics": {"port": self.metrics_port},
            "operator": {
                "healthPort": _free_port(),
                "extraEnv": [{"name": "ELASTRA_RESYNC_SECONDS", "value": "0.3"}],
            },
        }
        with helm.Config(kubeconfig_path=self.local.kubeconfig, namespace=OPERATOR_NS) as config:
            result = config.install(
                CHART, RELEASE, values, namespace=OPERATOR_NS, create_namespace=True, timeout=60
            )
        assert result["status"] == "deployed", result

    # ------------------------------------------------------------------ the operator replicas
    def operator_pods(self) -> list[Any]:
        """Live operator pods (not being deleted), by name."""
        pods = self.core.list_namespaced_pod(
            OPERATOR_NS, label_selector=f"app.kubernetes.io/instance={RELEASE}"
        ).items
        return sorted(
            (p for p in pods if p.metadata.deletion_timestamp is None), key=lambda p: p.metadata.name
        )

    def running_operator_pods(self) -> list[Any] | None:
        pods = self.operator_pods()
        up = [p for p in pods if p.status.phase == "Running" and p.status.pod_ip]
        return up if len(up) == 2 else None

    def peers(self) -> dict[str, Any]:
        peering = self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "elastra")
        status: dict[str, Any] = peering.get("status") or {}
        return status

    def metrics_of(self, pod: Any) -> str:
        url = f"http://{pod.status.pod_ip}:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def acting(self, pods: list[Any]) -> list[str]:
        """The replicas whose metrics show a reconcile pass over the job."""
        return [p.metadata.name for p in pods if f'job="{JOB}"' in self.metrics_of(p)]

    def log_of(self, pod: Any) -> str:
        logs = self.local.core.workdir.glob(f"nodes/*/pods/{OPERATOR_NS}_{pod.metadata.name}_*/logs/*.log")
        return "".join(path.read_text(errors="replace") for path in sorted(logs))

    # ------------------------------------------------------------------ the job
    def create_job(self) -> None:
        spec = {
            "replicas": {"min": 2, "max": 3},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "stub",
                            "command": [sys.executable, str(STUB)],
                            "env": [{"name": "STUB_STEP_SECONDS", "value": "0.05"}],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ]
                }
            },
            "checkpoint": {
                "everySteps": 20,
                "directory": {"path": str(self.local.core.workdir / "ckpt"), "keep": 3},
            },
            "elastic": {
                "nodeLossTimeoutSeconds": 1,
                "scaleUpCooldownSeconds": 1,
                "checkpointDeadlineSeconds": 30,
            },
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": JOB},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, JOB_NS, "trainingjobs", body)

    def status(self) -> dict[str, Any]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, JOB_NS, "trainingjobs", JOB)
        status: dict[str, Any] = job.get("status") or {}
        return status

    def running(self, world: int, after_generation: int = 0) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            s = self.status()
            ok = s.get("phase") == "Running" and s.get("worldSize") == world
            return s if ok and s.get("generation", 0) > after_generation else None

        return check

    def membership(self) -> Membership:
        cm = self.core.read_namespaced_config_map(membership_configmap_name(JOB), JOB_NS)
        return Membership.model_validate_json((cm.data or {})[MEMBERSHIP_KEY])

    def worker_pods(self) -> list[Any]:
        """Every worker pod of the job, live or being deleted."""
        return list(self.core.list_namespaced_pod(JOB_NS, label_selector=f"elastra.dev/job={JOB}").items)

    def wait(self, predicate: Callable[[], T | None], timeout: float, what: str) -> T:
        def replica_logs() -> str:
            return "".join(
                f"--- {p.metadata.name} ---\n{self.log_of(p)[-3000:]}\n" for p in self.operator_pods()
            )

        # ApiException/OSError: a replica's server between restarts, a pod between states.
        return until(predicate, timeout, what, retry_on=(ApiException, OSError), diagnostics=replica_logs)


@pytest.fixture
def cluster(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    # The kubelets start each container's command with this process's environment: the operator pods'
    # `elastra operator` is found on PATH, as in the operator image, so the venv's bin goes first.
    monkeypatch.setenv(
        "PATH", f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    # HTTPS with the cluster CA: helm sends the kubeconfig's token, the operator pods their own.
    with LocalCluster(
        workdir=tmp_path / "cluster",
        nodes=3,
        gpus_per_node=1,
        node_grace_s=2,
        heartbeat_interval_s=0.5,
    ) as local:
        yield Cluster(local)


def crash(cluster: Cluster, active: Any, standby: Any) -> str:
    """SIGKILL the active replica's process group (its containerID names the process): no goodbye in the
    peering object; the kubelet restarts it in the same pod, younger, so at a lower priority. Then lose
    the node of a worker, but not the standby's. Returns that node."""
    status = cluster.core.read_namespaced_pod(active.metadata.name, OPERATOR_NS).status
    os.killpg(int(status.container_statuses[0].container_id.rsplit("/", 1)[1]), signal.SIGKILL)
    members = [m.pod for m in cluster.membership().members]
    nodes = {cluster.core.read_namespaced_pod(pod, JOB_NS).spec.node_name for pod in members}
    victim_node = sorted(nodes - {standby.spec.node_name})[0]
    cluster.local.kill_node(victim_node)
    return victim_node


def node_loss(cluster: Cluster, active: Any, standby: Any) -> str:
    """Lose the active replica's node (and the worker on it): the replica is gone for good, so the standby
    resumes only once the replica's peering entry outlives its lifetime. Returns that node."""
    cluster.local.kill_node(active.spec.node_name)
    return str(active.spec.node_name)


@pytest.mark.parametrize(
    "lose_active",
    [
        pytest.param(crash, id="active-crashes-then-a-worker-node-dies"),
        pytest.param(node_loss, id="active-dies-with-a-worker-node"),
    ],
)
def test_one_replica_acts_and_the_standby_takes_over(
    cluster: Cluster, lose_active: Callable[[Cluster, Any, Any], str]
) -> None:
    cluster.install()
    pods = cluster.wait(cluster.running_operator_pods, 30, "both operator replicas to run")
    assert len({p.status.pod_ip for p in pods}) == 2
    cluster.wait(lambda: len(cluster.peers()) == 2, 20, "both replicas in the peering object")
    priorities = {entry["priority"] for entry in cluster.peers().values()}
    assert len(priorities) == 2, "replicas of equal priority would both freeze"

    cluster.create_job()
    first = cluster.wait(cluster.running(3), 40, "the job to run on 3 nodes")
    assert first["generation"] == 1
    acting = cluster.wait(lambda: cluster.acting(pods) or None, 10, "a replica to export the job's metrics")
    assert len(acting) == 1, f"both replicas reconciled the job: {acting}"
    active = next(p for p in pods if p.metadata.name == acting[0])
    standby = next(p for p in pods if p.metadata.name != acting[0])
    # The older replica wins (oldest-first): its priority is the higher one.
    peers = cluster.peers()
    assert peers[active.metadata.name]["priority"] > peers[standby.metadata.name]["priority"]
    assert len(cluster.worker_pods()) == 3, "each worker pod is created once"
    assert cluster.membership().generation == 1
    node_of = {
        m.pod: cluster.core.read_namespaced_pod(m.pod, JOB_NS).spec.node_name
        for m in cluster.membership().members
    }
    first_members = set(node_of)
    resumed_before = cluster.log_of(standby).count("Resuming operations")

    victim_node = lose_active(cluster, active, standby)

    cluster.wait(
        lambda: cluster.log_of(standby).count("Resuming operations") > resumed_before,
        LIFETIME_S + 15,
        "the standby to resume",
    )
    after = cluster.wait(cluster.running(2, first["generation"]), 40, "a new generation of the survivors")
    assert after["generation"] == first["generation"] + 1, "one node loss, one new generation"
    assert after["failures"] == 1
    m2 = cluster.membership()
    assert m2.generation == after["generation"]
    lost = {pod for pod, node in node_of.items() if node == victim_node}
    assert len(lost) == 1
    assert {m.pod for m in m2.members} == first_members - lost
    text = cluster.metrics_of(standby)
    assert metric_value(text, "elastra_job_generation", job=JOB) == after["generation"]
    # One failure, under the evidence that decided it: the dead node turned NotReady first (NodeLost),
    # or its pod's peers reported PeerLost and the pod stayed silent while the node was still Ready
    # (Unresponsive: the standby's first pass came within the kubelet's 2 s grace). Both are this loss.
    by_reason = {
        reason: metric_value(text, "elastra_failures_total", job=JOB, reason=reason)
        for reason in ("NodeLost", "Unresponsive")
    }
    assert sum(by_reason.values()) == 1, by_reason
    # The lost replica came back (same pod, after a crash) or not at all (its node is gone); no replica
    # but the standby has touched the job since.
    for pod in cluster.operator_pods():
        if pod.metadata.name != standby.metadata.name and pod.spec.node_name != victim_node:
            assert f'job="{JOB}"' not in cluster.metrics_of(pod), f"{pod.metadata.name} acted on standby"
    live_workers = {p.metadata.name for p in cluster.worker_pods() if p.metadata.deletion_timestamp is None}
    assert live_workers - lost == first_members - lost, "no worker pod was created twice"
