"""Structural OpenAPI v3 schemas of CRDs: defaulting, pruning and validation. Pure: no I/O.

Supports what CRDs written for Elastra and Kopf use: type, properties, required, items, enum,
minimum/maximum (with exclusive forms), minLength/maxLength, pattern, minItems/maxItems,
additionalProperties, nullable, default, anyOf/oneOf/allOf, x-kubernetes-preserve-unknown-fields and
x-kubernetes-int-or-string. CEL rules (x-kubernetes-validations) are not evaluated.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

# Top-level fields the API server handles itself; the schema does not apply to them.
_SYSTEM_FIELDS = ("apiVersion", "kind", "metadata")


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation failure, as a `StatusCause` of a 422 answer."""

    field: str
    """Dotted path, e.g. `spec.replicas.min` or `spec.items[2]`."""
    reason: str
    """`FieldValueRequired`, `FieldValueInvalid`, `FieldValueNotSupported` or `FieldValueTypeInvalid`."""
    message: str
    """Human-readable, in the style of the real API server."""


def apply_defaults(schema: dict[str, Any], obj: Any) -> Any:
    """Return a copy of `obj` with schema defaults filled in and unknown fields pruned."""
    result = copy.deepcopy(obj)
    if isinstance(result, dict):
        props = schema.get("properties") or {}
        for key in list(result):
            if key in _SYSTEM_FIELDS:
                continue
            if key in props:
                result[key] = _default_and_prune(props[key], result[key])
            elif not _keeps_unknown(schema):
                del result[key]
        for key, sub in props.items():
            if key not in result and key not in _SYSTEM_FIELDS and "default" in sub:
                result[key] = _default_and_prune(sub, copy.deepcopy(sub["default"]))
    return result


def _keeps_unknown(schema: dict[str, Any]) -> bool:
    return bool(schema.get("x-kubernetes-preserve-unknown-fields"))


def _default_and_prune(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        if props is not None:
            for key in list(value):
                if key in props:
                    value[key] = _default_and_prune(props[key], value[key])
                elif isinstance(additional, dict):
                    value[key] = _default_and_prune(additional, value[key])
                elif not _keeps_unknown(schema) and additional is not True:
                    del value[key]
            for key, sub in props.items():
                if key not in value and "default" in sub:
                    value[key] = _default_and_prune(sub, copy.deepcopy(sub["default"]))
        elif isinstance(additional, dict):
            for key in list(value):
                value[key] = _default_and_prune(additional, value[key])
        elif schema.get("type") == "object" and not _keeps_unknown(schema) and additional is None:
            value.clear()
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_default_and_prune(schema["items"], v) for v in value]
    return value


def unknown_fields(schema: dict[str, Any], obj: Any, path: str = "") -> list[str]:
    """Paths of the fields `apply_defaults` would prune (what `fieldValidation=Strict` refuses)."""
    found: list[str] = []
    if isinstance(obj, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        keeps = _keeps_unknown(schema) or additional is True
        for key, value in obj.items():
            if not path and key in _SYSTEM_FIELDS:
                continue
            sub_path = f"{path}.{key}" if path else key
            if props is not None and key in props:
                found += unknown_fields(props[key], value, sub_path)
            elif isinstance(additional, dict):
                found += unknown_fields(additional, value, sub_path)
            elif keeps:
                continue
            elif not path or props is not None or (schema.get("type") == "object" and additional is None):
                found.append(sub_path)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            found += unknown_fields(schema["items"], item, f"{path}[{i}]")
    return found


def validate(schema: dict[str, Any], obj: dict[str, Any]) -> list[FieldError]:
    """All validation failures of an object against a CRD version's openAPIV3Schema."""
    errors: list[FieldError] = []
    props = schema.get("properties") or {}
    for key in schema.get("required") or []:
        if key not in _SYSTEM_FIELDS and key not in obj:
            errors.append(FieldError(key, "FieldValueRequired", "Required value"))
    for key, value in obj.items():
        if key in props and key not in _SYSTEM_FIELDS:
            _check(props[key], value, key, errors)
    return errors


def _type_ok(schema: dict[str, Any], value: Any) -> bool:
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str | int) and not isinstance(value, bool)
    expected = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    return expected is None or expected not in checks or checks[expected](value)


def _check(schema: dict[str, Any], value: Any, path: str, errors: list[FieldError]) -> None:  # noqa: PLR0912
    if value is None:
        if not schema.get("nullable"):
            errors.append(
                FieldError(
                    path,
                    "FieldValueTypeInvalid",
                    f'Invalid value: "null": {path} in body must be of type '
                    f'{schema.get("type", "object")}: "null"',
                )
            )
        return
    if not _type_ok(schema, value):
        errors.append(
            FieldError(
                path,
                "FieldValueTypeInvalid",
                f"Invalid value: {_show(value)}: {path} in body must be of type {schema.get('type')}: "
                f'"{_json_type(value)}"',
            )
        )
        return
    _check_scalar(schema, value, path, errors)
    for combinator in ("allOf", "anyOf", "oneOf"):
        subs = schema.get(combinator)
        if not subs:
            continue
        results = []
        for sub in subs:
            sub_errors: list[FieldError] = []
            _check(sub, value, path, sub_errors)
            results.append(sub_errors)
        passed = sum(1 for r in results if not r)
        if combinator == "allOf":
            for r in results:
                errors.extend(r)
        elif (combinator == "anyOf" and passed == 0) or (combinator == "oneOf" and passed != 1):
            errors.append(
                FieldError(
                    path,
                    "FieldValueInvalid",
                    f"Invalid value: {_show(value)}: {path} in body must match {combinator}",
                )
            )
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                errors.append(FieldError(f"{path}.{key}", "FieldValueRequired", "Required value"))
        additional = schema.get("additionalProperties")
        for key, sub_value in value.items():
            if key in props:
                _check(props[key], sub_value, f"{path}.{key}", errors)
            elif isinstance(additional, dict):
                _check(additional, sub_value, f"{path}.{key}", errors)
    elif isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            for i, item in enumerate(value):
                _check(items, item, f"{path}[{i}]", errors)


def _check_scalar(  # noqa: PLR0912 - one branch per keyword
    schema: dict[str, Any], value: Any, path: str, errors: list[FieldError]
) -> None:
    def fail(reason: str, message: str) -> None:
        errors.append(FieldError(path, reason, f"Invalid value: {_show(value)}: {message}"))

    if "enum" in schema and value not in schema["enum"]:
        allowed = ", ".join(_show(v) for v in schema["enum"])
        errors.append(
            FieldError(
                path,
                "FieldValueNotSupported",
                f"Unsupported value: {_show(value)}: supported values: {allowed}",
            )
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            low = schema["minimum"]
            if value < low or (schema.get("exclusiveMinimum") is True and value == low):
                fail("FieldValueInvalid", f"{path} in body should be greater than or equal to {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if value > high or (schema.get("exclusiveMaximum") is True and value == high):
                fail("FieldValueInvalid", f"{path} in body should be less than or equal to {high}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            fail("FieldValueInvalid", f"{path} in body should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            fail("FieldValueInvalid", f"{path} in body may not be longer than {schema['maxLength']}")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            fail("FieldValueInvalid", f"{path} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            fail("FieldValueInvalid", f"{path} in body should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            fail("FieldValueInvalid", f"{path} in body should have at most {schema['maxItems']} items")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return '"' + _json_type(value) + '"'
    return str(value)
