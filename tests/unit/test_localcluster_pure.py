"""Pure parts of localcluster: selectors, patches, CRD schemas, scheduling, pod launch plans, store rules."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from localcluster import patch, podspec, protobuf, scheduler, schema, selectors
from localcluster.controllers import Scheduler
from localcluster.errors import ApiError
from localcluster.store import Store


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        pytest.param("a=1", {"a": "1"}, True, id="equality"),
        pytest.param("a==1", {"a": "2"}, False, id="double-equals-mismatch"),
        pytest.param("a!=1", {}, True, id="not-equal-matches-missing-key"),
        pytest.param("a in (1, 2)", {"a": "2"}, True, id="set-in"),
        pytest.param("a notin (1,2),b", {"a": "3", "b": "x"}, True, id="notin-and-exists"),
        pytest.param("!b", {"b": "x"}, False, id="does-not-exist"),
        pytest.param("", {"x": "y"}, True, id="empty-selects-all"),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert selectors.labels_match(selectors.parse_label_selector(selector), labels) is expected


def test_field_selector_over_dotted_paths() -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}}
    reqs = selectors.parse_field_selector("spec.nodeName=n1,status.phase!=Failed")
    assert selectors.fields_match(reqs, pod)
    with pytest.raises(selectors.SelectorError):
        selectors.parse_field_selector("no operator")


@pytest.mark.parametrize(
    ("kind", "target", "body", "expected"),
    [
        pytest.param(
            "merge",
            {"a": {"b": 1, "c": 2}},
            {"a": {"b": None, "d": 3}},
            {"a": {"c": 2, "d": 3}},
            id="merge-null-deletes",
        ),
        pytest.param("merge", {"l": [1, 2]}, {"l": [3]}, {"l": [3]}, id="merge-replaces-lists"),
        pytest.param(
            "json",
            {"a": [1, 3]},
            [{"op": "add", "path": "/a/1", "value": 2}],
            {"a": [1, 2, 3]},
            id="json-add-into-list",
        ),
        pytest.param(
            "json", {"a": 1}, [{"op": "move", "from": "/a", "path": "/b"}], {"b": 1}, id="json-move"
        ),
        pytest.param(
            "strategic",
            {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]},
            {"containers": [{"name": "b", "image": "2"}]},
            {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "2"}]},
            id="strategic-merges-by-key",
        ),
        pytest.param(
            "strategic",
            {"containers": [{"name": "a"}, {"name": "b"}]},
            {"containers": [{"name": "a", "$patch": "delete"}]},
            {"containers": [{"name": "b"}]},
            id="strategic-delete-directive",
        ),
        pytest.param(
            "strategic",
            {"metadata": {"finalizers": ["x"]}},
            {"metadata": {"finalizers": ["y", "x"]}},
            {"metadata": {"finalizers": ["x", "y"]}},
            id="strategic-finalizers-as-set",
        ),
    ],
)
def test_patches(kind: str, target: Any, body: Any, expected: Any) -> None:
    apply = {"merge": patch.merge_patch, "json": patch.json_patch, "strategic": patch.strategic_merge_patch}[
        kind
    ]
    before = repr(target)
    assert apply(target, body) == expected
    assert repr(target) == before  # inputs are never mutated


def test_json_patch_test_op_failure_is_a_patch_error() -> None:
    """A failed `test` is an ordinary patch error (the API answers 422, like kube-apiserver)."""
    with pytest.raises(patch.PatchError, match="test at /a failed"):
        patch.json_patch({"a": 1}, [{"op": "test", "path": "/a", "value": 2}])


SCHEMA = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["replicas"],
            "properties": {
                "replicas": {"type": "integer", "minimum": 1, "maximum": 8},
                "mode": {"type": "string", "enum": ["a", "b"], "default": "a"},
                "name": {"type": "string", "pattern": "^[a-z]+$"},
                "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 2},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            },
        }
    },
}


@pytest.mark.parametrize(
    ("spec", "fields"),
    [
        pytest.param({"replicas": 2}, set(), id="valid"),
        pytest.param({}, {"spec.replicas"}, id="required"),
        pytest.param({"replicas": 0}, {"spec.replicas"}, id="minimum"),
        pytest.param({"replicas": "2"}, {"spec.replicas"}, id="type"),
        pytest.param({"replicas": 1, "mode": "c"}, {"spec.mode"}, id="enum"),
        pytest.param({"replicas": 1, "name": "A1"}, {"spec.name"}, id="pattern"),
        pytest.param(
            {"replicas": 1, "tags": ["a", 1, "c"]}, {"spec.tags", "spec.tags[1]"}, id="array-items-and-length"
        ),
    ],
)
def test_schema_validation_names_fields(spec: dict[str, Any], fields: set[str]) -> None:
    assert {e.field for e in schema.validate(SCHEMA, {"spec": spec})} == fields


def test_schema_defaults_and_pruning() -> None:
    obj = schema.apply_defaults(
        SCHEMA,
        {
            "metadata": {"name": "x"},
            "spec": {"replicas": 1, "unknown": 1, "free": {"any": {"thing": 1}}},
            "junk": 1,
        },
    )
    assert obj == {
        "metadata": {"name": "x"},
        "spec": {"replicas": 1, "mode": "a", "free": {"any": {"thing": 1}}},
    }


def _node(name: str, *, gpus: int = 1, ready: bool = True, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **spec.pop("labels", {})}},
        "spec": spec,
        "status": {
            "allocatable": {"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}],
        },
    }


def _pod(name: str, *, gpus: int = 0, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {}
    return {
        "metadata": {"name": name, "namespace": "default", "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "resources": resources}], **spec},
    }


ANTI = {
    "podAntiAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": [
            {"labelSelector": {"matchLabels": {"r": "w"}}, "topologyKey": "kubernetes.io/hostname"}
        ]
    }
}


@pytest.mark.parametrize(
    ("pod", "nodes", "bound", "expected"),
    [
        pytest.param(_pod("p"), [_node("n1"), _node("n2")], {"n1": [_pod("x")]}, "n2", id="fewest-pods-wins"),
        pytest.param(_pod("p", gpus=1), [_node("n1", gpus=0), _node("n2")], {}, "n2", id="gpu-request"),
        pytest.param(
            _pod("p", gpus=1), [_node("n1")], {"n1": [_pod("x", gpus=1)]}, None, id="gpus-exhausted"
        ),
        pytest.param(_pod("p"), [_node("n1", ready=False)], {}, None, id="not-ready-node"),
        pytest.param(
            _pod("p"),
            [_node("n1", unschedulable=True), _node("n2")],
            {"n2": [_pod("x")]},
            "n2",
            id="cordoned-node",
        ),
        pytest.param(
            _pod("p", nodeSelector={"pool": "gpu"}),
            [_node("n1"), _node("n2", labels={"pool": "gpu"})],
            {},
            "n2",
            id="node-selector",
        ),
        pytest.param(
            _pod("p"),
            [_node("n1", taints=[{"key": "k", "effect": "NoSchedule"}])],
            {},
            None,
            id="untolerated-taint",
        ),
        pytest.param(
            _pod("p", tolerations=[{"key": "k", "operator": "Exists"}]),
            [_node("n1", taints=[{"key": "k", "effect": "NoSchedule"}])],
            {},
            "n1",
            id="tolerated-taint",
        ),
        pytest.param(
            _pod("p", labels={"r": "w"}, affinity=ANTI),
            [_node("n1"), _node("n2")],
            {"n1": [_pod("x", labels={"r": "w"})], "n2": [_pod("y"), _pod("z")]},
            "n2",
            id="anti-affinity",
        ),
    ],
)
def test_scheduler_choice(
    pod: dict[str, Any],
    nodes: list[dict[str, Any]],
    bound: dict[str, list[dict[str, Any]]],
    expected: str | None,
) -> None:
    decision = scheduler.choose_node(pod, nodes, bound)
    assert decision.node == expected
    assert bool(decision.message) is (expected is None)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        pytest.param("500m", 0.5, id="milli"),
        pytest.param("1Gi", 2.0**30, id="binary"),
        pytest.param("2", 2.0, id="plain"),
        pytest.param("1e3", 1000.0, id="exponent"),
    ],
)
def test_quantities(text: str, value: float) -> None:
    assert scheduler.quantity(text) == value


def test_pod_launch_plan_rewrites_mount_paths_and_expands_vars(tmp_path: pathlib.Path) -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ns", "labels": {"job": "j"}},
        "spec": {"nodeName": "n1", "volumes": [{"name": "d", "hostPath": {"path": "/data"}}]},
        "status": {"podIP": "127.0.0.9"},
    }
    container = {
        "name": "c",
        "command": ["run", "--out=/data/x", "$(JOB)"],
        "env": [
            {"name": "JOB", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['job']"}}},
            {"name": "DIR", "value": "/data/ckpt"},
            {"name": "OTHER", "value": "/database"},
        ],
        "volumeMounts": [{"name": "d", "mountPath": "/data"}],
    }
    folders = podspec.volume_folders(pod, node_dir=tmp_path / "n1", pod_dir=tmp_path / "pod")
    launch = podspec.plan_container(container, pod, folders=folders, lookup=lambda *_: None)
    host = str(tmp_path / "n1" / "hostpath" / "data")
    assert launch.argv == ("run", f"--out={host}/x", "j")
    assert launch.env == {"JOB": "j", "DIR": f"{host}/ckpt", "OTHER": "/database"}
    with pytest.raises(podspec.PodSpecError):
        podspec.plan_container(
            {
                "name": "c",
                "command": ["x"],
                "env": [{"name": "E", "valueFrom": {"configMapKeyRef": {"name": "m", "key": "k"}}}],
            },
            pod,
            folders={},
            lookup=lambda *_: None,
        )
    assert podspec.exit_code(-9) == 137


def test_protobuf_secret_envelope_decodes() -> None:
    def field(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    meta = field(1, b"s1") + field(11, field(1, b"owner") + field(2, b"helm"))
    secret = field(1, meta) + field(2, field(1, b"k") + field(2, b"\x00\x01")) + field(3, b"Opaque")
    body = protobuf.MAGIC + field(1, field(1, b"v1") + field(2, b"Secret")) + field(2, secret)
    assert protobuf.decode(body) == {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "s1", "labels": {"owner": "helm"}},
        "data": {"k": "AAE="},
        "type": "Opaque",
    }
    with pytest.raises(protobuf.ProtobufError):
        protobuf.decode(protobuf.MAGIC + field(1, field(1, b"v1") + field(2, b"Pod")))


def test_store_rules_without_a_server() -> None:
    store = Store()
    cms = store.type_of("", "v1", "configmaps")
    owner = store.create(cms, "default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    store.create(cms, "default", {"metadata": {"name": "child", "ownerReferences": [ref]}})
    unchanged = store.update(cms, "default", "owner", dict(owner))
    assert (
        unchanged["metadata"]["resourceVersion"] == owner["metadata"]["resourceVersion"]
    )  # no-op writes are free
    store.delete(cms, "default", "owner")
    with pytest.raises(ApiError) as err:
        store.get(cms, "default", "child")
    assert err.value.code == 404
    store.compact(store.rv)
    with pytest.raises(ApiError) as gone:
        store.watch(cms, 1)
    assert gone.value.code == 410


def test_scheduler_reports_once_and_forgets_deleted_pods() -> None:
    store = Store()
    pods = store.type_of("", "v1", "pods")
    events = store.type_of("", "v1", "events")
    store.create(pods, "default", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    loop = Scheduler(store)
    loop.schedule_pending()
    loop.schedule_pending()  # same reason again: no second event
    failed = [e for e in store.list(events, "default")[0] if e["reason"] == "FailedScheduling"]
    assert len(failed) == 1
    assert len(loop._last_message) == 1
    store.delete(pods, "default", "p")
    loop.schedule_pending()
    assert loop._last_message == {}  # a deleted pending pod leaves nothing behind
