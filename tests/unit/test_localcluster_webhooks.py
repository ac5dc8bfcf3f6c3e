"""Which admission webhooks a request reaches (`localcluster.webhooks`, pure parts): rules, scope,
subresources, namespace and object selectors; the configuration checks; how a rejection reads."""

from __future__ import annotations

from typing import Any

import pytest

from localcluster import matchconditions, resources, webhooks
from localcluster.errors import ApiError

PODS = next(t for t in resources.BUILTIN_TYPES if t.plural == "pods")
NODES = next(t for t in resources.BUILTIN_TYPES if t.plural == "nodes")
RULE = {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "operations": ["CREATE"]}


def attrs(rt: Any = PODS, *, op: str = "CREATE", sub: str | None = None) -> webhooks.Attributes:
    ns = "team" if rt.namespaced else ""
    return webhooks.Attributes(
        rt=rt, subresource=sub, operation=op, namespace=ns, name="x", user=None, dry_run=False
    )


@pytest.mark.parametrize(
    ("rule", "request_attrs", "expected"),
    [
        pytest.param(RULE, attrs(), True, id="exact"),
        pytest.param(RULE, attrs(op="UPDATE"), False, id="other-operation"),
        pytest.param({**RULE, "operations": ["*"]}, attrs(op="UPDATE"), True, id="any-operation"),
        pytest.param(RULE, attrs(sub="status"), False, id="plain-resource-skips-subresource"),
        pytest.param({**RULE, "resources": ["pods/status"]}, attrs(sub="status"), True, id="subresource"),
        pytest.param({**RULE, "resources": ["pods/status"]}, attrs(), False, id="subresource-only"),
        pytest.param({**RULE, "resources": ["*"]}, attrs(sub="status"), False, id="star-no-subresources"),
        pytest.param({**RULE, "resources": ["*/*"]}, attrs(sub="status"), True, id="star-star"),
        pytest.param({**RULE, "apiGroups": ["apps"]}, attrs(), False, id="other-group"),
        pytest.param({**RULE, "apiVersions": ["v2"]}, attrs(), False, id="other-version"),
        pytest.param({**RULE, "scope": "Cluster"}, attrs(), False, id="cluster-scope-skips-namespaced"),
        pytest.param(
            {**RULE, "resources": ["*"], "scope": "Namespaced"},
            attrs(NODES),
            False,
            id="namespaced-skips-nodes",
        ),
    ],
)
def test_rule_matches(rule: dict[str, Any], request_attrs: webhooks.Attributes, expected: bool) -> None:
    assert webhooks.rule_matches(rule, request_attrs) is expected


EXISTS_ENV = {"key": "env", "operator": "Exists"}
POD = {"metadata": {"name": "x", "labels": {"app": "web"}}}


@pytest.mark.parametrize(
    ("hook", "obj", "old", "ns_labels", "expected"),
    [
        pytest.param({"rules": [RULE]}, POD, None, {}, True, id="no-selectors"),
        pytest.param(
            {"rules": [RULE], "namespaceSelector": {"matchLabels": {"env": "prod"}}},
            POD, None, {"env": "dev"}, False, id="namespace-selector-misses",
        ),
        pytest.param(
            {"rules": [RULE], "namespaceSelector": {"matchExpressions": [EXISTS_ENV]}},
            POD, None, {"env": "dev"}, True, id="namespace-selector-exists",
        ),
        pytest.param(
            {"rules": [RULE], "objectSelector": {"matchLabels": {"app": "db"}}},
            POD, None, {}, False, id="object-selector-misses",
        ),
        pytest.param(
            {"rules": [RULE], "objectSelector": {"matchLabels": {"app": "db"}}},
            POD, {"metadata": {"labels": {"app": "db"}}}, {}, True, id="object-selector-old-object",
        ),
        pytest.param(
            {"rules": [RULE], "objectSelector": {
                "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]
            }},
            POD, None, {}, False, id="object-selector-notin",
        ),
        pytest.param({"rules": []}, POD, None, {}, False, id="no-rules"),
    ],
)  # fmt: skip
def test_webhook_matches(
    hook: dict[str, Any],
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    ns_labels: dict[str, str],
    expected: bool,
) -> None:
    assert webhooks.webhook_matches(hook, attrs(), obj, old, ns_labels) is expected


