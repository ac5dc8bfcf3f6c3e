"""localcluster's OpenAPI documents (/openapi/v2 as JSON and gnostic protobuf, /openapi/v3 component
schemas) and fieldValidation=Strict's unknown fields. Pure."""

from __future__ import annotations

import json
import pathlib
import struct
from typing import Any

import pytest
import yaml

from localcluster import discovery, openapi, protobuf, resources, schema
from localcluster.resources import ResourceType

ROOT = pathlib.Path(__file__).parents[2]


def _served() -> list[ResourceType]:
    served = list(resources.BUILTIN_TYPES)
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        served += resources.types_from_crd(yaml.safe_load(path.read_text()))
    return served


def test_v2_defines_every_kind_with_a_schema_and_no_builtin() -> None:
    doc = openapi.v2_document(_served(), "v1.32.0")
    assert doc["swagger"] == "2.0"
    assert sorted(doc["definitions"]) == [
        "dev.elastra.v1alpha1.Checkpoint",
        "dev.elastra.v1alpha1.TrainingJob",
    ]
    job = doc["definitions"]["dev.elastra.v1alpha1.TrainingJob"]
    assert job["x-kubernetes-group-version-kind"] == [
        {"group": "elastra.dev", "kind": "TrainingJob", "version": "v1alpha1"}
    ]
    assert {"apiVersion", "kind", "metadata", "spec", "status"} <= set(job["properties"])
    assert job["properties"]["spec"]["properties"]["replicas"]["required"] == ["min", "max"]
    path = doc["paths"]["/apis/elastra.dev/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"]
    assert "application/strategic-merge-patch+json" not in path["patch"]["consumes"]
    assert path["patch"]["x-kubernetes-group-version-kind"]["kind"] == "TrainingJob"
    assert not any("/api/v1/" in p for p in doc["paths"])


def _strip(value: Any, keywords: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v, keywords) for k, v in value.items() if k not in keywords}
    if isinstance(value, list):
        return [_strip(v, keywords) for v in value]
    return value


def test_v2_and_v3_publish_the_same_schema() -> None:
    rt = ResourceType(
        "example.dev",
        "v1",
        "things",
        "Thing",
        True,
        schema={
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "port": {
                            "anyOf": [{"type": "integer"}, {"type": "string"}],
                            "x-kubernetes-int-or-string": True,
                        },
                        "note": {"type": "string", "nullable": True},
                    },
                }
            },
        },
    )
    v2 = openapi.v2_document([rt], "v")["definitions"]["dev.example.v1.Thing"]
    v3 = discovery.openapi_v3_group_version([rt], "example.dev", "v1")["components"]["schemas"][
        "dev.example.v1.Thing"
    ]
    assert "anyOf" in json.dumps(v3) and "anyOf" not in json.dumps(v2)
    assert v2 == _strip(v3, frozenset({"anyOf", "oneOf", "not", "nullable"}))
    patch = discovery.openapi_v3_group_version([rt], "example.dev", "v1")["paths"][
        "/apis/example.dev/v1/namespaces/{namespace}/things/{name}"
    ]["patch"]
    assert set(patch["requestBody"]["content"]) == set(openapi.CUSTOM_RESOURCE_PATCH_TYPES)


def test_v3_builtin_kinds_keep_no_request_body_so_kubectl_uses_its_own_types() -> None:
    doc = discovery.openapi_v3_group_version(_served(), "apps", "v1")
    patch = doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "requestBody" not in patch and doc["components"]["schemas"] == {}


def test_v3_hash_follows_the_schema() -> None:
    served = _served()
    before = discovery.openapi_v3_root(served)["paths"]["apis/elastra.dev/v1alpha1"]
    changed = [
        ResourceType(rt.group, rt.version, rt.plural, rt.kind, rt.namespaced, schema={"type": "object"})
        if rt.kind == "Checkpoint"
        else rt
        for rt in served
    ]
    after = discovery.openapi_v3_root(changed)["paths"]["apis/elastra.dev/v1alpha1"]
    assert before != after  # kubectl caches documents by this hash


def _message(buf: bytes) -> dict[int, list[int | bytes]]:
    out: dict[int, list[int | bytes]] = {}
    for number, value in protobuf.fields(buf):
        out.setdefault(number, []).append(value)
    return out


