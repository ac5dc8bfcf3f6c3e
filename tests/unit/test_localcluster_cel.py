"""localcluster's CEL (cel-expr-python) and CRD validation rules (`x-kubernetes-validations`). Pure."""

from __future__ import annotations

import copy
import logging
import math
import pathlib
import re
from typing import Any

import pytest
import yaml

from localcluster import cel, celrules
from localcluster.errors import ApiError
from localcluster.store import Store

ROOT = pathlib.Path(__file__).parents[2]


@pytest.mark.parametrize(
    ("rule", "self_value", "expected"),
    [
        pytest.param("self.min <= self.max", {"min": 1, "max": 2}, True, id="field-compare"),
        pytest.param("self.min <= self.max", {"min": 3, "max": 2}, False, id="field-compare-false"),
        pytest.param("has(self.a) || has(self.b)", {"b": 0}, True, id="has-or"),
        pytest.param("has(self.a) != has(self.b)", {"a": 1, "b": 2}, False, id="has-xor"),
        pytest.param("!has(self.a)", {}, True, id="not-has"),
        pytest.param("1 + 2 * 3 == 7", None, True, id="precedence"),
        pytest.param("(1 + 2) * 3", None, 9, id="parentheses"),
        pytest.param("-7 / 2", None, -3, id="int-division-truncates"),
        pytest.param("-7 % 3", None, -1, id="modulo-sign-of-dividend"),
        pytest.param("7.0 / 2.0", None, 3.5, id="double-division"),
        pytest.param(
            "self.i < self.d && self.d2 == self.i2",
            {"i": 1, "d": 1.5, "d2": 2.0, "i2": 2},
            True,
            id="numbers-compare-across-types",
        ),
        pytest.param("'ab' + \"c\" == 'abc'", None, True, id="string-concat-both-quotes"),
        pytest.param("'a\\'b'", None, "a'b", id="string-escape"),
        pytest.param("size(self) == 3 && self.size() == 3", [1, 2, 3], True, id="size-both-forms"),
        pytest.param("size('héllo')", None, 5, id="size-counts-code-points"),
        pytest.param("'b' in ['a', 'b']", None, True, id="in-list"),
        pytest.param("'k' in {'k': 1}", None, True, id="in-map-keys"),
        pytest.param("self[1] == 'y' && self[0] != 'y'", ["x", "y"], True, id="list-index"),
        pytest.param("self['a-b'] == 1", {"a-b": 1}, True, id="map-index"),
        pytest.param("self.x == null", {"x": None}, True, id="null-literal"),
        pytest.param("self.t == self.one", {"t": True, "one": 1}, False, id="bool-is-not-int"),
        pytest.param("self.all(x, x > 0)", [1, 2], True, id="macro-all"),
        pytest.param("self.all(x, x > 0)", [1, -2], False, id="macro-all-false"),
        pytest.param("self.exists(x, x == 1)", [0, 1], True, id="macro-exists"),
        pytest.param(
            "self.exists_one(k, k.startsWith('a'))", {"ab": 1, "b": 2}, True, id="macro-exists-one-map-keys"
        ),
        pytest.param("self.map(x, x * 2) == [2, 4]", [1, 2], True, id="macro-map"),
        pytest.param("self.filter(x, x > 1).size()", [1, 2, 3], 2, id="macro-filter"),
        pytest.param(
            "self.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')", {"name": "job-1"}, True, id="regex-matches"
        ),
        pytest.param("self.name.matches('^[a-z]+$')", {"name": "Job"}, False, id="regex-no-match"),
        pytest.param("int(self.x) == 2", {"x": 2.7}, True, id="type-conversion"),
        pytest.param("self.?x.orValue(3)", {}, 3, id="optional-syntax"),
        pytest.param("self.split('.').size()", "a.b.c", 3, id="strings-extension"),
        pytest.param("[1, [2]] == [1.0, [2]]", None, True, id="list-equality-deep"),
        pytest.param("self.n > 0 ? 'pos' : 'neg'", {"n": -1}, "neg", id="conditional"),
        pytest.param(
            "self.s.startsWith('ab') && self.s.endsWith('c')", {"s": "abc"}, True, id="string-methods"
        ),
        pytest.param("self.s.contains('zz')", {"s": "abc"}, False, id="contains"),
        pytest.param("false && self.missing", {}, False, id="and-absorbs-error"),
        pytest.param("self.missing || true", {}, True, id="or-absorbs-error-on-left"),
        pytest.param("-9223372036854775808 < 0", None, True, id="int64-min-literal"),
        pytest.param("0x1F == 31", None, True, id="hex-literal"),
        pytest.param("1e3 == 1000.0", None, True, id="exponent-literal"),
    ],
)
def test_cel_evaluates(rule: str, self_value: Any, expected: Any) -> None:
    result = cel.compile_rule(rule).evaluate(self_value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("rule", "self_value", "message"),
    [
        pytest.param("self.min <= self.max", {"max": 1}, 'Key not found in map : "min"', id="missing-key"),
        pytest.param("self.a.b", {"a": 1}, "SELECT to non-message", id="select-on-int"),
        pytest.param("1 / 0", None, "divide by zero", id="int-division-by-zero"),
        pytest.param("1 % 0", None, "modulus by zero", id="modulus-by-zero"),
        pytest.param("self.i + self.d", {"i": 1, "d": 1.0}, "_+_(int64, double)", id="mixed-add"),
        pytest.param("self.s < self.i", {"s": "a", "i": 1}, "_<_(string, int64)", id="string-vs-int"),
        pytest.param("!self.x", {"x": 1}, "No matching overloads found : !_", id="not-on-int"),
        pytest.param("9223372036854775807 + 1", None, "integer overflow", id="overflow"),
        pytest.param("self[2]", [1], "index=2 size=1", id="index-out-of-bounds"),
        pytest.param("true && self.missing", {}, "Key not found", id="and-keeps-error"),
        pytest.param("self.a in self.b", {"a": 1, "b": 2}, "@in", id="in-needs-container"),
        pytest.param("size(self.x)", {"x": 1}, "size(int64)", id="size-of-int"),
    ],
)
def test_cel_runtime_errors(rule: str, self_value: Any, message: str) -> None:
    with pytest.raises(cel.CelEvalError, match=re.escape(message)):
        cel.compile_rule(rule).evaluate(self_value)


