"""Pure builders of the objects the operator creates (worker pods, the headless Service, Checkpoints),
and where a worker pod of the template fits."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from elastra.api import API_VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import JOB_LABEL, ROLE_LABEL, CommitReport

from .views import JobView, NodeView

FINALIZER = "elastra.dev/finalizer"
"""The operator's finalizer (Kopf's, renamed). Every Checkpoint is created with it: storage goes first."""
GPU = "nvidia.com/gpu"
MASTER_PORT = 29500
"""The lowest rendezvous port; generation `g` of a job uses `generations.rendezvous_port(uid, g)`."""
LOCAL_VOLUME = "elastra-local"


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


def _env(job: JobView, name: str) -> list[dict[str, Any]]:
    spec = job.spec
    assert spec is not None
    ck = spec.checkpoint
    env: list[dict[str, Any]] = [
        {"name": "ELASTRA_JOB", "value": job.name},
        {"name": "POD_NAME", "value": name},
        {"name": "POD_NAMESPACE", "value": job.namespace},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "ELASTRA_CHECKPOINT_URI", "value": ck.root_uri(job.namespace, job.name)},
        {"name": "ELASTRA_NPROC_PER_POD", "value": str(spec.nproc_per_pod)},
        {"name": "ELASTRA_CHECKPOINT_KEEP", "value": str(ck.keep)},
    ]
    if ck.every_steps is not None:
        env.append({"name": "ELASTRA_CHECKPOINT_EVERY_STEPS", "value": str(ck.every_steps)})
    if ck.every_seconds is not None:
        env.append({"name": "ELASTRA_CHECKPOINT_EVERY_SECONDS", "value": str(ck.every_seconds)})
    if ck.local is not None:
        env.append({"name": "ELASTRA_LOCAL_DIR", "value": ck.local.path})
        env.append({"name": "ELASTRA_LOCAL_KEEP", "value": str(ck.local.keep)})
    if ck.s3 is not None:
        env.append({"name": "AWS_REGION", "value": ck.s3.region})
        if ck.s3.endpoint:
            env.append({"name": "AWS_ENDPOINT_URL_S3", "value": ck.s3.endpoint})
        if ck.s3.credentials_secret:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                ref = {"name": ck.s3.credentials_secret, "key": key}
                env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def worker_pod(job: JobView, index: int) -> dict[str, Any]:
    """The pod for worker `index`: the user's template plus identity, anti-affinity and tiers."""
    spec = job.spec
    assert spec is not None
    name = pod_name(job.name, index)
    template = copy.deepcopy(spec.template)
    meta = template.get("metadata", {}) or {}
    pod_spec: dict[str, Any] = template.get("spec", {}) or {}
    pod_spec["restartPolicy"] = "Never"  # the agent restarts workers in place; a dead pod is a failure
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
    env = _env(job, name)
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    env.append({"name": "ELASTRA_TERMINATION_GRACE_SECONDS", "value": str(grace)})
    local = spec.checkpoint.local
    if local is not None:
        volumes = pod_spec.setdefault("volumes", [])
        volumes.append({"name": LOCAL_VOLUME, "hostPath": {"path": local.path, "type": "DirectoryOrCreate"}})
    for container in pod_spec.get("containers", []):
        container["env"] = [*container.get("env", []), *env]
        if local is not None:
            mount = {"name": LOCAL_VOLUME, "mountPath": local.path}
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
