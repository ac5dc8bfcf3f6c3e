"""localcluster's trust boundary, pure parts: name and path validation, request attributes, RBAC rules
and subjects, tokens."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import names, rbac
from localcluster.auth import ADMIN, ANONYMOUS, Authenticator, service_account_user
from localcluster.errors import ApiError
from localcluster.resources import BUILTIN_TYPES

PODS = next(rt for rt in BUILTIN_TYPES if rt.plural == "pods")
SA = service_account_user("team-a", "worker")


@pytest.mark.parametrize(
    ("kind", "name", "ok"),
    [
        pytest.param("Pod", "job-w-0", True, id="pod-plain"),
        pytest.param("Pod", "a.b.c", True, id="pod-dots-subdomain"),
        pytest.param("Pod", "x/../../etc", False, id="pod-slash-escape"),
        pytest.param("Pod", "..", False, id="pod-dotdot"),
        pytest.param("Pod", "Upper", False, id="pod-upper"),
        pytest.param("Pod", "a" * 254, False, id="pod-too-long"),
        pytest.param("Namespace", "a.b", False, id="namespace-no-dots"),
        pytest.param("Namespace", "a" * 64, False, id="namespace-label-63"),
        pytest.param("Service", "1abc", False, id="service-dns1035"),
        pytest.param("ClusterRole", "system:discovery", True, id="rbac-colon-ok"),
        pytest.param("Role", "a/b", False, id="rbac-slash"),
    ],
)
def test_names(kind: str, name: str, ok: bool) -> None:
    assert (names.name_problem(kind, name) is None) is ok


def _pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}], **spec}}


@pytest.mark.parametrize(
    ("pod", "field"),
    [
        pytest.param(
            _pod(volumes=[{"name": "v", "hostPath": {"path": "/data/../../etc"}}]), "hostPath", id="hostpath"
        ),
        pytest.param(
            _pod(
                volumes=[{"name": "v", "configMap": {"name": "c", "items": [{"key": "k", "path": "../x"}]}}]
            ),
            "items[0].path",
            id="configmap-item",
        ),
        pytest.param(
            _pod(
                volumes=[
                    {"name": "v", "secret": {"secretName": "s", "items": [{"key": "k", "path": "/abs"}]}}
                ]
            ),
            "items[0].path",
            id="secret-item-absolute",
        ),
        pytest.param(
            _pod(
                containers=[
                    {"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/m", "subPath": "a/../.."}]}
                ]
            ),
            "subPath",
            id="subpath",
        ),
        pytest.param(_pod(hostname="a.b"), "spec.hostname", id="hostname-label"),
    ],
)
def test_pod_paths_refused(pod: dict[str, Any], field: str) -> None:
    with pytest.raises(ApiError) as err:
        names.check_pod_paths(PODS, pod)
    assert err.value.code == 422 and field in err.value.message


def test_pod_paths_ok() -> None:
    pod = _pod(
        volumes=[
            {"name": "v", "hostPath": {"path": "/data/x"}},
            {"name": "c", "configMap": {"name": "c", "items": [{"key": "k", "path": "a/b"}]}},
        ]
    )
    names.check_pod_paths(PODS, pod)


@pytest.mark.parametrize(
    ("method", "path", "query", "want"),
    [
        pytest.param(
            "GET",
            "/api/v1/namespaces/a/pods",
            {},
            rbac.Attributes("list", True, "", "pods", "", "a", ""),
            id="list",
        ),
        pytest.param(
            "GET",
            "/api/v1/namespaces/a/pods",
            {"watch": "true", "fieldSelector": "metadata.name=x"},
            rbac.Attributes("watch", True, "", "pods", "", "a", "x"),
            id="watch-named",
        ),
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/a/pods/x/status",
            {},
            rbac.Attributes("patch", True, "", "pods", "status", "a", "x"),
            id="subresource",
        ),
        pytest.param(
            "DELETE",
            "/apis/elastra.dev/v1/namespaces/a/checkpoints",
            {},
            rbac.Attributes("deletecollection", True, "elastra.dev", "checkpoints", "", "a", ""),
            id="deletecollection",
        ),
        pytest.param(
            "GET",
            "/api/v1/namespaces/a",
            {},
            rbac.Attributes("get", True, "", "namespaces", "", "a", "a"),
            id="namespace-object",
        ),
        pytest.param(
            "GET",
            "/api/v1/pods",
            {},
            rbac.Attributes("list", True, "", "pods", "", "", ""),
            id="all-namespaces",
        ),
        pytest.param(
            "GET", "/apis/apps", {}, rbac.Attributes("get", False, path="/apis/apps"), id="discovery"
        ),
        pytest.param(
            "POST",
            "/localcluster/v1/nodes/n/kill",
            {},
            rbac.Attributes("post", False, path="/localcluster/v1/nodes/n/kill"),
            id="control",
        ),
    ],
)
def test_request_attributes(method: str, path: str, query: dict[str, str], want: rbac.Attributes) -> None:
    assert rbac.request_attributes(method, path, query) == want


PATCH_POD_X = rbac.Attributes("patch", True, "", "pods", "", "a", "x")


@pytest.mark.parametrize(
    ("rule", "attrs", "ok"),
    [
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}, PATCH_POD_X, True, id="plain"
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}, PATCH_POD_X, False, id="wrong-verb"
        ),
        pytest.param(
            {"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["*"]},
            PATCH_POD_X,
            False,
            id="wrong-group",
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["y"], "verbs": ["patch"]},
            PATCH_POD_X,
            False,
            id="other-name",
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"], "verbs": ["patch"]},
            PATCH_POD_X,
            True,
            id="own-name",
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "resourceNames": ["x"], "verbs": ["list"]},
            rbac.Attributes("list", True, "", "pods", "", "a", ""),
            False,
            id="names-need-selector",
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]},
            rbac.Attributes("patch", True, "", "pods", "status", "a", "x"),
            False,
            id="no-subresource",
        ),
        pytest.param(
            {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
            rbac.Attributes("patch", True, "", "pods", "status", "a", "x"),
            True,
            id="subresource",
        ),
        pytest.param(
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, PATCH_POD_X, True, id="wildcards"
        ),
        pytest.param(
            {"nonResourceURLs": ["/apis/*"], "verbs": ["get"]},
            rbac.Attributes("get", False, path="/apis/apps"),
            True,
            id="non-resource-prefix",
        ),
        pytest.param(
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            rbac.Attributes("get", False, path="/apis"),
            False,
            id="resource-rule-not-url",
        ),
    ],
)
def test_rule_allows(rule: dict[str, Any], attrs: rbac.Attributes, ok: bool) -> None:
    assert rbac.rule_allows(rule, attrs) is ok


def _objects(**by_plural: list[dict[str, Any]]) -> rbac.ListFn:
    def list_objects(plural: str, namespace: str | None) -> list[dict[str, Any]]:
        found = by_plural.get(plural, [])
        return [o for o in found if namespace is None or o["metadata"].get("namespace") == namespace]

    return list_objects


ROLE = {
    "metadata": {"name": "r", "namespace": "team-a"},
    "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["patch"]}],
}
BINDING = {
    "metadata": {"name": "b", "namespace": "team-a"},
    "roleRef": {"kind": "Role", "name": "r"},
    "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": "team-a"}],
}


@pytest.mark.parametrize(
    ("user", "attrs", "ok"),
    [
        pytest.param(SA, rbac.Attributes("patch", True, "", "pods", "", "team-a", "x"), True, id="bound"),
        pytest.param(
            SA, rbac.Attributes("patch", True, "", "pods", "", "team-b", "x"), False, id="other-namespace"
        ),
        pytest.param(
            service_account_user("team-a", "other"),
            rbac.Attributes("patch", True, "", "pods", "", "team-a", "x"),
            False,
            id="other-sa",
        ),
        pytest.param(
            ANONYMOUS, rbac.Attributes("patch", True, "", "pods", "", "team-a", "x"), False, id="anonymous"
        ),
        pytest.param(
            ADMIN, rbac.Attributes("delete", True, "", "secrets", "", "team-b", "x"), True, id="masters"
        ),
    ],
)
def test_authorizer(user: Any, attrs: rbac.Attributes, ok: bool) -> None:
    authorizer = rbac.Authorizer(_objects(roles=[ROLE], rolebindings=[BINDING]))
    assert authorizer.allowed(user, attrs) is ok


def test_forbidden_message_like_the_real_server() -> None:
    err = rbac.forbidden(SA, rbac.Attributes("get", True, "", "secrets", "", "team-b", "creds"))
    assert err.code == 403 and err.reason == "Forbidden"
    assert err.message == (
        'secrets "creds" is forbidden: User "system:serviceaccount:team-a:worker" cannot get resource '
        '"secrets" in API group "" in the namespace "team-b"'
    )


def test_tokens_bound_to_pod_and_service_account() -> None:
    objects: dict[tuple[str, str, str], dict[str, Any]] = {
        ("serviceaccounts", "a", "w"): {"metadata": {"name": "w", "uid": "sa-1"}},
        ("pods", "a", "p"): {"metadata": {"name": "p", "uid": "pod-1"}},
    }
    auth = Authenticator(lambda plural, ns, name: objects.get((plural, ns, name)))
    token, _ = auth.issue("a", "w", pod=objects[("pods", "a", "p")])
    user = auth.authenticate(f"Bearer {token}")
    assert user.name == "system:serviceaccount:a:w" and "system:serviceaccounts:a" in user.groups
    assert user.extra["authentication.kubernetes.io/pod-name"] == ("p",)
    assert auth.authenticate(f"Bearer {auth.admin_token}").is_admin
    assert auth.authenticate(None) == ANONYMOUS
    objects[("pods", "a", "p")] = {"metadata": {"name": "p", "uid": "pod-2"}}  # recreated pod
    with pytest.raises(ApiError) as err:
        auth.authenticate(f"Bearer {token}")
    assert err.value.code == 401
    with pytest.raises(ApiError):
        auth.authenticate("Bearer nonsense")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"metadata": {"name": "x/../../escape"}}, "metadata.name", id="name-escape"),
        pytest.param(
            {
                "metadata": {"name": "p"},
                "spec": {
                    "containers": [{"name": "c"}],
                    "volumes": [{"name": "v", "hostPath": {"path": "/a/../../b"}}],
                },
            },
            "hostPath.path",
            id="hostpath-escape",
        ),
    ],
)
def test_the_store_refuses_names_and_paths_that_escape(body: dict[str, Any], field: str) -> None:
    from localcluster.store import Store

    store = Store()
    with pytest.raises(ApiError) as err:
        store.create(PODS, "default", body)
    assert err.value.code == 422 and field in err.value.message
    assert not store.list(PODS, None)[0]