def test_cel_double_division_by_zero_is_ieee() -> None:
    assert cel.compile_rule("1.0 / 0.0").evaluate(None) == math.inf
    assert math.isnan(cel.compile_rule("0.0 / 0.0").evaluate(None))


@pytest.mark.parametrize(
    "rule",
    [
        pytest.param("other.x == 1", id="undeclared-variable"),
        pytest.param("self.x ==", id="truncated"),
        pytest.param("self.x = 1", id="single-equals"),
        pytest.param("has(self)", id="has-needs-a-field"),
        pytest.param("self.isSorted()", id="kubernetes-list-library"),
        pytest.param("quantity('1Gi').isGreaterThan(quantity('1Mi'))", id="kubernetes-quantity-library"),
        pytest.param("1 < 1.5", id="mixed-literal-types-fail-type-checking"),
    ],
)
def test_cel_unsupported_is_reported_at_compile_time(rule: str) -> None:
    with pytest.raises(cel.CelUnsupported):
        cel.compile_rule(rule)


def test_transition_rules_are_recognised() -> None:
    assert cel.compile_rule("self == oldSelf").uses_old_self
    assert not cel.compile_rule("self.min <= self.max").uses_old_self
    assert cel.compile_rule("self >= oldSelf").evaluate(3, 2) is True


# ------------------------------------------------------------------------------- rules on objects
def _trainingjob_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "trainingjobs.elastra.dev.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


_GOOD_SPEC: dict[str, Any] = {
    "replicas": {"min": 1, "max": 2},
    "checkpoint": {"everySteps": 5, "directory": {"path": "/tmp/x"}},
    "template": {"spec": {"containers": [{"name": "trainer", "image": "trainer:dev"}]}},
}


def _job(**spec_changes: Any) -> dict[str, Any]:
    spec = copy.deepcopy(_GOOD_SPEC)
    for key, value in spec_changes.items():
        if value is None:
            spec.pop(key)
        else:
            spec[key] = value
    return {
        "apiVersion": "elastra.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "j"},
        "spec": spec,
    }


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        pytest.param(_job(), [], id="valid"),
        pytest.param(
            _job(replicas={"min": 3, "max": 2}),
            [("spec.replicas", 'Invalid value: "object": replicas.min must be <= max')],
            id="min-above-max",
        ),
        pytest.param(
            _job(checkpoint={"directory": {"path": "/x"}}),
            [("spec.checkpoint", 'Invalid value: "object": checkpoint needs everySteps and/or everySeconds')],
            id="no-interval",
        ),
        pytest.param(
            _job(checkpoint={"everySeconds": 5, "directory": {"path": "/x"}, "s3": {"bucket": "b"}}),
            [
                (
                    "spec.checkpoint",
                    'Invalid value: "object": checkpoint needs exactly one durable tier: s3 or directory',
                )
            ],
            id="two-tiers",
        ),
        pytest.param(
            _job(replicas={"min": 3}),
            [
                (
                    "spec.replicas",
                    'Invalid value: "object": NOT_FOUND: Key not found in map : "max" evaluating rule: '
                    "self.min <= self.max",
                )
            ],
            id="evaluation-error-names-the-rule",
        ),
    ],
)
def test_trainingjob_rules(job: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    errors = celrules.check(_trainingjob_schema(), job, None, skip_status=True)
    assert [(e.field, e.message) for e in errors] == expected
    assert all(e.reason == "FieldValueInvalid" for e in errors)


def _schema_with(rules: list[dict[str, Any]], **node: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "properties": {"v": {**node, "x-kubernetes-validations": rules}}},
            "status": {"type": "object", "properties": {"v": {**node, "x-kubernetes-validations": rules}}},
        },
    }


