"""The columns a real kube-apiserver prints for built-in kinds (its `pkg/printers/internalversion`). Pure.

Each printer gives every column, wide ones included (priority 1), as the real server does: kubectl
hides priority-1 columns unless asked for `-o wide`.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Cells = Callable[[dict[str, Any], datetime.datetime], list[Any]]


@dataclass(frozen=True, slots=True)
class Column:
    """One column definition of a Table."""

    name: str
    """The header, as the real server spells it (kubectl upper-cases it)."""
    type: str = "string"
    """The OpenAPI type of the cells: `string` or `integer`."""
    priority: int = 0
    """0: always shown; 1: only with `-o wide`."""

    def definition(self) -> dict[str, Any]:
        """The `columnDefinitions` entry."""
        return {
            "name": self.name,
            "type": self.type,
            "format": "name" if self.name == "Name" else "",
            "description": self.name,
            "priority": self.priority,
        }


@dataclass(frozen=True, slots=True)
class Printer:
    """The columns of one kind and how to fill a row from an object."""

    columns: tuple[Column, ...]
    """Column definitions, in the real server's order."""
    cells: Cells
    """One row's cells for an object, given the current time; as many as there are columns."""


def human_age(timestamp: str | None, now: datetime.datetime) -> str:  # noqa: PLR0911 - one per unit
    """Like kubectl's HumanDuration: `45s`, `3m12s`, `25m`, `5h3m`, `17h`, `3d4h`, `9d`, `2y10d`."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    if days < 365 * 2:
        return f"{days}d"
    if days < 365 * 8:
        return f"{days // 365}y{days % 365}d" if days % 365 else f"{days // 365}y"
    return f"{days // 365}y"


def _age(obj: dict[str, Any], now: datetime.datetime) -> str:
    return human_age(obj["metadata"].get("creationTimestamp"), now)


def _section(obj: dict[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name)
    return value if isinstance(value, dict) else {}


def format_labels(labels: dict[str, str] | None) -> str:
    """`a=1,b=2` sorted by key, `<none>` when empty (as `labels.FormatLabels`)."""
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "<none>"


def format_label_selector(selector: dict[str, Any] | None) -> str:
    """A LabelSelector as its selector string (`app=x,tier in (a,b),!gone`), sorted by key."""
    selector = selector or {}
    parts: list[tuple[str, str]] = [(k, f"{k}={v}") for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), sorted(expr.get("values") or [])
        text = {
            "In": f"{key} in ({','.join(values)})",
            "NotIn": f"{key} notin ({','.join(values)})",
            "Exists": key,
            "DoesNotExist": f"!{key}",
        }.get(op, f"{key} {op}")
        parts.append((key, text))
    return ",".join(text for _, text in sorted(parts))


def _pod_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    spec, status, meta = _section(obj, "spec"), _section(obj, "status"), obj["metadata"]
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    total = len(spec.get("containers") or [])
    phase = status.get("phase", "Pending")
    reason = phase
    for cs in statuses:
        state = cs.get("state") or {}
        if "waiting" in state:
            reason = state["waiting"].get("reason") or reason
        elif "terminated" in state and phase not in {"Running"}:
            reason = state["terminated"].get("reason") or reason
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [
        meta["name"],
        f"{ready}/{total}",
        reason,
        restarts,
        _age(obj, now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _node_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    status = _section(obj, "status")
    conditions = status.get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if _section(obj, "spec").get("unschedulable"):
        state += ",SchedulingDisabled"
    version = (status.get("nodeInfo") or {}).get("kubeletVersion", "")
    return [obj["metadata"]["name"], state, "<none>", _age(obj, now), version]


def _core_event(obj: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event in core/v1 field names (core/v1 Events pass through)."""
    if "regarding" not in obj and "note" not in obj:
        return obj
    renamed = {
        "regarding": "involvedObject",
        "note": "message",
        "deprecatedFirstTimestamp": "firstTimestamp",
        "deprecatedLastTimestamp": "lastTimestamp",
        "deprecatedCount": "count",
        "deprecatedSource": "source",
    }
    return {renamed.get(k, k): v for k, v in obj.items()}


def _event_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    event = _core_event(obj)
    first_at = event.get("firstTimestamp") or event.get("eventTime")
    first_seen = human_age(first_at, now)
    last_seen = human_age(event["lastTimestamp"], now) if event.get("lastTimestamp") else first_seen
    count = int(event.get("count") or 0)
    series = _section(event, "series")
    if series:
        last_seen = human_age(series.get("lastObservedTime"), now)
        count = int(series.get("count") or 0)
    elif count == 0:
        count = 1  # singleton events carry no count in the new API
    involved = _section(event, "involvedObject")
    kind = str(involved.get("kind", "")).lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    source = _section(event, "source")
    component = source.get("component") or event.get("reportingController") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    return [
        last_seen,
        event.get("type", ""),
        event.get("reason", ""),
        target,
        involved.get("fieldPath", ""),
        f"{component}, {instance}" if instance else component,
        str(event.get("message", "")).strip(),
        first_seen,
        count,
        event["metadata"]["name"],
    ]


