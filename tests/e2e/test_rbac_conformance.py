"""RBAC conformance: the same cases against a real cluster (`pytest tests/e2e --kubeconfig PATH`) and
against localcluster (tests/integration/test_localcluster_rbac_conformance.py reuses these cases).

Each case makes a ServiceAccount, gets a token for it through the TokenRequest API (as a kubelet does),
binds roles as the admin and then acts with that token: what RBAC allows must work, everything else must
be 403 (or 401 for a token that is not valid).
"""

from __future__ import annotations

import copy
import importlib.util
import pathlib
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException


def _load_suite() -> Any:
    name = "conformance_suite"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, pathlib.Path(__file__).with_name("test_conformance.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


suite = _load_suite()
Ctx = suite.Ctx
RBAC = "rbac.authorization.k8s.io"


def _with_token(ctx: Any, token: str) -> client.ApiClient:
    """A client of the same cluster that authenticates with `token` only."""
    base = ctx.api.configuration
    conf = client.Configuration()
    conf.host = base.host
    conf.verify_ssl = base.verify_ssl
    conf.ssl_ca_cert = base.ssl_ca_cert
    conf.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(conf)


def _service_account(ctx: Any, namespace: str | None = None) -> tuple[str, client.ApiClient]:
    namespace = namespace or ctx.namespace
    name = ctx.name("sa")
    ctx.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    request = {"spec": {"audiences": [], "expirationSeconds": 3600}}
    for attempt in range(50):  # a real cluster's token controller may need a moment
        try:
            answer = ctx.core.create_namespaced_service_account_token(name, namespace, request)
            break
        except ApiException as exc:
            if exc.status != 404 or attempt == 49:
                raise
            time.sleep(0.1)
    return name, _with_token(ctx, answer.status.token)


def _bind(ctx: Any, sa: str, rules: list[dict[str, Any]], *, namespace: str | None = None) -> None:
    namespace = namespace or ctx.namespace
    rbac = client.RbacAuthorizationV1Api(ctx.api)
    role = ctx.name("role")
    rbac.create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": rules})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ctx.namespace}],
        },
    )


def _status(call: Callable[[], Any]) -> int:
    try:
        call()
    except ApiException as exc:
        return int(exc.status)
    return 200


def _eventually_status(call: Callable[[], Any], wanted: int, timeout: float = 10.0) -> None:
    """RBAC changes reach a real API server's authorizer cache within moments: wait for them."""
    deadline = time.monotonic() + timeout
    while (got := _status(call)) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"status {got}, wanted {wanted}")
        time.sleep(0.2)


# ---------------------------------------------------------------- cases
def case_service_account_without_roles_is_forbidden(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as err:
        core.list_namespaced_pod(ctx.namespace)
    assert err.value.status == 403
    body = suite._status_of(err.value)
    assert body["reason"] == "Forbidden"
    assert f"system:serviceaccount:{ctx.namespace}:{sa}" in body["message"]
    assert _status(lambda: core.read_namespaced_secret("nope", ctx.namespace)) == 403


def case_bad_token_is_401(ctx: Any) -> None:
    core = client.CoreV1Api(_with_token(ctx, "not-a-token-" + uuid.uuid4().hex))
    assert _status(lambda: core.list_namespaced_config_map(ctx.namespace)) == 401


def case_verbs(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    name = ctx.name("cm")
    ctx.configmap(name)
    _bind(ctx, sa, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}])
    core = client.CoreV1Api(api)
    _eventually_status(lambda: core.read_namespaced_config_map(name, ctx.namespace), 200)
    assert _status(lambda: core.list_namespaced_config_map(ctx.namespace)) == 403
    patch = {"data": {"k": "x"}}
    assert _status(lambda: core.patch_namespaced_config_map(name, ctx.namespace, patch)) == 403
    assert _status(lambda: core.delete_namespaced_config_map(name, ctx.namespace)) == 403


