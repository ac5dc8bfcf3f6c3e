"""The control loops of the cluster: the scheduler (binds pending pods) and the node lifecycle
controller (a node whose Lease is older than its grace period turns NotReady, is tainted
unreachable, and its pods' Ready condition turns False). Decisions come from the pure `scheduler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import logging
from collections.abc import Callable
from typing import Any

from localcluster import scheduler
from localcluster.errors import ApiError
from localcluster.store import Store, now_iso
from localcluster.watchlog import StorageKey, WatchEvent

log = logging.getLogger("localcluster.controllers")
UNREACHABLE_TAINTS = [
    {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"},
]


def record_event(
    store: Store,
    involved: dict[str, Any],
    reason: str,
    message: str,
    kind: str = "Normal",
    *,
    component: str = "localcluster",
) -> None:
    """Post a core/v1 Event about an object (best effort, never raises)."""
    meta = involved.get("metadata") or {}
    namespace = meta.get("namespace") or "default"
    try:
        store.create(
            store.type_of("", "v1", "events"),
            namespace,
            {
                "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": namespace},
                "involvedObject": {
                    "kind": involved.get("kind"),
                    "apiVersion": involved.get("apiVersion"),
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "reason": reason,
                "message": message,
                "type": kind,
                "source": {"component": component},
                "firstTimestamp": now_iso(),
                "lastTimestamp": now_iso(),
                "count": 1,
                "reportingComponent": component,
            },
        )
    except ApiError:
        log.debug("could not record event %s for %s", reason, meta.get("name"))


async def run_rounds(wake: asyncio.Event, one_round: Callable[[], None], what: str) -> None:
    """Run `one_round` whenever `wake` is set, and at least every second, forever. A failing round
    is logged and the next one runs: one bad object must not stop a control loop."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), 1.0)
        wake.clear()
        try:
            one_round()
        except Exception:
            log.exception("%s failed", what)


def _parse_time(text: str) -> datetime.datetime:
    text = text.rstrip("Z")
    fmt = "%Y-%m-%dT%H:%M:%S.%f" if "." in text else "%Y-%m-%dT%H:%M:%S"
    return datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC)


