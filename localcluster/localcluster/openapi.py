"""OpenAPI documents of the served kinds: `/openapi/v2` (swagger 2.0, as JSON or as the gnostic
protobuf kubectl asks for) and the component schemas of `/openapi/v3`. Pure: built from resource types.

Only kinds with a schema (those CRDs add) get definitions; both versions publish the same schema,
with `apiVersion`, `kind` and `metadata` added as the real server does. Built-in kinds get none: kubectl
computes strategic merge patches for them from its compiled-in types, which know the merge keys, and a
published schema without `x-kubernetes-patch-strategy` would make it replace lists instead. Each custom
resource's PATCH lists the patch types a real server accepts for custom resources (no strategic merge),
so `kubectl apply` sends JSON merge patches for them, in both versions.
"""

from __future__ import annotations

import copy
import json
import struct
from typing import Any

from localcluster.resources import ResourceType

PROTOBUF_V2 = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
CUSTOM_RESOURCE_PATCH_TYPES = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)
# Schema keywords swagger 2.0 has no place for (the real server drops them from v2 too).
_NOT_IN_V2 = frozenset({"anyOf", "oneOf", "not", "nullable"})
_TYPE_META = {
    "apiVersion": {
        "type": "string",
        "description": "APIVersion defines the versioned schema of this representation of an object.",
    },
    "kind": {"type": "string", "description": "Kind is a string value representing the REST resource."},
    "metadata": {"type": "object", "description": "Standard object's metadata."},
}


def definition_name(rt: ResourceType) -> str:
    """The definition's name, as the real server spells it: reversed group, version, kind."""
    group = ".".join(reversed(rt.group.split("."))) if rt.group else "io.k8s.api.core"
    return f"{group}.{rt.version}.{rt.kind}"


def kind_schema(rt: ResourceType, *, v2: bool) -> dict[str, Any] | None:
    """A kind's published schema with its group-version-kind; None for kinds without a schema."""
    if rt.schema is None:
        return None
    schema = _without(copy.deepcopy(rt.schema), _NOT_IN_V2) if v2 else copy.deepcopy(rt.schema)
    schema.setdefault("type", "object")
    schema["properties"] = {**_TYPE_META, **(schema.get("properties") or {})}
    schema["x-kubernetes-group-version-kind"] = [{"group": rt.group, "kind": rt.kind, "version": rt.version}]
    return schema


def _without(schema: Any, keywords: frozenset[str]) -> Any:
    if isinstance(schema, dict):
        return {k: _without(v, keywords) for k, v in schema.items() if k not in keywords}
    if isinstance(schema, list):
        return [_without(v, keywords) for v in schema]
    return schema


def object_path(rt: ResourceType) -> str:
    """The URL template of one object of a kind."""
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else f"/api/{rt.version}"
    if rt.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
    return f"{prefix}/{rt.plural}/{{name}}"


def v2_document(types: list[ResourceType], version: str) -> dict[str, Any]:
    """`/openapi/v2`: definitions and the GET/PATCH operations of every kind with a schema."""
    definitions: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for rt in sorted(types, key=lambda t: (t.group, t.version, t.plural)):
        schema = kind_schema(rt, v2=True)
        if schema is None:
            continue
        name = definition_name(rt)
        definitions[name] = schema
        gvk = {"group": rt.group, "kind": rt.kind, "version": rt.version}
        ok = {"200": {"description": "OK", "schema": {"$ref": f"#/definitions/{name}"}}}
        paths[object_path(rt)] = {
            "get": {
                "operationId": f"read{rt.kind}",
                "produces": ["application/json"],
                "responses": ok,
                "x-kubernetes-group-version-kind": gvk,
            },
            "patch": {
                "operationId": f"patch{rt.kind}",
                "consumes": list(CUSTOM_RESOURCE_PATCH_TYPES),
                "produces": ["application/json"],
                "responses": ok,
                "x-kubernetes-group-version-kind": gvk,
            },
        }
    return {
        "swagger": "2.0",
        "info": {"title": "Kubernetes", "version": version},
        "paths": paths,
        "definitions": definitions,
    }


# ------------------------------------------------------------------ gnostic protobuf (openapi_v2.Document)
def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 as two's complement, like protobuf
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _bytes_field(number, text.encode())


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(int(value))


def _double(number: int, value: float) -> bytes:
    return _varint(number << 3 | 1) + struct.pack("<d", float(value))


