"""localcluster's scheduler and process kubelets, end to end through the kubernetes client."""

from __future__ import annotations

import os
import pathlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from polling import until

from localcluster import LocalCluster

HEARTBEAT_S = 0.5
GRACE_S = 3.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(
        workdir=tmp_path_factory.mktemp("lc"),
        nodes=3,
        gpus_per_node=1,
        heartbeat_interval_s=HEARTBEAT_S,
        node_grace_s=GRACE_S,
    ) as lc:
        yield lc


@pytest.fixture(scope="module")
def core(cluster: LocalCluster) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))


@pytest.fixture
def namespace(core: client.CoreV1Api, request: pytest.FixtureRequest) -> str:
    name = request.node.name.replace("_", "-").lower()[:40].strip("-")
    core.create_namespace({"metadata": {"name": name}})
    return name


def pod(name: str, command: str, **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "ignored",
        "command": ["sh", "-c", command],
        **spec.pop("container", {}),
    }
    return {
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {"containers": [container], **spec},
    }


def phase(core: client.CoreV1Api, ns: str, name: str, wanted: str) -> Callable[[], Any]:
    def check() -> Any:
        p = core.read_namespaced_pod(name, ns)
        return p if p.status.phase == wanted else None

    return check


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_node_kill_kills_processes_and_turns_node_not_ready(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str, tmp_path: pathlib.Path
) -> None:
    pidfile = tmp_path / "child.pid"
    core.create_namespaced_pod(namespace, pod("victim", f"sleep 300 & echo $! > {pidfile}; wait"))
    running = until(phase(core, namespace, "victim", "Running"))
    node = running.spec.node_name
    leader = int(running.status.container_statuses[0].container_id.rsplit("/", 1)[1])
    child = int(until(lambda: pidfile.exists() and pidfile.read_text().strip()))
    assert alive(leader) and alive(child)

    killed_at = time.monotonic()
    cluster.kill_node(node)
    until(lambda: not alive(leader) and not alive(child), timeout=10)

    def not_ready() -> bool:
        conditions = core.read_node(node).status.conditions
        return any(c.type == "Ready" and c.status == "Unknown" for c in conditions)

    until(not_ready)
    assert time.monotonic() - killed_at < GRACE_S + 5  # heartbeat timeout plus the controller's check period
    taints = core.read_node(node).spec.taints or []
    assert {t.key for t in taints} == {"node.kubernetes.io/unreachable"}
    victim = core.read_namespaced_pod("victim", namespace)
    assert any(c.type == "Ready" and c.status == "False" for c in victim.status.conditions)

    cluster.add_node(node)  # the node comes back: Ready again, taints gone
    until(
        lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_node(node).status.conditions)
    )
    assert not core.read_node(node).spec.taints
    core.delete_namespaced_pod("victim", namespace, grace_period_seconds=0)


def test_gpus_and_anti_affinity_limit_one_worker_per_node(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    anti = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {"matchLabels": {"role": "worker"}},
                    "topologyKey": "kubernetes.io/hostname",
                }
            ]
        }
    }
    ready_nodes = [
        n.metadata.name
        for n in core.list_node().items
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    ]
    count = len(ready_nodes)
    for i in range(count + 1):
        gpu = {"resources": {"limits": {"nvidia.com/gpu": "1"}}}
        core.create_namespaced_pod(
            namespace, pod(f"w{i}", "sleep 300", labels={"role": "worker"}, affinity=anti, container=gpu)
        )

    def placed() -> list[str] | None:
        pods = core.list_namespaced_pod(namespace).items
        nodes = [p.spec.node_name for p in pods if p.spec.node_name]
        return nodes if len(nodes) == count else None

    nodes = until(placed)
    assert sorted(nodes) == sorted(ready_nodes)
    pending = until(
        lambda: [
            p
            for p in core.list_namespaced_pod(namespace).items
            if not p.spec.node_name and p.status.conditions
        ]
    )
    message = pending[0].status.conditions[0].message
    assert (
        pending[0].status.conditions[0].reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in message
    )
    new_node = cluster.add_node()
    until(lambda: core.read_namespaced_pod(pending[0].metadata.name, namespace).spec.node_name == new_node)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)


