"""Conformance of the Kubernetes API semantics Elastra relies on, written against the official client.

Runs against a real cluster with `pytest tests/e2e --kubeconfig PATH` (skipped otherwise), and against
localcluster from tests/integration/test_localcluster_conformance.py, which reuses these cases. Every
case works in its own namespace objects under one session namespace and one test CRD, both removed at
the end.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

GROUP = "conformance.elastra.dev"
PLURAL = "gadgets"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "gadget", "kind": "Gadget", "shortNames": ["gdg"]},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1},
                                    "maxSize": {"type": "integer"},
                                    "color": {"type": "string", "enum": ["blue", "red"], "default": "blue"},
                                },
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "!has(self.maxSize) || self.size <= self.maxSize",
                                        "message": "size must be <= maxSize",
                                    }
                                ],
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


@dataclass(slots=True)
class Ctx:
    """What each case gets."""

    api: client.ApiClient
    """A client of the cluster under test."""
    namespace: str
    """The session's namespace."""

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:6]}"

    def configmap(self, name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        body = {"metadata": {"name": name, "labels": labels or {}, **extra}, "data": {"k": "v"}}
        result: dict[str, Any] = self.api.sanitize_for_serialization(
            self.core.create_namespaced_config_map(self.namespace, body)
        )
        return result

    def gadget(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": spec}
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, "v1", self.namespace, PLURAL, body
        )
        return result

    def raw(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Any:
        """A request the typed client has no method for (other patch types, Tables, discovery)."""
        headers = {"Accept": accept, "Content-Type": content_type}
        token = self.api.configuration.get_api_key_with_prefix(
            "authorization"
        ) or self.api.configuration.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token
        response = self.api.rest_client.request(
            method, self.api.configuration.host + path, headers=headers, body=body
        )
        return json.loads(response.data)


def eventually(check: Callable[[], bool], *, timeout: float = 30.0) -> None:
    """Poll until `check()` holds (the deadline only guards against hangs)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.1)


def _status_of(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body)
    return body


# ---------------------------------------------------------------- cases
def case_metadata_on_create(ctx: Ctx) -> None:
    obj = ctx.configmap(ctx.name("meta"))
    meta = obj["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["resourceVersion"]
    assert meta["namespace"] == ctx.namespace


def case_resource_version_grows(ctx: Ctx) -> None:
    name = ctx.name("rv")
    first = int(ctx.configmap(name)["metadata"]["resourceVersion"])
    second = ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"data": {"k": "w"}})
    assert int(second.metadata.resource_version) > first


def case_generation_counts_spec_changes_only(ctx: Ctx) -> None:
    name = ctx.name("gen")
    assert ctx.gadget(name, {"size": 1})["metadata"]["generation"] == 1
    after_status = ctx.custom.patch_namespaced_custom_object_status(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"status": {"phase": "x"}}
    )
    assert after_status["metadata"]["generation"] == 1
    after_label = ctx.custom.patch_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"metadata": {"labels": {"a": "b"}}}
    )
    assert after_label["metadata"]["generation"] == 1
    after_spec = ctx.custom.patch_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"spec": {"size": 2}}
    )
    assert after_spec["metadata"]["generation"] == 2


def case_status_subresource_separates_writes(ctx: Ctx) -> None:
    name = ctx.name("sub")
    ctx.gadget(name, {"size": 1})
    main = ctx.custom.patch_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"status": {"phase": "ignored"}}
    )
    assert "phase" not in (main.get("status") or {})
    status = ctx.custom.patch_namespaced_custom_object_status(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"spec": {"size": 9}, "status": {"phase": "ok"}}
    )
    assert status["status"]["phase"] == "ok" and status["spec"]["size"] == 1


def case_stale_resource_version_conflicts(ctx: Ctx) -> None:
    name = ctx.name("stale")
    old = ctx.core.create_namespaced_config_map(
        ctx.namespace, {"metadata": {"name": name}, "data": {"k": "1"}}
    )
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"data": {"k": "2"}})
    old.data = {"k": "3"}
    with pytest.raises(ApiException) as err:
        ctx.core.replace_namespaced_config_map(name, ctx.namespace, old)
    assert err.value.status == 409 and _status_of(err.value)["reason"] == "Conflict"


def case_duplicate_create_already_exists(ctx: Ctx) -> None:
    name = ctx.name("dup")
    ctx.configmap(name)
    with pytest.raises(ApiException) as err:
        ctx.configmap(name)
    assert err.value.status == 409 and _status_of(err.value)["reason"] == "AlreadyExists"


def case_missing_object_is_status_404(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        ctx.core.read_namespaced_config_map("does-not-exist", ctx.namespace)
    body = _status_of(err.value)
    assert (
        err.value.status == 404
        and body["kind"] == "Status"
        and body["reason"] == "NotFound"
        and body["code"] == 404
    )


def case_missing_namespace_is_404(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        ctx.core.create_namespaced_config_map("no-such-namespace-x", {"metadata": {"name": "a"}})
    assert err.value.status == 404


def case_crd_validation_422_names_the_field(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        ctx.gadget(ctx.name("bad"), {"size": 0, "color": "green"})
    body = _status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    fields = {c["field"] for c in body["details"]["causes"]}
    assert {"spec.size", "spec.color"} <= fields


def case_crd_required_field(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        ctx.gadget(ctx.name("req"), {"color": "red"})
    assert err.value.status == 422
    assert any(c["field"] == "spec.size" for c in _status_of(err.value)["details"]["causes"])


def case_crd_validation_rule_422_with_its_message(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        ctx.gadget(ctx.name("cel"), {"size": 3, "maxSize": 2})
    body = _status_of(err.value)
    assert err.value.status == 422 and body["reason"] == "Invalid"
    causes = body["details"]["causes"]
    assert [(c["field"], c["reason"]) for c in causes] == [("spec", "FieldValueInvalid")]
    assert causes[0]["message"].endswith("size must be <= maxSize")
    assert "spec: Invalid value" in body["message"] and "size must be <= maxSize" in body["message"]
    name = ctx.name("cel")
    ctx.gadget(name, {"size": 2, "maxSize": 2})
    with pytest.raises(ApiException) as err:
        ctx.custom.patch_namespaced_custom_object(
            GROUP, "v1", ctx.namespace, PLURAL, name, {"spec": {"size": 5}}
        )
    assert err.value.status == 422 and "size must be <= maxSize" in err.value.body


def case_crd_defaults(ctx: Ctx) -> None:
    assert ctx.gadget(ctx.name("def"), {"size": 2})["spec"]["color"] == "blue"


def case_finalizers_hold_deletion(ctx: Ctx) -> None:
    name = ctx.name("fin")
    ctx.configmap(name, finalizers=["example.dev/hold"])
    ctx.core.delete_namespaced_config_map(name, ctx.namespace)
    held = ctx.core.read_namespaced_config_map(name, ctx.namespace)
    assert held.metadata.deletion_timestamp is not None
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as err:
        ctx.core.read_namespaced_config_map(name, ctx.namespace)
    assert err.value.status == 404


def case_owner_references_cascade(ctx: Ctx) -> None:
    owner = ctx.configmap(ctx.name("owner"))
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
    }
    child = ctx.configmap(ctx.name("child"), ownerReferences=[ref])["metadata"]["name"]
    ctx.core.delete_namespaced_config_map(
        owner["metadata"]["name"], ctx.namespace, propagation_policy="Background"
    )

    def child_gone() -> bool:
        try:
            ctx.core.read_namespaced_config_map(child, ctx.namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    eventually(child_gone)


def case_label_selectors(ctx: Ctx) -> None:
    tag = uuid.uuid4().hex[:6]
    for i, tier in enumerate(["web", "db", "cache"]):
        ctx.configmap(
            ctx.name(f"lbl{i}"), {"set": tag, "tier": tier, **({"extra": "1"} if tier == "db" else {})}
        )

    def names(selector: str) -> set[str]:
        items = ctx.core.list_namespaced_config_map(
            ctx.namespace, label_selector=f"set={tag},{selector}"
        ).items
        return {i.metadata.labels["tier"] for i in items}

    assert names("tier=web") == {"web"}
    assert names("tier!=web") == {"db", "cache"}
    assert names("tier in (db,cache)") == {"db", "cache"}
    assert names("tier notin (db)") == {"web", "cache"}
    assert names("extra") == {"db"}
    assert names("!extra") == {"web", "cache"}


def case_field_selectors(ctx: Ctx) -> None:
    name = ctx.name("fld")
    ctx.configmap(name)
    by_name = ctx.core.list_namespaced_config_map(ctx.namespace, field_selector=f"metadata.name={name}").items
    assert [i.metadata.name for i in by_name] == [name]
    all_ns = ctx.core.list_config_map_for_all_namespaces(
        field_selector=f"metadata.namespace={ctx.namespace},metadata.name={name}"
    ).items
    assert len(all_ns) == 1
    assert (
        ctx.core.list_namespaced_config_map(ctx.namespace, field_selector=f"metadata.name!={name}").items
        is not None
    )


def case_merge_and_json_patch(ctx: Ctx) -> None:
    name = ctx.name("patch")
    ctx.core.create_namespaced_config_map(
        ctx.namespace, {"metadata": {"name": name}, "data": {"a": "1", "b": "2"}}
    )
    merged = ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"data": {"a": None, "c": "3"}})
    assert merged.data == {"b": "2", "c": "3"}
    ops = [
        {"op": "replace", "path": "/data/b", "value": "20"},
        {"op": "add", "path": "/data/d", "value": "4"},
    ]
    patched = ctx.core.patch_namespaced_config_map(name, ctx.namespace, ops)
    assert patched.data == {"b": "20", "c": "3", "d": "4"}
    with pytest.raises(ApiException) as err:
        ctx.core.patch_namespaced_config_map(
            name, ctx.namespace, [{"op": "test", "path": "/data/b", "value": "nope"}]
        )
    assert err.value.status == 422


def case_strategic_merge_keeps_other_list_items(ctx: Ctx) -> None:
    name = ctx.name("smp")
    containers = [{"name": "a", "image": "busybox:1"}, {"name": "b", "image": "busybox:1"}]
    body = {
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": containers}},
        },
    }
    apps = client.AppsV1Api(ctx.api)
    apps.create_namespaced_deployment(ctx.namespace, body)
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "busybox:2"}]}}}}
    ctx.raw(
        "PATCH",
        f"/apis/apps/v1/namespaces/{ctx.namespace}/deployments/{name}",
        body=patch,
        content_type="application/strategic-merge-patch+json",
    )
    got = apps.read_namespaced_deployment(name, ctx.namespace).spec.template.spec.containers
    assert [(c.name, c.image) for c in got] == [("a", "busybox:1"), ("b", "busybox:2")]


def case_server_side_apply(ctx: Ctx) -> None:
    name = ctx.name("ssa")
    path = f"/api/v1/namespaces/{ctx.namespace}/configmaps/{name}?fieldManager=conformance&force=true"
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"a": "1"}}
    ctx.raw("PATCH", path, body=doc, content_type="application/apply-patch+yaml")
    doc["data"] = {"a": "2"}
    ctx.raw("PATCH", path, body=doc, content_type="application/apply-patch+yaml")
    assert ctx.core.read_namespaced_config_map(name, ctx.namespace).data == {"a": "2"}


def _collect(ctx: Ctx, rv: str, count: int, **kwargs: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    w = watch.Watch()
    for event in w.stream(
        ctx.core.list_namespaced_config_map, ctx.namespace, resource_version=rv, timeout_seconds=20, **kwargs
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) >= count:
            w.stop()
    return seen


def case_watch_from_resource_version_in_order(ctx: Ctx) -> None:
    tag = uuid.uuid4().hex[:6]
    rv = ctx.core.list_namespaced_config_map(
        ctx.namespace, label_selector=f"w={tag}"
    ).metadata.resource_version
    names = [ctx.name("w") for _ in range(3)]
    for name in names:
        ctx.configmap(name, {"w": tag})
    ctx.core.patch_namespaced_config_map(names[0], ctx.namespace, {"data": {"k": "changed"}})
    ctx.core.delete_namespaced_config_map(names[1], ctx.namespace)
    expected = [("ADDED", n) for n in names] + [("MODIFIED", names[0]), ("DELETED", names[1])]
    assert _collect(ctx, rv, len(expected), label_selector=f"w={tag}") == expected


def case_watch_selector_transitions(ctx: Ctx) -> None:
    tag = uuid.uuid4().hex[:6]
    name = ctx.name("wt")
    rv = ctx.configmap(name, {"t": tag, "on": "no"})["metadata"]["resourceVersion"]
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"metadata": {"labels": {"on": "yes"}}})
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"metadata": {"labels": {"on": "no"}}})
    assert _collect(ctx, rv, 2, label_selector=f"t={tag},on=yes") == [("ADDED", name), ("DELETED", name)]


def case_watch_expired_resource_version_is_410(ctx: Ctx) -> None:
    with pytest.raises(ApiException) as err:
        _collect(ctx, "1", 1)
    assert err.value.status == 410


def case_watch_timeout_ends_stream(ctx: Ctx) -> None:
    rv = ctx.core.list_namespaced_config_map(ctx.namespace).metadata.resource_version
    started = time.monotonic()
    events = list(
        watch.Watch().stream(
            ctx.core.list_namespaced_config_map,
            ctx.namespace,
            resource_version=rv,
            timeout_seconds=1,
            label_selector="nothing=matches",
        )
    )
    assert events == [] and time.monotonic() - started < 30


def case_discovery_lists_resources(ctx: Ctx) -> None:
    core = ctx.raw("GET", "/api/v1")
    pods = next(r for r in core["resources"] if r["name"] == "pods")
    assert "po" in pods["shortNames"] and "watch" in pods["verbs"]
    assert any(r["name"] == "pods/status" for r in core["resources"])
    groups = {g["name"] for g in ctx.raw("GET", "/apis")["groups"]}
    assert {
        "apps",
        "coordination.k8s.io",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
        GROUP,
    } <= groups
    custom = ctx.raw("GET", f"/apis/{GROUP}/v1")
    gadgets = next(r for r in custom["resources"] if r["name"] == PLURAL)
    assert gadgets["shortNames"] == ["gdg"] and gadgets["kind"] == "Gadget"
    assert any(r["name"] == f"{PLURAL}/status" for r in custom["resources"])
    assert ctx.raw("GET", "/version")["major"] == "1"


def case_printer_columns_in_tables(ctx: Ctx) -> None:
    name = ctx.name("tbl")
    ctx.gadget(name, {"size": 7})
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io"
    table = ctx.raw("GET", f"/apis/{GROUP}/v1/namespaces/{ctx.namespace}/{PLURAL}/{name}", accept=accept)
    assert table["kind"] == "Table"
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns[0] == "Name" and "Size" in columns
    assert table["rows"][0]["cells"][columns.index("Size")] == 7


def case_leases_and_events(ctx: Ctx) -> None:
    leases = client.CoordinationV1Api(ctx.api)
    name = ctx.name("lease")
    leases.create_namespaced_lease(
        ctx.namespace,
        {"metadata": {"name": name}, "spec": {"holderIdentity": "a", "leaseDurationSeconds": 10}},
    )
    updated = leases.patch_namespaced_lease(name, ctx.namespace, {"spec": {"holderIdentity": "b"}})
    assert updated.spec.holder_identity == "b"
    cm = ctx.configmap(ctx.name("evt"))
    involved = {
        "kind": "ConfigMap",
        "name": cm["metadata"]["name"],
        "namespace": ctx.namespace,
        "uid": cm["metadata"]["uid"],
    }
    ctx.core.create_namespaced_event(
        ctx.namespace,
        {
            "metadata": {"generateName": "evt-"},
            "involvedObject": involved,
            "reason": "Tested",
            "message": "hi",
            "type": "Normal",
        },
    )
    found = ctx.core.list_namespaced_event(
        ctx.namespace, field_selector=f"involvedObject.uid={cm['metadata']['uid']}"
    ).items
    assert [e.reason for e in found] == ["Tested"]


def case_secret_data_round_trips(ctx: Ctx) -> None:
    name = ctx.name("sec")
    data = {"token": base64.b64encode(b"s3cr3t").decode()}
    ctx.core.create_namespaced_secret(ctx.namespace, {"metadata": {"name": name}, "data": data})
    assert ctx.core.read_namespaced_secret(name, ctx.namespace).data == data


# ------------------------------------------------ field rules and error codes (issue 17)
def case_json_patch_failed_test_is_422(ctx: Ctx) -> None:
    """kube-apiserver wraps every patch-apply error, a failed `test` op included, as 422 Invalid.
    Kopf guards its finalizer patches with such a test and expects exactly that."""
    name = ctx.name("jtest")
    ctx.configmap(name, finalizers=["kopf.zalando.org/KopfFinalizerMarker"])
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": "/metadata/finalizers", "value": ["someone-else"]},
        {"op": "remove", "path": "/metadata/finalizers/0"},
    ]
    with pytest.raises(ApiException) as err:
        ctx.core.patch_namespaced_config_map(name, ctx.namespace, ops)
    assert err.value.status == 422 and _status_of(err.value)["reason"] == "Invalid"
    kept = ctx.core.read_namespaced_config_map(name, ctx.namespace)
    assert kept.metadata.finalizers == ["kopf.zalando.org/KopfFinalizerMarker"]
    # Kopf's own shape: a finalizer patch guarded by the resourceVersion it last saw
    stale = kept.metadata.resource_version
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"data": {"k": "newer"}})
    guarded = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale}, ops[1]]
    with pytest.raises(ApiException) as err:
        ctx.core.patch_namespaced_config_map(name, ctx.namespace, guarded)
    assert err.value.status == 422
    ops[0]["value"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    assert not ctx.core.patch_namespaced_config_map(name, ctx.namespace, ops).metadata.finalizers


def case_status_dropped_on_create(ctx: Ctx) -> None:
    """With the status subresource on, a `.status` sent on create is dropped."""
    name = ctx.name("cstat")
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": name},
        "spec": {"size": 1},
        "status": {"phase": "Forged"},
    }
    created = ctx.custom.create_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, body)
    assert "phase" not in (created.get("status") or {})
    read = ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    assert "phase" not in (read.get("status") or {})


def case_no_new_finalizers_while_deleting(ctx: Ctx) -> None:
    """An object being deleted refuses new finalizers (422 naming metadata.finalizers); removing
    finalizers still works and finishes the deletion."""
    name = ctx.name("findel")
    ctx.configmap(name, finalizers=["example.dev/hold"])
    ctx.core.delete_namespaced_config_map(name, ctx.namespace)
    for patch in (
        {"metadata": {"finalizers": ["example.dev/hold", "example.dev/late"]}},
        [{"op": "add", "path": "/metadata/finalizers/-", "value": "example.dev/late"}],
    ):
        with pytest.raises(ApiException) as err:
            ctx.core.patch_namespaced_config_map(name, ctx.namespace, patch)
        status = _status_of(err.value)
        assert err.value.status == 422 and status["reason"] == "Invalid"
        assert [c["field"] for c in status["details"]["causes"]] == ["metadata.finalizers"]
    held = ctx.core.read_namespaced_config_map(name, ctx.namespace)
    assert held.metadata.finalizers == ["example.dev/hold"]
    ctx.core.patch_namespaced_config_map(name, ctx.namespace, {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as gone:
        ctx.core.read_namespaced_config_map(name, ctx.namespace)
    assert gone.value.status == 404


def case_generation_ignores_defaulted_fields(ctx: Ctx) -> None:
    """A PUT that leaves out a field the schema defaults changes no spec: same generation."""
    name = ctx.name("gdef")
    created = ctx.gadget(name, {"size": 1})
    assert created["spec"]["color"] == "blue"
    body = {**created, "spec": {"size": 1}}
    replaced = ctx.custom.replace_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name, body)
    assert replaced["metadata"]["generation"] == 1 and replaced["spec"]["color"] == "blue"


def case_pod_generation_counts_spec_changes_only(ctx: Ctx) -> None:
    """Pods too (Kubernetes >= 1.33): labels, status and a PUT of the defaulted spec keep the
    generation; a spec change bumps it."""
    name = ctx.name("pgen")
    spec = {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}], "nodeName": "nowhere"}
    pod = ctx.core.create_namespaced_pod(ctx.namespace, {"metadata": {"name": name}, "spec": spec})
    if not pod.metadata.generation:
        pytest.skip("this cluster predates pod generation (Kubernetes < 1.33)")
    assert pod.metadata.generation == 1
    labelled = ctx.core.patch_namespaced_pod(name, ctx.namespace, {"metadata": {"labels": {"a": "b"}}})
    assert labelled.metadata.generation == 1
    status = ctx.core.patch_namespaced_pod_status(
        name, ctx.namespace, {"status": {"conditions": [{"type": "Example", "status": "True"}]}}
    )
    assert status.metadata.generation == 1
    current = ctx.api.sanitize_for_serialization(ctx.core.read_namespaced_pod(name, ctx.namespace))
    defaulted = ("restartPolicy", "terminationGracePeriodSeconds", "schedulerName")
    sent = {k: v for k, v in current["spec"].items() if k not in defaulted}
    put = ctx.core.replace_namespaced_pod(name, ctx.namespace, {**current, "spec": sent})
    assert put.metadata.generation == 1
    bumped = ctx.core.patch_namespaced_pod(name, ctx.namespace, {"spec": {"activeDeadlineSeconds": 600}})
    assert bumped.metadata.generation == 2
    ctx.core.delete_namespaced_pod(name, ctx.namespace, grace_period_seconds=0)


def case_generation_bumps_when_marked_for_deletion(ctx: Ctx) -> None:
    """The first deletionTimestamp bumps `metadata.generation` (controllers must notice); a second
    delete call does not."""
    name = ctx.name("gdel")
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Gadget",
        "metadata": {"name": name, "finalizers": ["example.dev/hold"]},
        "spec": {"size": 1},
    }
    ctx.custom.create_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, body)
    ctx.custom.delete_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    marked = ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["generation"] == 2
    ctx.custom.delete_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    again = ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    assert again["metadata"]["generation"] == 2
    ctx.custom.patch_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"metadata": {"finalizers": None}}
    )


def case_dry_run_stores_nothing(ctx: Ctx) -> None:
    """`dryRun=All` answers with the object as it would be stored (defaults applied) and stores nothing."""
    name = ctx.name("dry")
    body = {"apiVersion": f"{GROUP}/v1", "kind": "Gadget", "metadata": {"name": name}, "spec": {"size": 1}}
    would = ctx.custom.create_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, body, dry_run="All"
    )
    assert would["spec"]["color"] == "blue"
    with pytest.raises(ApiException) as err:
        ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    assert err.value.status == 404
    ctx.gadget(name, {"size": 1})
    patched = ctx.custom.patch_namespaced_custom_object(
        GROUP, "v1", ctx.namespace, PLURAL, name, {"spec": {"size": 5}}, dry_run="All"
    )
    assert patched["spec"]["size"] == 5
    assert (
        ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)["spec"]["size"] == 1
    )
    ctx.custom.delete_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name, dry_run="All")
    kept = ctx.custom.get_namespaced_custom_object(GROUP, "v1", ctx.namespace, PLURAL, name)
    assert not kept["metadata"].get("deletionTimestamp")


CASES = [
    pytest.param(case_metadata_on_create, id="create-sets-uid-timestamp-rv"),
    pytest.param(case_resource_version_grows, id="resource-version-grows"),
    pytest.param(case_generation_counts_spec_changes_only, id="generation-spec-only"),
    pytest.param(case_status_subresource_separates_writes, id="status-subresource"),
    pytest.param(case_stale_resource_version_conflicts, id="stale-rv-409"),
    pytest.param(case_duplicate_create_already_exists, id="duplicate-409-already-exists"),
    pytest.param(case_missing_object_is_status_404, id="missing-404-status"),
    pytest.param(case_missing_namespace_is_404, id="missing-namespace-404"),
    pytest.param(case_crd_validation_422_names_the_field, id="crd-validation-422-fields"),
    pytest.param(case_crd_required_field, id="crd-required-field"),
    pytest.param(case_crd_validation_rule_422_with_its_message, id="crd-validation-rule-422-message"),
    pytest.param(case_crd_defaults, id="crd-defaults"),
    pytest.param(case_finalizers_hold_deletion, id="finalizers-hold-deletion"),
    pytest.param(case_owner_references_cascade, id="ownerrefs-cascade"),
    pytest.param(case_label_selectors, id="label-selectors"),
    pytest.param(case_field_selectors, id="field-selectors"),
    pytest.param(case_merge_and_json_patch, id="merge-and-json-patch"),
    pytest.param(case_strategic_merge_keeps_other_list_items, id="strategic-merge-keyed-lists"),
    pytest.param(case_server_side_apply, id="server-side-apply"),
    pytest.param(case_watch_from_resource_version_in_order, id="watch-from-rv-in-order"),
    pytest.param(case_watch_selector_transitions, id="watch-selector-transitions"),
    pytest.param(case_watch_expired_resource_version_is_410, id="watch-410-gone"),
    pytest.param(case_watch_timeout_ends_stream, id="watch-timeout-seconds"),
    pytest.param(case_discovery_lists_resources, id="discovery"),
    pytest.param(case_printer_columns_in_tables, id="printer-columns-table"),
    pytest.param(case_leases_and_events, id="leases-and-events"),
    pytest.param(case_secret_data_round_trips, id="secret-data"),
    pytest.param(case_json_patch_failed_test_is_422, id="json-patch-failed-test-422"),
    pytest.param(case_status_dropped_on_create, id="status-dropped-on-create"),
    pytest.param(case_no_new_finalizers_while_deleting, id="no-new-finalizers-while-deleting-422"),
    pytest.param(case_generation_ignores_defaulted_fields, id="generation-after-defaulting"),
    pytest.param(case_pod_generation_counts_spec_changes_only, id="pod-generation-spec-only"),
    pytest.param(case_dry_run_stores_nothing, id="dry-run-stores-nothing"),
    pytest.param(case_generation_bumps_when_marked_for_deletion, id="generation-bumps-on-deletion"),
]


def conformance_context(api: client.ApiClient) -> Iterator[Ctx]:
    """Set up the session namespace and CRD; remove both afterwards."""
    core = client.CoreV1Api(api)
    ext = client.ApiextensionsV1Api(api)
    namespace = f"conformance-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    try:
        ext.create_custom_resource_definition(CRD)
    except ApiException as exc:
        if exc.status != 409:
            raise

    def served() -> bool:
        try:
            client.CustomObjectsApi(api).list_namespaced_custom_object(GROUP, "v1", namespace, PLURAL)
        except ApiException:
            return False
        return True

    eventually(served)
    try:
        yield Ctx(api, namespace)
    finally:
        core.delete_namespace(namespace)
        ext.delete_custom_resource_definition(CRD_NAME)


@pytest.fixture(scope="module")
def conformance(request: pytest.FixtureRequest) -> Iterator[Ctx]:
    """The real cluster named by --kubeconfig."""
    api = config.new_client_from_config(config_file=request.config.getoption("--kubeconfig"))
    yield from conformance_context(api)


@pytest.mark.parametrize("case", CASES)
def test_conformance(conformance: Ctx, case: Callable[[Ctx], None]) -> None:
    case(conformance)
