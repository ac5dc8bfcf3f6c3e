"""Pure builders of the objects the operator creates (worker pods, the headless Service, Checkpoints),
and where a worker pod of the template fits."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from elastra.api import API_VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import JOB_LABEL, ROLE_LABEL, CommitReport, membership_configmap_name
from elastra.api.pod import MEMORY_PATH, PodContract

from .facts import HEARTBEAT_FRACTION, silence_timeout
from .views import JobView, NodeView

FINALIZER = "elastra.dev/finalizer"
"""The operator's finalizer (Kopf's, renamed). Every Checkpoint is created with it: storage goes first."""
GPU = "nvidia.com/gpu"
MASTER_PORT = 29500
"""The lowest rendezvous port; generation `g` of a job uses `generations.rendezvous_port(uid, g)`."""
LOCAL_VOLUME = "elastra-local"
MEMORY_VOLUME = "elastra-memory"


def pod_name(job: str, index: int) -> str:
    """Deterministic worker pod names, so a second operator pass creates nothing twice."""
    return f"{job}-w-{index}"


def pod_index(job: str, name: str) -> int | None:
    """Inverse of `pod_name` (None for foreign names)."""
    prefix = f"{job}-w-"
    tail = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def owner_reference(job: JobView) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": tj_api.KIND,
        "name": job.name,
        "uid": job.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(job: JobView, role: str) -> dict[str, str]:
    return {JOB_LABEL: job.name, ROLE_LABEL: role}


def gpu_request(template: dict[str, Any]) -> int:
    """GPUs one pod asks for (limits or requests of its containers)."""
    total = 0
    for container in template.get("spec", {}).get("containers", []) or []:
        resources = container.get("resources", {}) or {}
        value = (resources.get("limits", {}) or {}).get(GPU) or (resources.get("requests", {}) or {}).get(GPU)
        total += int(value or 0)
    return total


def tolerates(template: dict[str, Any], taint: tuple[str, str, str]) -> bool:
    """Pure: whether the pod template tolerates a node taint (Kubernetes toleration matching)."""
    key, value, effect = taint
    for tol in (template.get("spec") or {}).get("tolerations") or []:
        if tol.get("effect") and tol["effect"] != effect:
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == key:
                return True
        elif tol.get("key") == key and (tol.get("value") or "") == value:
            return True
    return False


def free_nodes(template: dict[str, Any], nodes: Iterable[NodeView], occupied: set[str]) -> list[NodeView]:
    """The nodes a new worker pod of `template` could run on: ready, schedulable, not `occupied` by a
    worker of the job, matching its nodeSelector, with the GPUs it asks for, every taint tolerated."""
    gpus = gpu_request(template)
    selector = (template.get("spec") or {}).get("nodeSelector") or {}
    return [
        n
        for n in nodes
        if n.ready
        and not n.unschedulable
        and n.name not in occupied
        and all(n.labels.get(k) == v for k, v in selector.items())
        and n.gpus >= gpus
        and all(tolerates(template, taint) for taint in n.taints)
    ]


def report_interval(spec: tj_api.TrainingJobSpec) -> float:
    """Longest gap between two agent reports: a quarter of the silence timeout (7.5 s at the default
    30 s), so a loss is four missed heartbeats. Every member heartbeats, so this sets the API write
    rate of a job's agents: members / interval (a 3 s cap made it 170 patches/s for 512 pods, and as
    many pod events for the operator, for no earlier detection)."""
    return silence_timeout(spec) / HEARTBEAT_FRACTION


def local_host_path(job: JobView) -> str:
    """The node folder of the job's local tier: `<local.path>/<namespace>/<job>-<uid>`. Pods see it at
    `local.path` and nothing beside it, so one job's retention can never touch another's steps (a job
    recreated under the same name gets a new uid, hence a new folder)."""
    assert job.spec is not None and job.spec.checkpoint.local is not None
    return f"{job.spec.checkpoint.local.path.rstrip('/')}/{job.namespace}/{job.name}-{job.uid}"


def worker_pod(job: JobView, index: int) -> dict[str, Any]:
    """The pod for worker `index`: the user's template plus identity, anti-affinity and tiers."""
    spec = job.spec
    assert spec is not None
    name = pod_name(job.name, index)
    template = copy.deepcopy(spec.template)
    meta = template.get("metadata", {}) or {}
    pod_spec: dict[str, Any] = template.get("spec", {}) or {}
    pod_spec["restartPolicy"] = "Never"  # the agent restarts workers in place; a dead pod is a failure
    # The job's own identity, unless the template names one (e.g. for cloud IAM): that account then
    # needs what the job's Role grants (`worker_identity`).
    pod_spec.setdefault("serviceAccountName", worker_service_account(job.name))
    pod_spec.pop("automountServiceAccountToken", None)  # the agent reports through the token
    pod_spec["hostname"] = name
    pod_spec["subdomain"] = job.name
    pod_spec.setdefault(
        "affinity",
        {
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "labelSelector": {"matchLabels": {JOB_LABEL: job.name}},
                        "topologyKey": "kubernetes.io/hostname",
                    }
                ]
            }
        },
    )
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    contract = PodContract.from_spec(
        namespace=job.namespace,
        job=job.name,
        pod=name,
        spec=spec,
        grace_seconds=grace,
        report_interval_seconds=report_interval(spec),
    )
    env = contract.to_env()
    local = spec.checkpoint.local
    if local is not None:
        volumes = pod_spec.setdefault("volumes", [])
        host = {"path": local_host_path(job), "type": "DirectoryOrCreate"}
        volumes.append({"name": LOCAL_VOLUME, "hostPath": host})
    memory = spec.checkpoint.memory
    if memory is not None:  # tmpfs, counted against the pod's memory; the cap is its size limit
        empty_dir: dict[str, Any] = {"medium": "Memory"}
        if memory.max_bytes_per_pod is not None:
            empty_dir["sizeLimit"] = str(memory.max_bytes_per_pod)
        pod_spec.setdefault("volumes", []).append({"name": MEMORY_VOLUME, "emptyDir": empty_dir})
    for container in pod_spec.get("containers", []):
        container["env"] = [*container.get("env", []), *env]
        if local is not None:
            mount = {"name": LOCAL_VOLUME, "mountPath": local.path}
            container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
        if memory is not None:
            mount = {"name": MEMORY_VOLUME, "mountPath": MEMORY_PATH}
            container["volumeMounts"] = [*container.get("volumeMounts", []), mount]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": job.namespace,
            "labels": {**(meta.get("labels") or {}), **labels(job, "worker")},
            "annotations": dict(meta.get("annotations") or {}),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": pod_spec,
    }