def _named(entries: list[int | bytes]) -> dict[str, bytes]:
    result = {}
    for entry in entries:
        assert isinstance(entry, bytes)
        named = _message(entry)
        name, value = named[1][0], named[2][0]
        assert isinstance(name, bytes) and isinstance(value, bytes)
        result[name.decode()] = value
    return result


def test_v2_protobuf_carries_definitions_paths_and_extensions() -> None:
    doc = openapi.v2_document(_served(), "v1.32.0")
    document = _message(openapi.v2_protobuf(doc))
    assert document[1] == [b"2.0"]
    definitions_message = document[9][0]
    assert isinstance(definitions_message, bytes)
    definitions = _named(_message(definitions_message)[1])
    assert sorted(definitions) == sorted(doc["definitions"])

    job = _message(definitions["dev.elastra.v1alpha1.TrainingJob"])
    type_item = job[22][0]
    assert isinstance(type_item, bytes) and _message(type_item)[1] == [b"object"]
    extensions = _named(job[31])
    any_message = _message(extensions["x-kubernetes-group-version-kind"])
    yaml_text = any_message[2][0]
    assert isinstance(yaml_text, bytes)
    assert (
        yaml.safe_load(yaml_text)
        == doc["definitions"]["dev.elastra.v1alpha1.TrainingJob"]["x-kubernetes-group-version-kind"]
    )
    properties_message = job[25][0]
    assert isinstance(properties_message, bytes)
    spec = _message(_named(_message(properties_message)[1])["spec"])
    replicas = _message(_named(_message(spec[25][0])[1])["replicas"])  # type: ignore[arg-type]
    assert replicas[19] == [b"min", b"max"]  # required

    paths_message = document[8][0]
    assert isinstance(paths_message, bytes)
    paths = _named(_message(paths_message)[2])
    item = _message(paths["/apis/elastra.dev/v1alpha1/namespaces/{namespace}/trainingjobs/{name}"])
    patch_operation = item[8][0]
    assert isinstance(patch_operation, bytes)
    assert [c.decode() for c in _message(patch_operation)[7]] == list(openapi.CUSTOM_RESOURCE_PATCH_TYPES)  # type: ignore[union-attr]


def test_v2_protobuf_numbers() -> None:
    encoded = openapi.v2_protobuf({"definitions": {"n": {"minimum": 1.5, "minLength": -1}}})
    (definitions,) = _message(encoded)[9]
    schema_bytes = _named(_message(definitions)[1])["n"]  # type: ignore[arg-type]
    # minimum is a fixed64 double (wire type 1), skipped by the decoder; minLength a 10-byte varint
    assert schema_bytes.startswith(bytes([9 << 3 | 1]) + struct.pack("<d", 1.5))
    assert _message(schema_bytes)[12] == [2**64 - 1]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        pytest.param({"spec": {"a": 1}}, [], id="known"),
        pytest.param({"spec": {"a": 1, "b": 2}}, ["spec.b"], id="unknown-nested"),
        pytest.param({"spec": {}, "extra": 1}, ["extra"], id="unknown-top-level"),
        pytest.param({"metadata": {"anything": 1}, "kind": "X"}, [], id="system-fields-not-checked"),
        pytest.param({"spec": {"free": {"x": {"y": 1}}}}, [], id="preserve-unknown-fields"),
        pytest.param({"spec": {"labels": {"k": "v"}}}, [], id="additional-properties"),
        pytest.param({"spec": {"items": [{"n": 1}, {"m": 2}]}}, ["spec.items[1].m"], id="list-items"),
        pytest.param({"spec": {"closed": {"z": 1}}}, ["spec.closed.z"], id="object-without-properties"),
    ],
)
def test_unknown_fields(obj: dict[str, Any], expected: list[str]) -> None:
    crd_schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "a": {"type": "integer"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "items": {
                        "type": "array",
                        "items": {"type": "object", "properties": {"n": {"type": "integer"}}},
                    },
                    "closed": {"type": "object"},
                },
            }
        },
    }
    assert schema.unknown_fields(crd_schema, obj) == expected
    pruned = schema.apply_defaults(crd_schema, obj)
    assert not schema.unknown_fields(crd_schema, pruned), "what is reported is exactly what pruning drops"
