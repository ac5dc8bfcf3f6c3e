"""CRD validation rules (`x-kubernetes-validations`) applied to objects, as kube-apiserver does. Pure.

Each rule sits on a schema node and sees that node's value as `self` (and, on updates, the old value
as `oldSelf`). A rule that evaluates to false fails with its `message` (default `failed rule: <rule>`)
at the node's path (plus the rule's `fieldPath`), with the rule's `reason` (default
FieldValueInvalid); an evaluation error fails with `<error> evaluating rule: <rule>`.

Like the real server: rules are not evaluated on null values; transition rules (those naming
`oldSelf`) run only on updates where the old object has a value at that node; unchanged values are
not re-checked on update (validation ratcheting, on by default since Kubernetes 1.30), so a status
write never fails on a spec rule and a spec write never fails on a status rule; on create, `status`
is skipped when the status subresource is enabled (the server drops it). Old list items are matched
to new ones only for `x-kubernetes-list-type: map` lists, by their keys. Rules that
`localcluster.cel` cannot compile (Kubernetes-only libraries) are not evaluated: `unsupported_rules`
lists them so the caller can warn.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from localcluster import cel
from localcluster.schema import FieldError

_SYSTEM_FIELDS = frozenset({"apiVersion", "kind", "metadata"})
_ABSENT: Any = object()
_REASON_PREFIX = {
    "FieldValueForbidden": "Forbidden: {message}",
    "FieldValueRequired": "Required value: {message}",
    "FieldValueDuplicate": 'Duplicate value: "{type}": {message}',
}


@dataclass(frozen=True, slots=True)
class UnsupportedRule:
    """A rule `localcluster.cel` cannot evaluate, and so skips."""

    field: str
    """The schema node's path, e.g. `spec.replicas` (`<root>` for the top level)."""
    rule: str
    """The rule text."""
    reason: str
    """Why it cannot be evaluated."""


def unsupported_rules(schema: dict[str, Any], path: str = "") -> list[UnsupportedRule]:
    """Every rule under a schema that `localcluster.cel` cannot compile."""
    found: list[UnsupportedRule] = []
    for rule in schema.get("x-kubernetes-validations") or []:
        try:
            cel.compile_rule(str(rule.get("rule", "")))
        except cel.CelUnsupported as exc:
            found.append(UnsupportedRule(path or "<root>", str(rule.get("rule", "")), str(exc)))
    for key, sub in (schema.get("properties") or {}).items():
        if isinstance(sub, dict):
            found.extend(unsupported_rules(sub, _join(path, key)))
    for keyword, suffix in (("additionalProperties", ".*"), ("items", "[*]")):
        sub = schema.get(keyword)
        if isinstance(sub, dict):
            found.extend(unsupported_rules(sub, (path or "<root>") + suffix))
    return found


def check(
    schema: dict[str, Any], obj: dict[str, Any], old: dict[str, Any] | None, *, skip_status: bool
) -> list[FieldError]:
    """Every failing rule of an object (`old`: the stored object on update, None on create)."""
    errors: list[FieldError] = []
    _check_rules(schema, obj, _ABSENT if old is None else old, "", errors)
    props = schema.get("properties") or {}
    for key, value in obj.items():
        if key in _SYSTEM_FIELDS or key not in props or (key == "status" and skip_status and old is None):
            continue
        old_value = old.get(key, _ABSENT) if old is not None else _ABSENT
        _walk(props[key], value, old_value, key, errors)
    return errors


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(schema: dict[str, Any], value: Any, old: Any, path: str, errors: list[FieldError]) -> None:
    if value is None or (old is not _ABSENT and cel.equal(value, old)):
        return
    _check_rules(schema, value, old, path, errors)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) else {}
        for key, sub_value in value.items():
            sub = props.get(key, additional)
            if isinstance(sub, dict):
                _walk(sub, sub_value, old_map.get(key, _ABSENT), _join(path, key), errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        olds = _old_items(schema, value, old)
        for i, item in enumerate(value):
            _walk(schema["items"], item, olds[i], f"{path}[{i}]", errors)


def _old_items(schema: dict[str, Any], items: list[Any], old: Any) -> list[Any]:
    """The old item matching each new one: by key for map-type lists, none otherwise."""
    keys = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not keys or not isinstance(old, list):
        return [_ABSENT] * len(items)

    def key_of(item: Any) -> tuple[Any, ...] | None:
        if not isinstance(item, dict):
            return None
        return tuple(repr(item.get(k)) for k in keys)

    by_key = {key_of(item): item for item in old if key_of(item) is not None}
    return [by_key.get(key_of(item), _ABSENT) for item in items]


def _check_rules(schema: dict[str, Any], value: Any, old: Any, path: str, errors: list[FieldError]) -> None:
    rules = schema.get("x-kubernetes-validations") or []
    if not rules or value is None:
        return
    if old is not _ABSENT and cel.equal(value, old):
        return
    typed_value, typed_old = _typed(schema, value), _typed(schema, old)
    for rule in rules:
        source = str(rule.get("rule", ""))
        try:
            program = cel.compile_rule(source)
        except cel.CelUnsupported:
            continue  # listed by unsupported_rules when the CRD is registered
        if program.uses_old_self and old is _ABSENT:
            continue
        try:
            result = program.evaluate(typed_value, None if old is _ABSENT else typed_old)
            failure = None if result is True else _message(rule, source)
            if not isinstance(result, bool):
                failure = f"rule did not evaluate to a bool evaluating rule: {source}"
        except cel.CelEvalError as exc:
            failure = f"{exc} evaluating rule: {source}"
        if failure is not None:
            errors.append(_error(schema, rule, path, failure))


def _message(rule: dict[str, Any], source: str) -> str:
    return str(rule.get("message") or f"failed rule: {source}")


def _error(schema: dict[str, Any], rule: dict[str, Any], path: str, message: str) -> FieldError:
    field_path = str(rule.get("fieldPath") or "")
    if field_path:  # relative to the node: `.replicas.min` or `['min']`
        path = (path + field_path).lstrip(".")
    reason = str(rule.get("reason") or "FieldValueInvalid")
    type_name = str(schema.get("type", "object"))
    template = _REASON_PREFIX.get(reason, 'Invalid value: "{type}": {message}')
    return FieldError(path or "<nil>", reason, template.format(type=type_name, message=message))


def _typed(schema: dict[str, Any], value: Any) -> Any:
    """The value as CEL sees it under its schema: JSON integers in `number` fields are doubles."""
    if value is _ABSENT or value is None:
        return value
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        return {
            key: _typed(props.get(key) or (additional if isinstance(additional, dict) else {}), sub)
            for key, sub in value.items()
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_typed(schema["items"], item) for item in value]
    return value