def worker_service_account(job: str) -> str:
    """The ServiceAccount (and Role, RoleBinding) every worker pod of `job` runs as."""
    return f"{job}-worker"


def identity_names(job: str, highest_index: int, replicas_max: int) -> list[str]:
    """The pod names the job's Role covers: every index up to the highest in use, and at least twice
    `replicas.max` (a failed member's index stays taken for a generation), so it rarely changes."""
    top = max(highest_index + 1, 2 * replicas_max + 2)
    return [pod_name(job, i) for i in range(top)]


def worker_identity(job: JobView, pod_names: list[str]) -> list[dict[str, Any]]:
    """The ServiceAccount, Role and RoleBinding of the job's worker pods. The Role reaches only this
    job's objects: get and patch its own worker pods (the agent's reports are annotations on them) and
    read its membership record. Nothing else: no other job's pods, no Secrets."""
    name = worker_service_account(job.name)
    meta = {
        "name": name,
        "namespace": job.namespace,
        "labels": labels(job, "identity"),
        "ownerReferences": [owner_reference(job)],
    }
    rbac = "rbac.authorization.k8s.io/v1"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": copy.deepcopy(meta)},
        {
            "apiVersion": rbac,
            "kind": "Role",
            "metadata": copy.deepcopy(meta),
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods"],
                    "resourceNames": pod_names,
                    "verbs": ["get", "patch"],
                },
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [membership_configmap_name(job.name)],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        {
            "apiVersion": rbac,
            "kind": "RoleBinding",
            "metadata": copy.deepcopy(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": job.namespace}],
        },
    ]


def headless_service(job: JobView) -> dict[str, Any]:
    """The headless Service giving every worker a stable DNS name."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": job.name,
            "namespace": job.namespace,
            "labels": labels(job, "service"),
            "ownerReferences": [owner_reference(job)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": labels(job, "worker"),
            # No ports: a headless Service only names the workers in DNS, and the rendezvous port
            # changes with every generation (`generations.rendezvous_port`).
        },
    }


def checkpoint_object(job: JobView, commit: CommitReport) -> dict[str, Any]:
    """The Checkpoint object for one commit, with its finalizer already on (no window to leak storage)."""
    spec = job.spec
    assert spec is not None
    storage: dict[str, Any] | None = None
    if spec.checkpoint.s3 is not None:
        s3 = spec.checkpoint.s3
        storage = ckpt_api.StorageAccess(
            endpoint=s3.endpoint, region=s3.region, credentials_secret=s3.credentials_secret
        ).model_dump(by_alias=True, exclude_none=True)
    local_root = spec.checkpoint.local.path if spec.checkpoint.local else None
    tiers = [
        {"name": tier, "uri": commit.uri if tier != "local" or local_root is None else local_root}
        for tier in commit.tiers
    ]
    body = ckpt_api.CheckpointSpec.model_validate(
        {
            "job": job.name,
            "step": commit.step,
            "worldSize": commit.world_size,
            "formatVersion": commit.format_version,
            "generation": commit.generation,
            "uri": commit.uri,
            "tiers": tiers,
            "bytes": commit.bytes,
            "manifestDigest": commit.manifest_digest,
            "committedAt": commit.time,
            "storage": storage,
            "loss": commit.loss,
        }
    )
    return {
        "apiVersion": API_VERSION,
        "kind": ckpt_api.KIND,
        "metadata": {
            "name": ckpt_api.checkpoint_name(job.name, commit.step),
            "namespace": job.namespace,
            "labels": labels(job, "checkpoint"),
            "finalizers": [FINALIZER],
            "ownerReferences": [owner_reference(job)],
        },
        "spec": body.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