@pytest.mark.parametrize(
    ("rules", "node", "new", "old", "expected"),
    [
        pytest.param(
            [{"rule": "self >= oldSelf", "message": "may not shrink"}],
            {"type": "integer"},
            {"spec": {"v": 1}},
            {"spec": {"v": 2}},
            [("spec.v", 'Invalid value: "integer": may not shrink')],
            id="transition-rule-on-update",
        ),
        pytest.param(
            [{"rule": "self >= oldSelf"}],
            {"type": "integer"},
            {"spec": {"v": 1}},
            None,
            [],
            id="transition-rule-skipped-on-create",
        ),
        pytest.param(
            [{"rule": "self > 10"}],
            {"type": "integer"},
            {"spec": {"v": 1}},
            {"spec": {"v": 1}},
            [],
            id="unchanged-value-ratchets",
        ),
        pytest.param(
            [{"rule": "self > 10"}],
            {"type": "integer"},
            {"spec": {"v": 1}},
            None,
            [("spec.v", 'Invalid value: "integer": failed rule: self > 10')],
            id="default-message",
        ),
        pytest.param(
            [{"rule": "self > 10"}],
            {"type": "integer"},
            {"spec": {"v": None}},
            None,
            [],
            id="null-not-evaluated",
        ),
        pytest.param(
            [{"rule": "self * 1.5 > 2.0"}],
            {"type": "number"},
            {"spec": {"v": 1}},
            None,
            [("spec.v", 'Invalid value: "number": failed rule: self * 1.5 > 2.0')],
            id="json-int-in-number-field-is-double",
        ),
        pytest.param(
            [
                {
                    "rule": "has(self.a)",
                    "reason": "FieldValueRequired",
                    "fieldPath": ".a",
                    "message": "a please",
                }
            ],
            {"type": "object", "properties": {"a": {"type": "string"}}},
            {"spec": {"v": {}}},
            None,
            [("spec.v.a", "Required value: a please")],
            id="reason-and-field-path",
        ),
        pytest.param(
            [{"rule": "self.all(x, x > 0)"}],
            {"type": "array", "items": {"type": "integer"}},
            {"spec": {"v": [-1]}},
            None,
            [("spec.v", 'Invalid value: "array": failed rule: self.all(x, x > 0)')],
            id="macro-rule-enforced",
        ),
        pytest.param(
            [{"rule": "self.isSorted()"}],
            {"type": "array", "items": {"type": "integer"}},
            {"spec": {"v": [2, 1]}},
            None,
            [],
            id="unsupported-rule-not-evaluated",
        ),
        pytest.param(
            [{"rule": "self > 10"}],
            {"type": "integer"},
            {"status": {"v": 1}},
            None,
            [],
            id="status-skipped-on-create",
        ),
        pytest.param(
            [{"rule": "self > 10"}],
            {"type": "integer"},
            {"status": {"v": 1}},
            {"status": {"v": 20}},
            [("status.v", 'Invalid value: "integer": failed rule: self > 10')],
            id="status-checked-on-status-write",
        ),
    ],
)
def test_rule_semantics(
    rules: list[dict[str, Any]],
    node: dict[str, Any],
    new: dict[str, Any],
    old: dict[str, Any] | None,
    expected: list[tuple[str, str]],
) -> None:
    errors = celrules.check(_schema_with(rules, **node), new, old, skip_status=True)
    assert [(e.field, e.message) for e in errors] == expected


