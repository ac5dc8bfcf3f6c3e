"""Scheduling decisions: which Ready, schedulable node fits a pending pod. Pure: no I/O.

Honours resource requests against allocatable (cpu, memory, `nvidia.com/gpu` and any other extended
resource), nodeSelector, required node affinity, taints/tolerations and required pod anti-affinity on
`kubernetes.io/hostname`. Among fitting nodes it picks the one with the fewest pods, then by name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localcluster.selectors import SelectorError, match_label_selector_object

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50,
}  # fmt: skip


def quantity(value: str | int | float) -> float:
    """Parse a Kubernetes quantity: `500m`, `2`, `1Gi`, `128974848`, `1e3`."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    match = _QUANTITY.match(text)
    if not match or match.group(2) not in _SUFFIX:
        raise ValueError(f"invalid quantity {value!r}")
    return float(match.group(1)) * _SUFFIX[match.group(2)]


def pod_requests(pod: dict[str, Any]) -> dict[str, float]:
    """Summed container requests (limits stand in for missing requests, as in Kubernetes)."""
    total: dict[str, float] = {"pods": 1.0}
    for container in (pod.get("spec") or {}).get("containers") or []:
        res = container.get("resources") or {}
        wanted = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for name, amount in wanted.items():
            total[name] = total.get(name, 0.0) + quantity(amount)
    return total


def is_ready(node: dict[str, Any]) -> bool:
    """Whether the node's Ready condition is True."""
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def tolerates(tolerations: list[dict[str, Any]], taint: dict[str, Any]) -> bool:
    """Whether any toleration matches a taint."""
    for tol in tolerations:
        if tol.get("effect") and tol["effect"] != taint.get("effect"):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol["key"] == taint.get("key"):
                return True
        elif tol.get("key") == taint.get("key") and tol.get("value", "") == taint.get("value", ""):
            return True
    return False


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one pod."""

    node: str | None
    """Chosen node, or None when nothing fits."""
    message: str
    """Why not, in the style of `0/4 nodes are available: ...` (empty when bound)."""


def _affinity_terms(pod: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get(kind) or {}
    return list(affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or [])


def _node_affinity_ok(pod: dict[str, Any], labels: dict[str, str]) -> bool:
    required = (((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    for term in required.get("nodeSelectorTerms") or []:
        try:
            if match_label_selector_object({"matchExpressions": term.get("matchExpressions") or []}, labels):
                return True
        except SelectorError:
            continue
    return False


def _anti_affinity_ok(
    pod: dict[str, Any],
    node: dict[str, Any],
    pods_by_node: dict[str, list[dict[str, Any]]],
    domain_nodes: Callable[[str, str], list[str]],
) -> bool:
    namespace = pod["metadata"].get("namespace", "default")
    for term in _affinity_terms(pod, "podAntiAffinity"):
        key = term.get("topologyKey", "kubernetes.io/hostname")
        domain = (node["metadata"].get("labels") or {}).get(key)
        if domain is None:
            continue
        namespaces = set(term.get("namespaces") or [namespace])
        for other_node in domain_nodes(key, domain):
            for other in pods_by_node.get(other_node, []):
                if other["metadata"].get("namespace") in namespaces and match_label_selector_object(
                    term.get("labelSelector") or {}, other["metadata"].get("labels")
                ):
                    return False
    return True


def _domain_index(nodes: list[dict[str, Any]]) -> Callable[[str, str], list[str]]:
    """(topology key, domain) -> names of the nodes in that domain; each key's index is built once, so
    anti-affinity costs the nodes of one domain, not a scan of every node per candidate."""
    index: dict[str, dict[str, list[str]]] = {}

    def lookup(key: str, domain: str) -> list[str]:
        if key not in index:
            by_domain: dict[str, list[str]] = {}
            for node in nodes:
                value = (node["metadata"].get("labels") or {}).get(key)
                if value is not None:
                    by_domain.setdefault(value, []).append(node["metadata"]["name"])
            index[key] = by_domain
        return index[key].get(domain, [])

    return lookup


def choose_node(
    pod: dict[str, Any], nodes: list[dict[str, Any]], pods_by_node: dict[str, list[dict[str, Any]]]
) -> Decision:
    """Pick a node for a pending pod. `pods_by_node` holds the non-terminated pods bound to each node."""
    spec = pod.get("spec") or {}
    wanted = pod_requests(pod)
    reasons: dict[str, int] = {}
    fitting: list[tuple[int, str]] = []
    domain_nodes = _domain_index(nodes)

    def reject(reason: str) -> None:
        reasons[reason] = reasons.get(reason, 0) + 1

    for node in nodes:
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        node_spec = node.get("spec") or {}
        if not is_ready(node):
            reject("node(s) were not ready")
            continue
        if node_spec.get("unschedulable"):
            reject("node(s) were unschedulable")
            continue
        taints = [t for t in node_spec.get("taints") or [] if t.get("effect") in {"NoSchedule", "NoExecute"}]
        if any(not tolerates(spec.get("tolerations") or [], t) for t in taints):
            reject("node(s) had untolerated taint(s)")
            continue
        if any(
            labels.get(k) != v for k, v in (spec.get("nodeSelector") or {}).items()
        ) or not _node_affinity_ok(pod, labels):
            reject("node(s) didn't match Pod's node affinity/selector")
            continue
        allocatable = {
            k: quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()
        }
        used: dict[str, float] = {}
        for other in pods_by_node.get(name, []):
            for res, amount in pod_requests(other).items():
                used[res] = used.get(res, 0.0) + amount
        short = [
            res
            for res, amount in wanted.items()
            if used.get(res, 0.0) + amount > allocatable.get(res, 0.0 if res != "pods" else 110.0) + 1e-9
        ]
        if short:
            for res in short:
                reject(f"Insufficient {res}")
            continue
        if not _anti_affinity_ok(pod, node, pods_by_node, domain_nodes):
            reject("node(s) didn't match pod anti-affinity rules")
            continue
        fitting.append((len(pods_by_node.get(name, [])), name))
    if fitting:
        return Decision(min(fitting)[1], "")
    detail = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items()))
    return Decision(
        None,
        f"0/{len(nodes)} nodes are available: {detail}." if nodes else "no nodes available to schedule pods",
    )