def test_env_volumes_and_logs(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}})
    spec = {
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "scratch", "emptyDir": {}},
            {"name": "data", "hostPath": {"path": "/data/elastra"}},
        ],
        "container": {
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "ROLE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
                {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}}},
                {"name": "CKPT", "value": "/data/elastra/ckpt"},
            ],
            "volumeMounts": [
                {"name": "cfg", "mountPath": "/etc/cfg"},
                {"name": "scratch", "mountPath": "/scratch"},
                {"name": "data", "mountPath": "/data/elastra"},
            ],
            "workingDir": "/scratch",
        },
        "restartPolicy": "Never",
        "labels": {"role": "worker"},
    }
    script = (
        'echo "$POD_NAME $POD_NAMESPACE $NODE_NAME $POD_IP $ROLE $GREETING"; '
        "cat /etc/cfg/greeting; echo; pwd; "
        'mkdir -p $CKPT && touch $CKPT/marker && echo "$CKPT"'
    )
    core.create_namespaced_pod(namespace, pod("envpod", script, **spec))
    done = until(phase(core, namespace, "envpod", "Succeeded"))
    # the client (v36) returns str(bytes) for logs, for a real server too: read the raw body instead
    lines = (
        core.read_namespaced_pod_log("envpod", namespace, _preload_content=False).data.decode().splitlines()
    )
    ip = done.status.pod_ip
    assert ip.startswith("127.") and ip != "127.0.0.1"
    assert lines[0] == f"envpod {namespace} {done.spec.node_name} {ip} worker hello"
    assert lines[1] == "hello"
    assert lines[2].endswith("/volumes/scratch") and "/nodes/" + done.spec.node_name + "/pods/" in lines[2]
    assert lines[3].endswith(f"/nodes/{done.spec.node_name}/hostpath/data/elastra/ckpt")
    assert pathlib.Path(lines[3], "marker").exists()
    assert done.status.container_statuses[0].state.terminated.exit_code == 0


def test_logs_follow_until_exit_and_tail(core: client.CoreV1Api, namespace: str) -> None:
    script = "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.1; done"
    core.create_namespaced_pod(namespace, pod("talker", script, restartPolicy="Never"))
    until(lambda: core.read_namespaced_pod("talker", namespace).status.container_statuses)
    followed = core.read_namespaced_pod_log("talker", namespace, follow=True, _preload_content=False)
    # The stream ends by itself once the container exits, holding every line exactly once.
    assert followed.data.decode().split() == [f"line{i}" for i in range(1, 7)]
    until(phase(core, namespace, "talker", "Succeeded"))
    tail = core.read_namespaced_pod_log("talker", namespace, tail_lines=2, _preload_content=False)
    assert tail.data.decode().split() == ["line5", "line6"]