GOOD = {
    "name": "a.example.dev",
    "clientConfig": {"url": "https://127.0.0.1:9443/"},
    "sideEffects": "None",
    "admissionReviewVersions": ["v1"],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        pytest.param({"sideEffects": "Some"}, "webhooks[0].sideEffects", id="side-effects-some"),
        pytest.param({"sideEffects": None}, "webhooks[0].sideEffects", id="side-effects-missing"),
        pytest.param(
            {"admissionReviewVersions": ["v1beta1"]}, "webhooks[0].admissionReviewVersions", id="v1"
        ),
        pytest.param({"timeoutSeconds": 31}, "webhooks[0].timeoutSeconds", id="timeout-over-30"),
        pytest.param({"failurePolicy": "Maybe"}, "webhooks[0].failurePolicy", id="failure-policy"),
        pytest.param({"clientConfig": {"url": "http://x/"}}, "webhooks[0].clientConfig.url", id="https-only"),
        pytest.param({"clientConfig": {}}, "webhooks[0].clientConfig", id="no-client-config"),
        pytest.param({"name": "short"}, "webhooks[0].name", id="name-not-a-domain"),
        pytest.param(
            {"matchConditions": [{"name": "a", "expression": "authorizer.group('') != null"}]},
            "webhooks[0].matchConditions[0].expression",
            id="match-condition-does-not-compile",
        ),
    ],
)
def test_configuration_checks(change: dict[str, Any], field: str) -> None:
    webhooks.check_configuration(
        "validatingwebhookconfigurations", {"metadata": {"name": "c"}, "webhooks": [GOOD]}
    )
    with pytest.raises(ApiError) as err:
        webhooks.check_configuration(
            "validatingwebhookconfigurations", {"metadata": {"name": "c"}, "webhooks": [{**GOOD, **change}]}
        )
    assert err.value.code == 422
    assert [c["field"] for c in (err.value.details or {})["causes"]] == [field]


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        pytest.param(
            None, 400, 'admission webhook "h.dev" denied the request without explanation', id="bare"
        ),
        pytest.param(
            {"code": 422, "message": "no"}, 422, 'admission webhook "h.dev" denied the request: no', id="msg"
        ),
        pytest.param(
            {"code": 200, "reason": "R"}, 400, 'admission webhook "h.dev" denied the request: R', id="code"
        ),
    ],
)
def test_denied_reads_like_kube_apiserver(status: dict[str, Any] | None, code: int, message: str) -> None:
    error = webhooks.denied("h.dev", status)
    assert (error.code, error.message) == (code, message)


def test_review_is_admission_review_v1() -> None:
    body = webhooks.review(attrs(sub="status", op="UPDATE"), POD, POD)
    request = body["request"]
    assert (body["apiVersion"], body["kind"]) == ("admission.k8s.io/v1", "AdmissionReview")
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert (request["subResource"], request["operation"], request["namespace"]) == (
        "status",
        "UPDATE",
        "team",
    )
    assert request["oldObject"] == POD and request["uid"]


REQUEST = {
    "operation": "CREATE",
    "object": {"metadata": {"name": "a", "labels": {"tier": "db"}}},
    "oldObject": None,
}


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        pytest.param(["object.metadata.labels['tier'] == 'db'"], True, id="true"),
        pytest.param(["request.operation == 'CREATE'", "oldObject == null"], True, id="all-true"),
        pytest.param(["request.operation == 'UPDATE'"], False, id="false-skips"),
        pytest.param(["object.metadata.missing == 1", "false"], False, id="false-wins-over-error"),
        pytest.param(["object.metadata.missing == 1"], matchconditions.ConditionError, id="error"),
        pytest.param(["'not a bool'"], matchconditions.ConditionError, id="not-bool"),
    ],
)
def test_match_conditions(expressions: list[str], expected: bool | type[Exception]) -> None:
    conditions = [{"name": f"c{i}", "expression": e} for i, e in enumerate(expressions)]
    if isinstance(expected, bool):
        assert matchconditions.matches(conditions, REQUEST) is expected
    else:
        with pytest.raises(expected):
            matchconditions.matches(conditions, REQUEST)