class Scheduler:
    """Binds pending pods whenever pods or nodes change (and retries every second)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._wake = asyncio.Event()
        self._last_message: dict[str, str] = {}
        store.listeners.append(self._on_change)

    def _on_change(self, key: StorageKey, event: WatchEvent) -> None:
        if key == ("", "nodes") or (
            key == ("", "pods")
            and (
                event.type != "MODIFIED"
                or not (event.obj.get("spec") or {}).get("nodeName")
                or event.obj.get("status", {}).get("phase") in {"Succeeded", "Failed"}
            )
        ):
            self._wake.set()

    async def run(self) -> None:
        """Schedule forever."""
        await run_rounds(self._wake, self.schedule_pending, "scheduling round")

    def schedule_pending(self) -> None:
        """One round: try every pending, unbound pod once."""
        pods_rt, nodes_rt = self.store.type_of("", "v1", "pods"), self.store.type_of("", "v1", "nodes")
        pods, _ = self.store.list(pods_rt, None)
        nodes, _ = self.store.list(nodes_rt, None)
        by_node: dict[str, list[dict[str, Any]]] = {}
        pending = []
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node:
                if (pod.get("status") or {}).get("phase") not in {"Succeeded", "Failed"}:
                    by_node.setdefault(node, []).append(pod)
            elif (
                not pod["metadata"].get("deletionTimestamp")
                and (pod.get("spec") or {}).get("schedulerName", "default-scheduler") == "default-scheduler"
            ):
                pending.append(pod)
        pending_uids = {pod["metadata"]["uid"] for pod in pending}
        for uid in [uid for uid in self._last_message if uid not in pending_uids]:
            del self._last_message[uid]  # deleted or bound elsewhere: forget it, so the map stays bounded
        for pod in sorted(pending, key=lambda p: p["metadata"]["creationTimestamp"]):
            decision = scheduler.choose_node(pod, nodes, by_node)
            ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
            if decision.node is None:
                if self._last_message.get(pod["metadata"]["uid"]) != decision.message:
                    self._last_message[pod["metadata"]["uid"]] = decision.message
                    status = copy.deepcopy(pod.get("status") or {})
                    status["conditions"] = [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": decision.message,
                            "lastProbeTime": None,
                            "lastTransitionTime": now_iso(),
                        }
                    ]
                    self.store.update(pods_rt, ns, name, {**pod, "status": status}, subresource="status")
                    record_event(
                        self.store,
                        pod,
                        "FailedScheduling",
                        decision.message,
                        "Warning",
                        component="default-scheduler",
                    )
                continue
            bound = {**pod, "spec": {**pod["spec"], "nodeName": decision.node}}
            self.store.update(pods_rt, ns, name, bound, subresource="binding")
            by_node.setdefault(decision.node, []).append(bound)
            record_event(
                self.store,
                pod,
                "Scheduled",
                f"Successfully assigned {ns}/{name} to {decision.node}",
                "Normal",
                component="default-scheduler",
            )


class NodeLifecycle:
    """Marks nodes NotReady (Ready=Unknown) when their Lease is older than `grace_s`."""

    def __init__(self, store: Store, *, grace_s: float) -> None:
        self.store = store
        self.grace_s = grace_s

    async def run(self) -> None:
        """Check forever, several times per grace period."""
        while True:
            await asyncio.sleep(max(0.2, min(1.0, self.grace_s / 4)))
            try:
                self.check()
            except Exception:
                log.exception("node lifecycle check failed")

    def check(self) -> None:
        """One pass over all nodes."""
        nodes_rt = self.store.type_of("", "v1", "nodes")
        leases_rt = self.store.type_of("coordination.k8s.io", "v1", "leases")
        now = datetime.datetime.now(datetime.UTC)
        for node in self.store.list(nodes_rt, None)[0]:
            name = node["metadata"]["name"]
            try:
                lease = self.store.get(leases_rt, "kube-node-lease", name)
                renewed = _parse_time(lease["spec"]["renewTime"])
            except (ApiError, KeyError):
                renewed = _parse_time(node["metadata"]["creationTimestamp"])
            if (now - renewed).total_seconds() <= self.grace_s:
                continue
            ready: dict[str, Any] = next(
                (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                {},
            )
            if ready.get("status") == "Unknown":
                continue
            self.mark_not_ready(node)

    def mark_not_ready(self, node: dict[str, Any]) -> None:
        """Ready -> Unknown, unreachable taints, and Ready=False on the node's pods."""
        nodes_rt, pods_rt = self.store.type_of("", "v1", "nodes"), self.store.type_of("", "v1", "pods")
        name, now = node["metadata"]["name"], now_iso()
        status = copy.deepcopy(node.get("status") or {})
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        status["conditions"] = [
            *others,
            {
                "type": "Ready",
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            },
        ]
        self.store.update(nodes_rt, "", name, {**node, "status": status}, subresource="status")
        fresh = self.store.get(nodes_rt, "", name)
        taints = [
            t
            for t in (fresh.get("spec") or {}).get("taints") or []
            if t.get("key") != "node.kubernetes.io/unreachable"
        ]
        self.store.update(
            nodes_rt,
            "",
            name,
            {
                **fresh,
                "spec": {
                    **fresh.get("spec", {}),
                    "taints": taints + [{**t, "timeAdded": now} for t in UNREACHABLE_TAINTS],
                },
            },
        )
        record_event(
            self.store,
            fresh,
            "NodeNotReady",
            f"Node {name} status is now: NodeNotReady",
            "Normal",
            component="node-controller",
        )
        for pod in self.store.list(pods_rt, None)[0]:
            if (pod.get("spec") or {}).get("nodeName") != name:
                continue
            pod_status = copy.deepcopy(pod.get("status") or {})
            conditions = [c for c in pod_status.get("conditions") or [] if c.get("type") != "Ready"]
            pod_status["conditions"] = [
                *conditions,
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "NodeNotReady",
                    "lastProbeTime": None,
                    "lastTransitionTime": now,
                },
            ]
            for cs in pod_status.get("containerStatuses") or []:
                cs["ready"] = False
            self.store.update(
                pods_rt,
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                {**pod, "status": pod_status},
                subresource="status",
            )
            record_event(
                self.store, pod, "NodeNotReady", "Node is not ready", "Warning", component="node-controller"
            )
