"""A minimal Deployment controller: `spec.replicas` pods from `spec.template`, owned by the Deployment.

Simpler than the real one (Deployment -> ReplicaSet -> Pods): pods are owned by the Deployment itself
and labelled with the template's labels plus `pod-template-hash`; a deleted or finished pod is
replaced; a template change replaces every pod at once (like `strategy: Recreate`); status reports
replicas, updatedReplicas, readyReplicas, availableReplicas, observedGeneration and an Available
condition. Not emulated: ReplicaSets, rolling-update surge/unavailability, minReadySeconds, paused,
revision history. `plan` decides (no I/O); `DeploymentController` applies it on the store's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from localcluster.controllers import run_rounds
from localcluster.errors import ApiError
from localcluster.store import Store, now_iso
from localcluster.watchlog import StorageKey, WatchEvent

log = logging.getLogger("localcluster.deployments")
HASH_LABEL = "pod-template-hash"


@dataclass(frozen=True, slots=True)
class DeploymentPlan:
    """What one reconcile pass of one Deployment does."""

    create: tuple[dict[str, Any], ...]
    """Pod manifests to create."""
    delete: tuple[str, ...]
    """Names of pods to delete (surplus or from an old template)."""
    status: dict[str, Any]
    """The Deployment's status after this pass."""


def template_hash(template: dict[str, Any]) -> str:
    """A short, stable hash of a pod template (the `pod-template-hash` label)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _is_active(pod: dict[str, Any]) -> bool:
    finished = (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}
    return not finished and not pod["metadata"].get("deletionTimestamp")


def owned_by(pod: dict[str, Any], uid: str) -> bool:
    """Whether a pod's controller owner reference names this uid."""
    refs = pod["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


def pod_manifest(deployment: dict[str, Any], pod_hash: str) -> dict[str, Any]:
    """A new pod for a Deployment: its template, labelled and owned."""
    meta = deployment["metadata"]
    template = copy.deepcopy((deployment.get("spec") or {}).get("template") or {})
    template_meta = template.get("metadata") or {}
    labels = {**(template_meta.get("labels") or {}), HASH_LABEL: pod_hash}
    owner = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    pod_meta: dict[str, Any] = {
        "generateName": f"{meta['name']}-{pod_hash}-",
        "namespace": meta["namespace"],
        "labels": labels,
        "ownerReferences": [owner],
    }
    if template_meta.get("annotations"):
        pod_meta["annotations"] = dict(template_meta["annotations"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": template.get("spec") or {}}


def plan(deployment: dict[str, Any], pods: list[dict[str, Any]]) -> DeploymentPlan:
    """The pods to create and delete, and the status, for one Deployment given every pod of its
    namespace. Pure but for the clock: a changed Available condition is stamped with the time now."""
    spec = deployment.get("spec") or {}
    wanted = int(spec.get("replicas", 1))
    pod_hash = template_hash(spec.get("template") or {})
    owned = [p for p in pods if owned_by(p, deployment["metadata"]["uid"]) and _is_active(p)]
    current = [p for p in owned if (p["metadata"].get("labels") or {}).get(HASH_LABEL) == pod_hash]
    stale = [p for p in owned if p not in current]
    # surplus: keep ready and older pods, drop the newest not-ready ones first
    current.sort(key=lambda p: (not _is_ready(p), p["metadata"].get("creationTimestamp", "")))
    surplus = current[wanted:]
    kept = current[:wanted]
    create = tuple(pod_manifest(deployment, pod_hash) for _ in range(wanted - len(kept)))
    delete = tuple(p["metadata"]["name"] for p in [*stale, *surplus])
    ready = sum(1 for p in kept if _is_ready(p))
    available = ready >= wanted
    status = {
        "observedGeneration": deployment["metadata"].get("generation", 1),
        "replicas": len(kept) + len(create),
        "updatedReplicas": len(kept) + len(create),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "unavailableReplicas": max(0, wanted - ready),
        "conditions": [_available_condition(deployment, available)],
    }
    if ready == 0:  # the real controller omits zero counts
        del status["readyReplicas"], status["availableReplicas"]
    if status["unavailableReplicas"] == 0:
        del status["unavailableReplicas"]
    return DeploymentPlan(create=create, delete=delete, status=status)


def _available_condition(deployment: dict[str, Any], available: bool) -> dict[str, Any]:
    before = next(
        (c for c in (deployment.get("status") or {}).get("conditions") or [] if c.get("type") == "Available"),
        None,
    )
    value = "True" if available else "False"
    changed = before is None or before.get("status") != value
    return {
        "type": "Available",
        "status": value,
        "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        "message": "Deployment has minimum availability."
        if available
        else "Deployment does not have minimum availability.",
        "lastUpdateTime": now_iso() if changed else before["lastUpdateTime"],  # type: ignore[index]
        "lastTransitionTime": now_iso() if changed else before["lastTransitionTime"],  # type: ignore[index]
    }


class DeploymentController:
    """Reconciles every Deployment whenever a Deployment or a pod changes (and every second)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._wake = asyncio.Event()
        store.listeners.append(self._on_change)

    def _on_change(self, key: StorageKey, event: WatchEvent) -> None:
        if key == ("apps", "deployments") or (
            key == ("", "pods") and (event.obj["metadata"].get("ownerReferences") or event.old)
        ):
            self._wake.set()

    async def run(self) -> None:
        """Reconcile forever."""
        await run_rounds(self._wake, self.reconcile_all, "deployment round")

    def reconcile_all(self) -> None:
        """One pass over every Deployment."""
        deployments_rt = self.store.type_of("apps", "v1", "deployments")
        pods_rt = self.store.type_of("", "v1", "pods")
        deployments, _ = self.store.list(deployments_rt, None)
        for deployment in deployments:
            meta = deployment["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            pods, _ = self.store.list(pods_rt, meta["namespace"])
            step = plan(deployment, pods)
            for name in step.delete:
                with contextlib.suppress(ApiError):
                    self.store.delete(pods_rt, meta["namespace"], name)
            for manifest in step.create:
                try:
                    self.store.create(pods_rt, meta["namespace"], manifest)
                except ApiError as exc:
                    log.warning(
                        "deployment %s/%s: cannot create a pod: %s", meta["namespace"], meta["name"], exc
                    )
            if step.status != deployment.get("status"):
                with contextlib.suppress(ApiError):
                    self.store.update(
                        deployments_rt,
                        meta["namespace"],
                        meta["name"],
                        {**deployment, "status": step.status},
                        subresource="status",
                    )