def test_exit_codes_restart_policy_and_graceful_delete(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str, tmp_path: pathlib.Path
) -> None:
    core.create_namespaced_pod(namespace, pod("fails", "exit 3", restartPolicy="Never"))
    failed = until(phase(core, namespace, "fails", "Failed"))
    assert failed.status.container_statuses[0].state.terminated.exit_code == 3

    marker = tmp_path / "restarts"
    core.create_namespaced_pod(
        namespace,
        pod("flaky", f"echo x >> {marker}; [ $(wc -l < {marker}) -ge 2 ]", restartPolicy="OnFailure"),
    )
    done = until(phase(core, namespace, "flaky", "Succeeded"))
    assert done.status.container_statuses[0].restart_count == 1

    termfile = tmp_path / "term"
    core.create_namespaced_pod(
        namespace,
        pod(
            "graceful",
            f"trap 'echo TERM > {termfile}; exit 0' TERM; while true; do sleep 0.1; done",
            terminationGracePeriodSeconds=10,
        ),
    )
    until(phase(core, namespace, "graceful", "Running"))
    time.sleep(0.3)  # let the shell install its trap (process start, not a timing assertion)
    deleted = core.delete_namespaced_pod("graceful", namespace)
    assert deleted.metadata.deletion_timestamp is not None

    def gone() -> bool:
        try:
            core.read_namespaced_pod("graceful", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    until(gone)
    assert termfile.read_text().strip() == "TERM"

    # Deleting the finished pods leaves no run of this namespace in any kubelet.
    core.delete_namespaced_pod("fails", namespace)
    core.delete_namespaced_pod("flaky", namespace)

    def forgotten() -> bool:
        runs = [run for k in list(cluster.core.kubelets.values()) for run in list(k.pods.values())]
        return not any(run.key[0] == namespace for run in runs)

    until(forgotten)


def test_cordon_and_drain(cluster: LocalCluster, core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod("resident", "sleep 300", terminationGracePeriodSeconds=1))
    node = until(phase(core, namespace, "resident", "Running")).spec.node_name
    evicted = cluster.drain(node)
    assert f"{namespace}/resident" in evicted
    assert core.read_node(node).spec.unschedulable is True

    def gone() -> bool:
        return not core.list_namespaced_pod(namespace, field_selector="metadata.name=resident").items

    until(gone)
    core.create_namespaced_pod(
        namespace, pod("newcomer", "sleep 300", nodeSelector={"kubernetes.io/hostname": node})
    )
    pending = until(lambda: core.read_namespaced_pod("newcomer", namespace).status.conditions)
    assert pending[0].reason == "Unschedulable"
    cluster.uncordon(node)
    until(lambda: core.read_namespaced_pod("newcomer", namespace).spec.node_name == node)
    core.delete_collection_namespaced_pod(namespace, grace_period_seconds=0)
    assert os.path.exists(cluster.kubeconfig)


def stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.NoSuchProcess:
        return False


def test_node_freeze_stops_every_process_until_thaw(
    cluster: LocalCluster, core: client.CoreV1Api, namespace: str, tmp_path: pathlib.Path
) -> None:
    """Freeze hangs the node without a reset: its processes (a child in its own session included) stop,
    the node goes NotReady; a pod force-deleted and recreated meanwhile: the old run is terminated once
    the node thaws, and the new pod of the same name runs."""
    pidfile = tmp_path / "child.pid"
    # setsid: the child leaves the container's process group, as a worker forked elsewhere might
    # (`$$` is `$` in a pod command)
    core.create_namespaced_pod(
        namespace, pod("hung", f"setsid sh -c 'echo $$$$ > {pidfile}; exec sleep 300' & wait")
    )
    running = until(phase(core, namespace, "hung", "Running"))
    node = running.spec.node_name
    leader = int(running.status.container_statuses[0].container_id.rsplit("/", 1)[1])
    child = int(until(lambda: pidfile.exists() and pidfile.read_text().strip()))
    assert os.getpgid(child) != os.getpgid(leader)

    assert cluster.freeze_node(node) >= 2
    assert stopped(leader) and stopped(child)
    assert cluster.status()["nodes"][int(node.rsplit("-", 1)[1]) - 1]["kubelet"] == "frozen"
    until(
        lambda: any(
            c.type == "Ready" and c.status == "Unknown" for c in core.read_node(node).status.conditions
        ),
        timeout=GRACE_S + 10,
    )
    # As the operator does on a lost node: force-delete, then a new pod with the same name.
    old_uid = running.metadata.uid
    core.delete_namespaced_pod("hung", namespace, grace_period_seconds=0)
    core.create_namespaced_pod(namespace, pod("hung", "sleep 300", nodeName=node))
    time.sleep(1.5)
    assert stopped(leader) and stopped(child)  # a frozen kubelet acts on nothing
    assert core.read_namespaced_pod("hung", namespace).status.phase == "Pending"

    assert cluster.thaw_node(node) >= 2
    until(
        lambda: any(c.type == "Ready" and c.status == "True" for c in core.read_node(node).status.conditions)
    )
    until(lambda: not alive(leader), timeout=10)  # the old run is terminated after the thaw...
    fresh = until(phase(core, namespace, "hung", "Running"))  # ...and the new pod runs,
    assert fresh.metadata.uid != old_uid
    time.sleep(1.0)  # not deleted by the old run's clean-up (it deleted by name)
    assert core.read_namespaced_pod("hung", namespace).metadata.uid == fresh.metadata.uid
    os.kill(child, 9)  # the setsid child is outside the pod's process group: the test's to clean up