def case_resource_names(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    mine, other = ctx.name("mine"), ctx.name("other")
    ctx.configmap(mine)
    ctx.configmap(other)
    rule = {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": [mine],
        "verbs": ["get", "list", "watch", "patch"],
    }
    _bind(ctx, sa, [rule])
    core = client.CoreV1Api(api)
    patch = {"metadata": {"annotations": {"a": "b"}}}
    _eventually_status(lambda: core.patch_namespaced_config_map(mine, ctx.namespace, patch), 200)
    assert _status(lambda: core.patch_namespaced_config_map(other, ctx.namespace, patch)) == 403
    assert _status(lambda: core.read_namespaced_config_map(other, ctx.namespace)) == 403
    # list and watch with resourceNames work only through a metadata.name field selector
    selected = core.list_namespaced_config_map(ctx.namespace, field_selector=f"metadata.name={mine}")
    assert [c.metadata.name for c in selected.items] == [mine]
    assert _status(lambda: core.list_namespaced_config_map(ctx.namespace)) == 403
    other_selector = f"metadata.name={other}"
    assert (
        _status(lambda: core.list_namespaced_config_map(ctx.namespace, field_selector=other_selector)) == 403
    )


def case_subresources(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    name = ctx.name("g")
    ctx.gadget(name, {"size": 1})
    group = suite.GROUP
    _bind(ctx, sa, [{"apiGroups": [group], "resources": [suite.PLURAL], "verbs": ["get", "patch"]}])
    custom = client.CustomObjectsApi(api)
    args = (group, "v1", ctx.namespace, suite.PLURAL, name)
    _eventually_status(lambda: custom.patch_namespaced_custom_object(*args, {"spec": {"size": 2}}), 200)
    status_patch = {"status": {"phase": "forged"}}
    assert _status(lambda: custom.patch_namespaced_custom_object_status(*args, status_patch)) == 403
    _bind(ctx, sa, [{"apiGroups": [group], "resources": [f"{suite.PLURAL}/status"], "verbs": ["patch"]}])
    _eventually_status(lambda: custom.patch_namespaced_custom_object_status(*args, status_patch), 200)


def case_role_binding_is_namespaced(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    other = f"{ctx.namespace}-b"
    ctx.core.create_namespace({"metadata": {"name": other}})
    try:
        rule = {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}
        _bind(ctx, sa, [rule])
        core = client.CoreV1Api(api)
        _eventually_status(lambda: core.list_namespaced_config_map(ctx.namespace), 200)
        assert _status(lambda: core.list_namespaced_config_map(other)) == 403
        assert _status(core.list_config_map_for_all_namespaces) == 403
    finally:
        ctx.core.delete_namespace(other)


def case_cluster_roles(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    rbac = client.RbacAuthorizationV1Api(ctx.api)
    role = ctx.name("crole")
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}]
    rbac.create_cluster_role({"metadata": {"name": role}, "rules": rules})
    subject = {"kind": "ServiceAccount", "name": sa, "namespace": ctx.namespace}
    ref = {"apiGroup": RBAC, "kind": "ClusterRole", "name": role}
    core = client.CoreV1Api(api)
    try:
        # a RoleBinding to a ClusterRole grants it in the binding's namespace only
        rbac.create_namespaced_role_binding(
            ctx.namespace, {"metadata": {"name": role}, "roleRef": ref, "subjects": [subject]}
        )
        _eventually_status(lambda: core.list_namespaced_config_map(ctx.namespace), 200)
        assert _status(core.list_config_map_for_all_namespaces) == 403
        rbac.create_cluster_role_binding({"metadata": {"name": role}, "roleRef": ref, "subjects": [subject]})
        _eventually_status(core.list_config_map_for_all_namespaces, 200)
        assert _status(lambda: core.list_namespaced_secret(ctx.namespace)) == 403
    finally:
        for call in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            try:
                call(role)
            except ApiException as exc:
                if exc.status != 404:
                    raise


def case_deleted_service_account_token_stops_working(ctx: Any) -> None:
    sa, api = _service_account(ctx)
    _bind(ctx, sa, [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}])
    core = client.CoreV1Api(api)
    _eventually_status(lambda: core.list_namespaced_config_map(ctx.namespace), 200)
    ctx.core.delete_namespaced_service_account(sa, ctx.namespace)
    _eventually_status(lambda: core.list_namespaced_config_map(ctx.namespace), 401)


def case_pods_get_the_default_service_account(ctx: Any) -> None:
    name = ctx.name("pod")
    body = {
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "1"]}]},
    }
    created = ctx.core.create_namespaced_pod(ctx.namespace, copy.deepcopy(body))
    assert created.spec.service_account_name == "default"
    mounts = [m.mount_path for m in created.spec.containers[0].volume_mounts or []]
    assert "/var/run/secrets/kubernetes.io/serviceaccount" in mounts
    missing = copy.deepcopy(body)
    missing["metadata"]["name"] = ctx.name("pod")
    missing["spec"]["serviceAccountName"] = "no-such-account"
    assert _status(lambda: ctx.core.create_namespaced_pod(ctx.namespace, missing)) == 403
    ctx.core.delete_namespaced_pod(name, ctx.namespace, grace_period_seconds=0)


def case_secret_string_data_is_merged_into_data(ctx: Any) -> None:
    # What the operator's finalizer reads (`data`), whatever the writer used (`stringData`).
    name = ctx.name("sec")
    body = {"metadata": {"name": name}, "data": {"a": "YQ=="}, "stringData": {"b": "bee"}}
    ctx.core.create_namespaced_secret(ctx.namespace, body)
    stored = ctx.core.read_namespaced_secret(name, ctx.namespace)
    assert stored.data == {"a": "YQ==", "b": "YmVl"} and not stored.string_data


CASES = [
    pytest.param(case_service_account_without_roles_is_forbidden, id="sa-without-roles-403"),
    pytest.param(case_bad_token_is_401, id="bad-token-401"),
    pytest.param(case_verbs, id="verbs"),
    pytest.param(case_resource_names, id="resource-names"),
    pytest.param(case_subresources, id="subresources"),
    pytest.param(case_role_binding_is_namespaced, id="rolebinding-namespaced"),
    pytest.param(case_cluster_roles, id="cluster-roles"),
    pytest.param(case_deleted_service_account_token_stops_working, id="deleted-sa-401"),
    pytest.param(case_pods_get_the_default_service_account, id="pod-default-sa"),
    pytest.param(case_secret_string_data_is_merged_into_data, id="secret-stringdata-merged"),
]


@pytest.fixture(scope="module")
def rbac_conformance(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The real cluster named by --kubeconfig."""
    api = config.new_client_from_config(config_file=request.config.getoption("--kubeconfig"))
    yield from suite.conformance_context(api)


@pytest.mark.parametrize("case", CASES)
def test_rbac_conformance(rbac_conformance: Any, case: Callable[[Any], None]) -> None:
    case(rbac_conformance)
