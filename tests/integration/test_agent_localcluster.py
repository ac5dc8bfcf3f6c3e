"""The pod agent in localcluster, driven by a hand-written membership record (no operator).

One scenario, as the operator would drive it:
1. generation 1: two pods, world 2, fresh; both agents report Running; rank 0's pod reports commits.
2. pod B is deleted (SIGTERM): its workers and, through the agreed stop, A's take an emergency
   checkpoint; A's agent reports Failed (its worker exited because a peer stopped) within seconds.
3. generation 2: pod A alone (world 1) restores the emergency checkpoint, resharded, and runs to the
   end: Succeeded. `Done` makes the agent exit 0. A's /metrics serves the trainer series.
"""

from __future__ import annotations

import json
import pathlib
import socket
import sys
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from polling import until

pytest.importorskip("localcluster")
from kubernetes import client, config

from elastra.api.membership import AGENT_ANNOTATION, COMMIT_ANNOTATION, MEMBERSHIP_KEY, AgentReport
from elastra.api.pod import SERVICEACCOUNT_DIR, SERVICEACCOUNT_DIR_ENV
from localcluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "gpt_tiny" / "train.py"
JOB, NS = "tj", "default"
STEPS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Pod IPs repeat across localclusters running side by side (other test runs): use our own ports.
METRICS_PORT = _free_port()


def _pod_manifest(name: str, node: str, ckpt: pathlib.Path, tmp: pathlib.Path) -> dict[str, Any]:
    field = lambda path: {"valueFrom": {"fieldRef": {"fieldPath": path}}}  # noqa: E731
    env = [
        {"name": "ELASTRA_JOB", "value": JOB},
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
        {"name": "ELASTRA_CHECKPOINT_URI", "value": str(ckpt)},
        {"name": "ELASTRA_CHECKPOINT_EVERY_STEPS", "value": "10"},
        {"name": "ELASTRA_CONTROL_DIR", "value": str(tmp / f"ctl-{name}")},
        {"name": "ELASTRA_REPORT_INTERVAL_SECONDS", "value": "1"},
        {"name": "ELASTRA_MEMBERSHIP_POLL_SECONDS", "value": "2"},
        {"name": "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS", "value": "30"},
        {"name": "ELASTRA_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "OMP_NUM_THREADS", "value": "1"},
        {"name": SERVICEACCOUNT_DIR_ENV, "value": SERVICEACCOUNT_DIR},
    ]
    command = [
        sys.executable,
        "-m",
        "elastra.agent",
        "--",
        sys.executable,
        str(TRAIN),
        "--steps",
        str(STEPS),
        "--block",
        "32",
        "--global-batch",
        "8",
        "--step-sleep",
        "0.05",
    ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {"elastra.dev/job": JOB, "elastra.dev/role": "worker"},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": f"{JOB}-worker",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [{"name": "trainer", "image": "elastra-trainer", "command": command, "env": env}],
        },
    }


def _wait(what: str, probe: Callable[[], Any], timeout: float = 90) -> Any:
    return until(probe, timeout, what)


def _annotation(api: Any, pod: str, key: str) -> dict[str, Any] | None:
    try:
        obj = api.read_namespaced_pod(pod, NS)
    except client.ApiException:
        return None
    raw = (obj.metadata.annotations or {}).get(key)
    return json.loads(raw) if raw else None


def _state(api: Any, pod: str) -> AgentReport | None:
    raw = _annotation(api, pod, AGENT_ANNOTATION)
    return AgentReport.model_validate(raw) if raw else None


def _write_membership(api: Any, record: dict[str, Any]) -> None:
    body = {
        "metadata": {"name": f"{JOB}-membership", "namespace": NS},
        "data": {MEMBERSHIP_KEY: json.dumps(record)},
    }
    try:
        api.replace_namespaced_config_map(f"{JOB}-membership", NS, body)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_config_map(NS, body)


def _identity(lc: LocalCluster, pods: list[str]) -> None:
    """The job's worker identity with exactly the permissions the operator grants (RBAC is on): get
    and patch its own pods, read its membership record."""
    rbac = client.RbacAuthorizationV1Api(config.new_client_from_config(config_file=lc.kubeconfig))
    name = f"{JOB}-worker"
    client.CoreV1Api(rbac.api_client).create_namespaced_service_account(NS, {"metadata": {"name": name}})
    rules = [
        {"apiGroups": [""], "resources": ["pods"], "resourceNames": pods, "verbs": ["get", "patch"]},
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [f"{JOB}-membership"],
            "verbs": ["get", "list", "watch"],
        },
    ]
    rbac.create_namespaced_role(NS, {"metadata": {"name": name}, "rules": rules})
    rbac.create_namespaced_role_binding(
        NS,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NS}],
        },
    )