def _port_string(ports: list[dict[str, Any]]) -> str:
    pieces = []
    for port in ports:
        protocol = port.get("protocol") or "TCP"
        node_port = f":{port['nodePort']}" if port.get("nodePort") else ""
        pieces.append(f"{port.get('port', 0)}{node_port}/{protocol}")
    return ",".join(pieces) or "<none>"


def _service_external_ip(spec: dict[str, Any], status: dict[str, Any]) -> str:
    kind = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in spec.get("externalIPs") or []]
    if kind in {"ClusterIP", "NodePort"}:
        return ",".join(external) or "<none>"
    if kind == "LoadBalancer":
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        balancers = [
            str(i.get("ip") or i.get("hostname")) for i in ingress if i.get("ip") or i.get("hostname")
        ]
        return ",".join(balancers + external) or "<pending>"
    if kind == "ExternalName":
        return str(spec.get("externalName", ""))
    return "<unknown>"


def _service_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    spec = _section(obj, "spec")
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [
        obj["metadata"]["name"],
        spec.get("type") or "ClusterIP",
        cluster_ips[0] if cluster_ips else "<none>",
        _service_external_ip(spec, _section(obj, "status")),
        _port_string(spec.get("ports") or []),
        _age(obj, now),
        format_labels(spec.get("selector")),
    ]


def _configmap_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    data = len(obj.get("data") or {}) + len(obj.get("binaryData") or {})
    return [obj["metadata"]["name"], data, _age(obj, now)]


def _secret_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    data = len(obj.get("data") or {})
    return [obj["metadata"]["name"], obj.get("type") or "Opaque", data, _age(obj, now)]


def _deployment_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    spec, status = _section(obj, "spec"), _section(obj, "status")
    desired = spec.get("replicas", 1)
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or []
    return [
        obj["metadata"]["name"],
        f"{status.get('readyReplicas', 0)}/{desired}",
        int(status.get("updatedReplicas", 0)),
        int(status.get("availableReplicas", 0)),
        _age(obj, now),
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
        format_label_selector(spec.get("selector")),
    ]


def _namespace_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    return [obj["metadata"]["name"], _section(obj, "status").get("phase") or "Active", _age(obj, now)]


def _lease_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    return [obj["metadata"]["name"], _section(obj, "spec").get("holderIdentity") or "", _age(obj, now)]


def _serviceaccount_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    return [obj["metadata"]["name"], len(obj.get("secrets") or []), _age(obj, now)]


def _columns(*specs: str | tuple[str, str, int]) -> tuple[Column, ...]:
    """`"Name"` for an always-shown string column, `(name, type, priority)` otherwise."""
    return tuple(Column(s) if isinstance(s, str) else Column(*s) for s in specs)


_EVENT = Printer(
    _columns(
        "Last Seen",
        "Type",
        "Reason",
        "Object",
        ("Subobject", "string", 1),
        ("Source", "string", 1),
        "Message",
        ("First Seen", "string", 1),
        ("Count", "string", 1),
        ("Name", "string", 1),
    ),
    _event_cells,
)

PRINTERS: dict[tuple[str, str], Printer] = {
    ("", "Pod"): Printer(
        _columns("Name", "Ready", "Status", "Restarts", "Age", ("IP", "string", 1), ("Node", "string", 1)),
        _pod_cells,
    ),
    ("", "Node"): Printer(_columns("Name", "Status", "Roles", "Age", "Version"), _node_cells),
    ("", "Event"): _EVENT,
    ("events.k8s.io", "Event"): _EVENT,
    ("", "Service"): Printer(
        _columns("Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", ("Selector", "string", 1)),
        _service_cells,
    ),
    ("", "ConfigMap"): Printer(_columns("Name", "Data", "Age"), _configmap_cells),
    ("", "Secret"): Printer(_columns("Name", "Type", "Data", "Age"), _secret_cells),
    ("", "Namespace"): Printer(_columns("Name", "Status", "Age"), _namespace_cells),
    ("", "ServiceAccount"): Printer(_columns("Name", "Secrets", "Age"), _serviceaccount_cells),
    ("apps", "Deployment"): Printer(
        _columns(
            "Name",
            "Ready",
            ("Up-to-date", "integer", 0),
            ("Available", "integer", 0),
            "Age",
            ("Containers", "string", 1),
            ("Images", "string", 1),
            ("Selector", "string", 1),
        ),
        _deployment_cells,
    ),
    ("coordination.k8s.io", "Lease"): Printer(_columns("Name", "Holder", "Age"), _lease_cells),
}
"""Built-in kinds by (group, kind); kinds not listed print NAME and AGE."""