def _any(number: int, value: Any) -> bytes:
    """An `openapi_v2.Any`: the value as YAML text (JSON is YAML)."""
    return _bytes_field(number, _string(2, json.dumps(value)))


def _named_any(number: int, name: str, value: Any) -> bytes:
    return _bytes_field(number, _string(1, name) + _any(2, value))


# Scalar keywords of `openapi_v2.Schema`: keyword -> (field number, encoder).
_SCHEMA_SCALARS: dict[str, tuple[int, Any]] = {
    "$ref": (1, _string),
    "format": (2, _string),
    "title": (3, _string),
    "description": (4, _string),
    "default": (5, _any),
    "multipleOf": (6, _double),
    "maximum": (7, _double),
    "exclusiveMaximum": (8, _int),
    "minimum": (9, _double),
    "exclusiveMinimum": (10, _int),
    "maxLength": (11, _int),
    "minLength": (12, _int),
    "pattern": (13, _string),
    "maxItems": (14, _int),
    "minItems": (15, _int),
    "uniqueItems": (16, _int),
    "maxProperties": (17, _int),
    "minProperties": (18, _int),
    "discriminator": (26, _string),
    "readOnly": (27, _int),
    "example": (30, _any),
}


def _schema(schema: dict[str, Any]) -> bytes:
    out = bytearray()
    for key, value in schema.items():
        if key in _SCHEMA_SCALARS:
            number, encode = _SCHEMA_SCALARS[key]
            out += encode(number, value)
        elif key == "required":
            out += b"".join(_string(19, str(v)) for v in value)
        elif key == "enum":
            out += b"".join(_any(20, v) for v in value)
        elif key == "additionalProperties":
            item = _bytes_field(1, _schema(value)) if isinstance(value, dict) else _int(2, bool(value))
            out += _bytes_field(21, item)
        elif key == "type":
            kinds = value if isinstance(value, list) else [value]
            out += _bytes_field(22, b"".join(_string(1, str(v)) for v in kinds))
        elif key == "items":
            items = value if isinstance(value, list) else [value]
            out += _bytes_field(23, b"".join(_bytes_field(1, _schema(v)) for v in items))
        elif key == "allOf":
            out += b"".join(_bytes_field(24, _schema(v)) for v in value)
        elif key == "properties":
            named = (_bytes_field(1, _string(1, k) + _bytes_field(2, _schema(v))) for k, v in value.items())
            out += _bytes_field(25, b"".join(named))
        elif key.startswith("x-"):
            out += _named_any(31, key, value)
    return bytes(out)


def _operation(op: dict[str, Any]) -> bytes:
    out = bytearray(_string(5, op.get("operationId", "")))
    out += b"".join(_string(6, v) for v in op.get("produces", []))
    out += b"".join(_string(7, v) for v in op.get("consumes", []))
    codes = bytearray()
    for code, response in (op.get("responses") or {}).items():
        body = _string(1, response.get("description", ""))
        if "schema" in response:
            body += _bytes_field(2, _bytes_field(1, _schema(response["schema"])))
        codes += _bytes_field(1, _string(1, code) + _bytes_field(2, _bytes_field(1, body)))
    out += _bytes_field(9, bytes(codes))
    out += b"".join(_named_any(13, k, v) for k, v in op.items() if k.startswith("x-"))
    return bytes(out)


_OPERATION_FIELDS = {"get": 2, "put": 3, "post": 4, "delete": 5, "options": 6, "head": 7, "patch": 8}


def v2_protobuf(document: dict[str, Any]) -> bytes:
    """A `v2_document` as the gnostic `openapi_v2.Document` protobuf client-go decodes."""
    info = document.get("info") or {}
    out = bytearray(_string(1, document.get("swagger", "2.0")))
    out += _bytes_field(2, _string(1, info.get("title", "")) + _string(2, info.get("version", "")))
    paths = bytearray()
    for path, item in (document.get("paths") or {}).items():
        body = b"".join(
            _bytes_field(_OPERATION_FIELDS[verb], _operation(op))
            for verb, op in item.items()
            if verb in _OPERATION_FIELDS
        )
        paths += _bytes_field(2, _string(1, path) + _bytes_field(2, body))
    out += _bytes_field(8, bytes(paths))
    definitions = b"".join(
        _bytes_field(1, _string(1, name) + _bytes_field(2, _schema(schema)))
        for name, schema in (document.get("definitions") or {}).items()
    )
    out += _bytes_field(9, definitions)
    return bytes(out)
