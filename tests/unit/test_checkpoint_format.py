"""Manifest parsing rejects malformed, untrusted input with clear errors; retention rules."""

from __future__ import annotations

import json

import pytest

from elastra.checkpoint.format import (
    FormatError,
    Fragment,
    Manifest,
    TensorEntry,
    manifest_to_json,
    parse_manifest,
    parse_shard_header,
    shard_header,
)  # fmt: skip
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.retention import plan_retention


def good() -> dict[str, object]:
    frag = Fragment("rank-00000.safetensors", 80, 64, Box((0, 0), (4, 4)), (123,))
    manifest = Manifest(step=5, world_size=2, tensors={"w": TensorEntry("F32", (4, 4), "boxes", "", (frag,))},
                        values={"epoch": 1}, files={"rank-00000.safetensors": 144})  # fmt: skip
    doc: dict[str, object] = json.loads(manifest_to_json(manifest))
    return doc


def test_round_trip() -> None:
    m = parse_manifest(json.dumps(good()).encode())
    assert m.step == 5 and m.tensors["w"].fragments[0].box == Box((0, 0), (4, 4)) and m.values == {"epoch": 1}


def mutate(path: list[str | int], value: object) -> bytes:
    doc = good()
    target: object = doc
    for key in path[:-1]:
        target = target[key]  # type: ignore[index]
    target[path[-1]] = value  # type: ignore[index]
    return json.dumps(doc).encode()


FRAG = ["tensors", "w", "fragments", 0]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x80not json", "not valid JSON", id="not-json"),
        pytest.param(b"[]", "not an elastra", id="not-an-object"),
        pytest.param(mutate(["version"], 99), "unsupported format version", id="future-version"),
        pytest.param(mutate(["tensors", "w", "dtype"], "PICKLE"), "unknown dtype", id="unknown-dtype"),
        pytest.param(mutate([*FRAG, "shape"], [5, 4]), "outside", id="fragment-outside-tensor"),
        pytest.param(mutate([*FRAG, "length"], 63), "length", id="length-disagrees-with-shape"),
        pytest.param(mutate([*FRAG, "offset"], 100), "outside rank-00000", id="bytes-past-end-of-file"),
        pytest.param(mutate([*FRAG, "file"], "../etc"), "bad fragment file", id="path-escape"),
        pytest.param(mutate([*FRAG, "crc32"], []), "checksums", id="missing-checksums"),
        pytest.param(mutate([*FRAG, "offsets"], [-1, 0]), "integer >= 0", id="negative-offset"),
        pytest.param(mutate(["files"], {"..": 1}), "invalid storage key", id="file-key-escape"),
    ],
)
def test_parse_manifest_rejects(data: bytes, message: str) -> None:
    with (
        pytest.raises(FormatError, match=message)
        if "storage key" not in message
        else pytest.raises(ValueError, match=message)
    ):
        parse_manifest(data)


def test_shard_header_is_safetensors_layout() -> None:
    header = shard_header([("0:w", "F32", (2, 3), 24), ("1:b", "U8", (5,), 5)], {"step": "1"})
    assert len(header) % 8 == 0
    start, doc = parse_shard_header(header)
    assert start == len(header)
    assert doc["1:b"] == {"dtype": "U8", "shape": [5], "data_offsets": [24, 29]}


@pytest.mark.parametrize(
    ("steps", "keep", "drop_newer", "doomed"),
    [
        pytest.param({1: True, 2: True, 3: True}, 2, False, [1], id="keeps-newest-k"),
        pytest.param({1: True, 2: False, 3: True}, 5, False, [2], id="removes-older-uncommitted-leftover"),
        pytest.param({1: True, 4: False}, 1, False, [], id="newer-uncommitted-may-be-in-flight"),
        pytest.param({1: True, 4: False}, 1, True, [4], id="at-start-newer-uncommitted-is-a-leftover"),
        pytest.param({3: True}, 0, False, [], id="never-deletes-the-newest-committed"),
        pytest.param({2: False}, 1, False, [], id="no-commit-yet-keeps-in-flight"),
    ],
)
def test_plan_retention(steps: dict[int, bool], keep: int, drop_newer: bool, doomed: list[int]) -> None:
    assert plan_retention(steps, keep, drop_newer) == doomed