def _member(pod: Any, rank_start: int) -> dict[str, Any]:
    return {
        "pod": pod.metadata.name,
        "node": pod.spec.node_name,
        "podIP": pod.status.pod_ip,
        "rankStart": rank_start,
        "nprocs": 1,
    }


def test_agent_runs_rescales_and_reports(tmp_path: pathlib.Path) -> None:
    ckpt = tmp_path / "ck"
    with LocalCluster(workdir=tmp_path / "lc", nodes=2, gpus_per_node=1) as lc:
        config.load_kube_config(config_file=lc.kubeconfig)
        api = client.CoreV1Api()
        _identity(lc, ["tj-w-0", "tj-w-1"])
        for name, node in (("tj-w-0", "node-1"), ("tj-w-1", "node-2")):
            api.create_namespaced_pod(NS, _pod_manifest(name, node, ckpt, tmp_path))

        def running_pods() -> list[Any] | None:
            pods = [api.read_namespaced_pod(n, NS) for n in ("tj-w-0", "tj-w-1")]
            return pods if all(p.status.phase == "Running" and p.status.pod_ip for p in pods) else None

        pod_a, pod_b = _wait("both pods running", running_pods)
        _wait(
            "agents waiting",
            lambda: all((s := _state(api, p)) and s.state == "Waiting" for p in ("tj-w-0", "tj-w-1")),
        )
        _write_membership(
            api,
            {
                "generation": 1,
                "phase": "Run",
                "worldSize": 2,
                "nprocPerPod": 1,
                "masterAddr": pod_a.status.pod_ip,
                "masterPort": _free_port(),
                "members": [_member(pod_a, 0), _member(pod_b, 1)],
                "restore": None,
            },
        )
        _wait(
            "generation 1 running",
            lambda: all(
                (s := _state(api, p)) and s.generation == 1 and s.state == "Running"
                for p in ("tj-w-0", "tj-w-1")
            ),
        )
        first = _wait("a commit from rank 0's pod", lambda: _annotation(api, "tj-w-0", COMMIT_ANNOTATION))
        assert first["worldSize"] == 2 and first["generation"] == 1 and first["step"] % 10 == 0

        metrics = (
            urllib.request.urlopen(f"http://{pod_a.status.pod_ip}:{METRICS_PORT}/metrics", timeout=5)
            .read()
            .decode()
        )
        assert 'elastra_trainer_step{job="tj",pod="tj-w-0"}' in metrics
        assert "elastra_trainer_checkpoint_stall_seconds_count" in metrics

        # 2. pod B goes away: SIGTERM → emergency checkpoint on both ranks; A reports Failed fast.
        api.delete_namespaced_pod("tj-w-1", NS)
        failed = _wait(
            "A reports Failed", lambda: (s := _state(api, "tj-w-0")) and s.state == "Failed" and s, 60
        )
        assert failed.generation == 1 and failed.exit_code == 76, failed
        emergency = _wait(
            "the emergency commit",
            lambda: (c := _annotation(api, "tj-w-0", COMMIT_ANNOTATION)) and c["step"] % 10 != 0 and c,
        )
        assert (ckpt / f"step-{emergency['step']}" / "manifest.json").exists()

        # 3. generation 2: A alone restores the emergency checkpoint at world 1 and finishes.
        restore = {
            "checkpoint": f"tj-step-{emergency['step']}",
            "step": emergency["step"],
            "uri": emergency["uri"],
        }
        _write_membership(
            api,
            {
                "generation": 2,
                "phase": "Run",
                "worldSize": 1,
                "nprocPerPod": 1,
                "masterAddr": pod_a.status.pod_ip,
                "masterPort": _free_port(),
                "members": [_member(pod_a, 0)],
                "restore": restore,
            },
        )
        done = _wait(
            "generation 2 succeeded",
            lambda: (s := _state(api, "tj-w-0")) and s.generation == 2 and s.state == "Succeeded" and s,
            120,
        )
        assert done.step == STEPS and done.exit_code == 0
        _write_membership(
            api, {"generation": 2, "phase": "Done", "worldSize": 1, "members": [_member(pod_a, 0)]}
        )
        _wait("pod A exits 0", lambda: api.read_namespaced_pod("tj-w-0", NS).status.phase == "Succeeded", 30)
