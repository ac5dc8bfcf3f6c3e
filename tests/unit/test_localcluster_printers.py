"""localcluster's Table columns for built-in kinds match what a real kube-apiserver prints."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from localcluster import printers, tables
from localcluster.resources import BUILTIN_TYPES, ResourceType

NOW = datetime.datetime(2026, 1, 2, 12, 0, 0, tzinfo=datetime.UTC)
TEN_MIN_AGO = "2026-01-02T11:50:00Z"
TWO_HOURS_AGO = "2026-01-02T10:00:00Z"


def _meta(name: str, created: str = TEN_MIN_AGO) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "creationTimestamp": created}


def _rt(group: str, kind: str) -> ResourceType:
    return next(rt for rt in BUILTIN_TYPES if rt.group == group and rt.kind == kind)


def _headers(group: str, kind: str, *, wide: bool = False) -> list[str]:
    columns = printers.PRINTERS[(group, kind)].columns
    return [c.name.upper() for c in columns if wide or c.priority == 0]


@pytest.mark.parametrize(
    ("group", "kind", "headers"),
    [
        pytest.param("", "Event", ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], id="events"),
        pytest.param(
            "events.k8s.io", "Event", ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"], id="events-k8s-io"
        ),
        pytest.param(
            "", "Service", ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], id="services"
        ),
        pytest.param("", "ConfigMap", ["NAME", "DATA", "AGE"], id="configmaps"),
        pytest.param("", "Secret", ["NAME", "TYPE", "DATA", "AGE"], id="secrets"),
        pytest.param(
            "apps", "Deployment", ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"], id="deployments"
        ),
        pytest.param("", "Namespace", ["NAME", "STATUS", "AGE"], id="namespaces"),
        pytest.param("coordination.k8s.io", "Lease", ["NAME", "HOLDER", "AGE"], id="leases"),
        pytest.param("", "ServiceAccount", ["NAME", "SECRETS", "AGE"], id="serviceaccounts"),
        pytest.param("", "Pod", ["NAME", "READY", "STATUS", "RESTARTS", "AGE"], id="pods"),
        pytest.param("", "Node", ["NAME", "STATUS", "ROLES", "AGE", "VERSION"], id="nodes"),
    ],
)
def test_default_headers_match_kubectl(group: str, kind: str, headers: list[str]) -> None:
    assert _headers(group, kind) == headers


@pytest.mark.parametrize(
    ("group", "kind", "wide_headers"),
    [
        pytest.param(
            "",
            "Event",
            [
                "LAST SEEN",
                "TYPE",
                "REASON",
                "OBJECT",
                "SUBOBJECT",
                "SOURCE",
                "MESSAGE",
                "FIRST SEEN",
                "COUNT",
                "NAME",
            ],
            id="events-wide",
        ),
        pytest.param(
            "",
            "Service",
            ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"],
            id="services-wide",
        ),
        pytest.param(
            "apps",
            "Deployment",
            ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"],
            id="deployments-wide",
        ),
    ],
)
def test_wide_headers_match_kubectl(group: str, kind: str, wide_headers: list[str]) -> None:
    assert _headers(group, kind, wide=True) == wide_headers


CORE_EVENT = {
    "metadata": _meta("w1.abc"),
    "involvedObject": {"kind": "TrainingJob", "name": "gpt", "fieldPath": "spec.replicas"},
    "reason": "Scaled",
    "message": "  grew to 4 workers \n",
    "type": "Normal",
    "source": {"component": "elastra-operator", "host": "node-1"},
    "firstTimestamp": TWO_HOURS_AGO,
    "lastTimestamp": TEN_MIN_AGO,
    "count": 3,
}


@pytest.mark.parametrize(
    ("group", "kind", "obj", "cells"),
    [
        pytest.param(
            "",
            "Event",
            CORE_EVENT,
            [
                "10m",
                "Normal",
                "Scaled",
                "trainingjob/gpt",
                "spec.replicas",
                "elastra-operator, node-1",
                "grew to 4 workers",
                "120m",
                3,
                "w1.abc",
            ],
            id="core-event-all-fields",
        ),
        pytest.param(
            "",
            "Event",
            {
                "metadata": _meta("e"),
                "involvedObject": {"kind": "Node"},
                "reason": "Ready",
                "message": "up",
                "type": "Normal",
                "eventTime": TEN_MIN_AGO + ".123456Z",
                "reportingController": "kubelet",
            },
            ["10m", "Normal", "Ready", "node", "", "kubelet", "up", "10m", 1, "e"],
            id="event-without-timestamps-uses-event-time-and-count-1",
        ),
        pytest.param(
            "events.k8s.io",
            "Event",
            {
                "metadata": _meta("e2"),
                "regarding": {"kind": "Pod", "name": "w-0"},
                "note": "pulled",
                "reason": "Pulled",
                "type": "Warning",
                "eventTime": TWO_HOURS_AGO,
                "series": {"count": 7, "lastObservedTime": TEN_MIN_AGO},
                "reportingController": "kubelet",
                "reportingInstance": "node-2",
            },
            ["10m", "Warning", "Pulled", "pod/w-0", "", "kubelet, node-2", "pulled", "120m", 7, "e2"],
            id="events-k8s-io-series",
        ),
        pytest.param(
            "",
            "Service",
            {
                "metadata": _meta("web"),
                "spec": {
                    "clusterIP": "10.0.0.7",
                    "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
                    "selector": {"b": "2", "a": "1"},
                },
            },
            ["web", "ClusterIP", "10.0.0.7", "<none>", "80/TCP,53/UDP", "10m", "a=1,b=2"],
            id="service-cluster-ip-defaults",
        ),
        pytest.param(
            "",
            "Service",
            {
                "metadata": _meta("np"),
                "spec": {
                    "type": "NodePort",
                    "clusterIPs": ["10.0.0.8"],
                    "externalIPs": ["1.2.3.4"],
                    "ports": [{"port": 29500, "nodePort": 30001}],
                },
            },
            ["np", "NodePort", "10.0.0.8", "1.2.3.4", "29500:30001/TCP", "10m", "<none>"],
            id="service-nodeport-external-ip",
        ),
        pytest.param(
            "",
            "Service",
            {"metadata": _meta("lb"), "spec": {"type": "LoadBalancer", "clusterIP": "None"}},
            ["lb", "LoadBalancer", "None", "<pending>", "<none>", "10m", "<none>"],
            id="service-loadbalancer-pending-no-ports",
        ),
        pytest.param(
            "",
            "Service",
            {
                "metadata": _meta("lb2"),
                "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]},
                "status": {"loadBalancer": {"ingress": [{"ip": "5.6.7.8"}, {"hostname": "lb.example"}]}},
            },
            ["lb2", "LoadBalancer", "<none>", "5.6.7.8,lb.example", "443/TCP", "10m", "<none>"],
            id="service-loadbalancer-ingress",
        ),
        pytest.param(
            "",
            "Service",
            {"metadata": _meta("ext"), "spec": {"type": "ExternalName", "externalName": "db.example"}},
            ["ext", "ExternalName", "<none>", "db.example", "<none>", "10m", "<none>"],
            id="service-external-name",
        ),
        pytest.param(
            "",
            "ConfigMap",
            {"metadata": _meta("cfg"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}},
            ["cfg", 3, "10m"],
            id="configmap-counts-data-and-binary-data",
        ),
        pytest.param(
            "", "ConfigMap", {"metadata": _meta("empty")}, ["empty", 0, "10m"], id="configmap-empty"
        ),
        pytest.param(
            "",
            "Secret",
            {"metadata": _meta("tok"), "type": "kubernetes.io/service-account-token", "data": {"t": "eA=="}},
            ["tok", "kubernetes.io/service-account-token", 1, "10m"],
            id="secret-typed",
        ),
        pytest.param(
            "", "Secret", {"metadata": _meta("s")}, ["s", "Opaque", 0, "10m"], id="secret-default-opaque"
        ),
        pytest.param(
            "apps",
            "Deployment",
            {
                "metadata": _meta("op"),
                "spec": {
                    "replicas": 3,
                    "selector": {
                        "matchLabels": {"app": "op"},
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]}],
                    },
                    "template": {"spec": {"containers": [{"name": "op", "image": "elastra:1"}]}},
                },
                "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2},
            },
            ["op", "2/3", 3, 2, "10m", "op", "elastra:1", "app=op,tier in (a,b)"],
            id="deployment-rolling",
        ),
        pytest.param(
            "apps",
            "Deployment",
            {"metadata": _meta("new"), "spec": {"selector": {"matchLabels": {"app": "new"}}}},
            ["new", "0/1", 0, 0, "10m", "", "", "app=new"],
            id="deployment-no-status-defaults-one-replica",
        ),
        pytest.param(
            "",
            "Namespace",
            {"metadata": _meta("gone"), "status": {"phase": "Terminating"}},
            ["gone", "Terminating", "10m"],
            id="namespace-terminating",
        ),
        pytest.param(
            "", "Namespace", {"metadata": _meta("ns")}, ["ns", "Active", "10m"], id="namespace-default"
        ),
        pytest.param(
            "coordination.k8s.io",
            "Lease",
            {"metadata": _meta("leader"), "spec": {"holderIdentity": "op-7f9"}},
            ["leader", "op-7f9", "10m"],
            id="lease-held",
        ),
        pytest.param(
            "coordination.k8s.io",
            "Lease",
            {"metadata": _meta("free"), "spec": {}},
            ["free", "", "10m"],
            id="lease-free",
        ),
        pytest.param(
            "",
            "ServiceAccount",
            {"metadata": _meta("sa"), "secrets": [{"name": "sa-token"}]},
            ["sa", 1, "10m"],
            id="serviceaccount-secrets",
        ),
    ],
)
def test_cells_match_the_real_printers(group: str, kind: str, obj: dict[str, Any], cells: list[Any]) -> None:
    printer = printers.PRINTERS[(group, kind)]
    assert printer.cells(obj, NOW) == cells
    assert len(cells) == len(printer.columns)


@pytest.mark.parametrize(
    ("group", "kind", "obj"),
    [
        pytest.param("", "Event", CORE_EVENT, id="event"),
        pytest.param("", "ConfigMap", {"metadata": _meta("cfg"), "data": {"a": "1"}}, id="configmap"),
        pytest.param("rbac.authorization.k8s.io", "Role", {"metadata": _meta("r")}, id="role-name-and-age"),
    ],
)
def test_table_rows_have_one_cell_per_column(group: str, kind: str, obj: dict[str, Any]) -> None:
    answer = tables.table(_rt(group, kind), [obj], "7")
    assert answer["kind"] == "Table" and answer["metadata"] == {"resourceVersion": "7"}
    (row,) = answer["rows"]
    assert len(row["cells"]) == len(answer["columnDefinitions"])
    assert row["object"]["metadata"]["name"] == obj["metadata"]["name"]


def test_kinds_without_a_printer_show_name_and_age() -> None:
    answer = tables.table(_rt("apps", "StatefulSet"), [{"metadata": _meta("db")}], "1")
    assert [c["name"] for c in answer["columnDefinitions"]] == ["Name", "Age"]
    assert answer["rows"][0]["cells"][0] == "db"


@pytest.mark.parametrize(
    ("selector", "text"),
    [
        pytest.param(None, "", id="nil-selector"),
        pytest.param({"matchLabels": {"b": "2", "a": "1"}}, "a=1,b=2", id="labels-sorted"),
        pytest.param(
            {
                "matchExpressions": [
                    {"key": "z", "operator": "Exists"},
                    {"key": "gone", "operator": "DoesNotExist"},
                    {"key": "env", "operator": "NotIn", "values": ["prod", "dev"]},
                ]
            },
            "env notin (dev,prod),!gone,z",
            id="expressions-sorted-by-key",
        ),
    ],
)
def test_label_selector_strings(selector: dict[str, Any] | None, text: str) -> None:
    assert printers.format_label_selector(selector) == text


@pytest.mark.parametrize(
    ("seconds_ago", "text"),
    [
        pytest.param(45, "45s", id="seconds-under-two-minutes"),
        pytest.param(3 * 60 + 12, "3m12s", id="minutes-and-seconds"),
        pytest.param(5 * 60, "5m", id="whole-minutes"),
        pytest.param(25 * 60, "25m", id="minutes-only-past-ten"),
        pytest.param(5 * 3600 + 3 * 60, "5h3m", id="hours-and-minutes"),
        pytest.param(17 * 3600 + 59 * 60, "17h", id="hours-only-past-eight"),
        pytest.param(3 * 86400 + 4 * 3600, "3d4h", id="days-and-hours-under-eight-days"),
        pytest.param(9 * 86400 + 4 * 3600, "9d", id="days-only-past-eight"),
        pytest.param(2 * 365 * 86400 + 10 * 86400, "2y10d", id="years-and-days"),
        pytest.param(9 * 365 * 86400, "9y", id="years-only-past-eight"),
        pytest.param(-30, "0s", id="clock-skew-future-is-zero"),
    ],
)
def test_human_age_matches_kubectl(seconds_ago: int, text: str) -> None:
    then = (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert printers.human_age(then, NOW) == text


def test_human_age_of_a_missing_timestamp_is_unknown() -> None:
    assert printers.human_age(None, NOW) == "<unknown>"