def test_rules_inside_lists_and_maps() -> None:
    item = {
        "type": "object",
        "x-kubernetes-validations": [{"rule": "self.lo <= self.hi", "message": "lo>hi"}],
    }
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "ranges": {
                        "type": "array",
                        "items": item,
                        "x-kubernetes-list-type": "map",
                        "x-kubernetes-list-map-keys": ["name"],
                    },
                    "byName": {"type": "object", "additionalProperties": item},
                },
            }
        },
    }
    bad = {"name": "b", "lo": 2, "hi": 1}
    new = {"spec": {"ranges": [{"name": "a", "lo": 0, "hi": 1}, bad], "byName": {"k": bad}}}
    errors = celrules.check(schema, new, None, skip_status=False)
    assert [e.field for e in errors] == ["spec.ranges[1]", "spec.byName.k"]
    # the same bad item already stored under its key ratchets; a new bad key does not
    old = {"spec": {"ranges": [bad], "byName": {"k": bad}}}
    assert celrules.check(schema, new, old, skip_status=False) == []


def test_unsupported_rules_are_listed_with_their_place() -> None:
    schema = _schema_with([{"rule": "self.isSorted()"}, {"rule": "self.all(x, x > 0)"}], type="array")
    found = celrules.unsupported_rules(schema)
    assert [(u.field, u.rule) for u in found] == [
        ("spec.v", "self.isSorted()"),
        ("status.v", "self.isSorted()"),
    ]
    assert "isSorted" in found[0].reason
    assert celrules.unsupported_rules(_trainingjob_schema()) == []


# ------------------------------------------------------------------------------- in the store
def _store_with_trainingjobs() -> tuple[Store, Any]:
    store = Store(validation_rules=True)
    crds = store.type_of("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    store.create(crds, "", yaml.safe_load((ROOT / "crds" / "trainingjobs.elastra.dev.yaml").read_text()))
    return store, store.type_of("elastra.dev", "v1alpha1", "trainingjobs")


def test_store_refuses_rule_breaking_objects_with_422() -> None:
    store, jobs = _store_with_trainingjobs()
    with pytest.raises(ApiError) as err:
        store.create(jobs, "default", _job(replicas={"min": 3, "max": 2}))
    assert err.value.code == 422
    assert err.value.message == (
        'TrainingJob.elastra.dev "j" is invalid: '
        'spec.replicas: Invalid value: "object": replicas.min must be <= max'
    )
    assert err.value.details is not None
    assert err.value.details["causes"] == [
        {
            "reason": "FieldValueInvalid",
            "message": 'Invalid value: "object": replicas.min must be <= max',
            "field": "spec.replicas",
        }
    ]
    created = store.create(jobs, "default", _job())
    with pytest.raises(ApiError, match=re.escape("replicas.min must be <= max")):
        store.update(
            jobs, "default", "j", {**created, "spec": {**created["spec"], "replicas": {"min": 5, "max": 2}}}
        )
    status_write = {**created, "status": {"phase": "Running"}}
    assert (
        store.update(jobs, "default", "j", status_write, subresource="status")["status"]["phase"] == "Running"
    )


def test_store_with_rules_off_accepts_them() -> None:
    store = Store(validation_rules=False)
    crds = store.type_of("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    store.create(crds, "", yaml.safe_load((ROOT / "crds" / "trainingjobs.elastra.dev.yaml").read_text()))
    jobs = store.type_of("elastra.dev", "v1alpha1", "trainingjobs")
    assert store.create(jobs, "default", _job(replicas={"min": 3, "max": 2}))["spec"]["replicas"]["min"] == 3


def test_store_warns_once_about_rules_it_cannot_evaluate(caplog: pytest.LogCaptureFixture) -> None:
    crd = yaml.safe_load((ROOT / "crds" / "trainingjobs.elastra.dev.yaml").read_text())
    replicas = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "replicas"
    ]
    replicas["x-kubernetes-validations"].append({"rule": "[self.min].isSorted()"})
    store = Store(validation_rules=True)
    crds = store.type_of("apiextensions.k8s.io", "v1", "customresourcedefinitions")
    with caplog.at_level(logging.WARNING, logger="localcluster.admission"):
        stored = store.create(crds, "", crd)
        store.update(
            crds,
            "",
            stored["metadata"]["name"],
            {**stored, "metadata": {**stored["metadata"], "labels": {"a": "b"}}},
        )
    warnings = [r.getMessage() for r in caplog.records if "not evaluated" in r.getMessage()]
    assert len(warnings) == 1 and "[self.min].isSorted()" in warnings[0] and "spec.replicas" in warnings[0]
    jobs = store.type_of("elastra.dev", "v1alpha1", "trainingjobs")
    with pytest.raises(
        ApiError, match=re.escape("replicas.min must be <= max")
    ):  # the other rules still apply
        store.create(jobs, "default", _job(replicas={"min": 3, "max": 2}))
