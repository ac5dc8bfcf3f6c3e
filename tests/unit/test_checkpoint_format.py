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


def nested(depth: int) -> bytes:
    doc = good()
    text = json.dumps(doc)
    return text.replace(
        '"values": {"epoch": 1}', '"values": {"deep": ' + "[" * depth + "]" * depth + "}"
    ).encode()


def split_fragment(*boxes: tuple[list[int], list[int]]) -> bytes:
    """The good manifest with tensor `w` described by these fragments (same file, checksums sized)."""
    doc = good()
    frags = []
    for offsets, shape in boxes:
        n = shape[0] * shape[1] * 4
        frags.append({"file": "rank-00000.safetensors", "offset": 80, "length": n, "offsets": offsets,
                      "shape": shape, "crc32": [1]})  # fmt: skip
    doc["tensors"]["w"]["fragments"] = frags  # type: ignore[index]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"\x80not json", "not valid JSON", id="not-json"),
        pytest.param(b"[]", "must be an object", id="not-an-object"),
        pytest.param(mutate(["version"], 99), "unsupported version", id="future-version"),
        pytest.param(mutate(["tensors", "w", "dtype"], "PICKLE"), "unknown dtype", id="unknown-dtype"),
        pytest.param(mutate([*FRAG, "shape"], [5, 4]), "outside", id="fragment-outside-tensor"),
        pytest.param(mutate([*FRAG, "length"], 63), "length", id="length-disagrees-with-shape"),
        pytest.param(mutate([*FRAG, "offset"], 100), "outside rank-00000", id="bytes-past-end-of-file"),
        pytest.param(mutate([*FRAG, "file"], "../etc"), "not a shard file name", id="path-escape"),
        pytest.param(mutate([*FRAG, "crc32"], []), "checksums", id="missing-checksums"),
        pytest.param(mutate([*FRAG, "offsets"], [-1, 0]), "must lie in", id="negative-offset"),
        pytest.param(mutate(["files"], {"..": 1}), "not a shard file name", id="file-key-escape"),
        # Defect 1: the same [0,2)x[0,4) fragment twice covers 16 "elements" but never rows 2-3.
        pytest.param(split_fragment(([0, 0], [2, 4]), ([0, 0], [2, 4])), "overlap", id="duplicate-fragment"),
        pytest.param(
            split_fragment(([0, 0], [3, 4]), ([2, 0], [2, 4])), "overlap", id="overlapping-fragments"
        ),
        pytest.param(split_fragment(([0, 0], [2, 4])), "cover 8 of 16", id="gap"),
        # Defect 2: a tensor with elements and no fragments.
        pytest.param(mutate(["tensors", "w", "fragments"], []), "cover 0 of 16", id="no-fragments"),
        # Defect 3: a wrongly typed field, a deeply nested document.
        pytest.param(
            mutate(["tensors", "w", "dtype"], ["F32"]), "'dtype': must be a string", id="dtype-list"
        ),
        pytest.param(mutate(["tensors", "w", "shape"], "4x4"), "'shape': must be a list", id="shape-string"),
        pytest.param(mutate(["step"], True), "'step': must be an integer", id="bool-step"),
        pytest.param(
            mutate(["files"], {"rank-00000.safetensors": "144"}), "must be an integer", id="size-str"
        ),
        pytest.param(mutate([*FRAG, "crc32"], [1 << 40]), "crc32", id="checksum-too-wide"),
        pytest.param(nested(100_000), "nested too deeply", id="deep-json"),
        pytest.param(nested(100), "nested deeper than", id="deep-values"),
        # Defect 4: declared sizes are bounded.
        pytest.param(mutate(["chunk_bytes"], 0), "'chunk_bytes': must lie in", id="chunk-bytes-zero"),
        pytest.param(mutate(["chunk_bytes"], (1 << 30) + 16), "'chunk_bytes'", id="chunk-bytes-huge"),
        pytest.param(mutate([*FRAG, "length"], 1 << 32), r"'fragments\[\]\.length'", id="length-huge"),
        pytest.param(
            mutate(["tensors", "w", "shape"], [1 << 20, 1 << 20]), "the files hold fewer", id="shape-huge"
        ),
    ],
)
def test_parse_manifest_rejects(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message) as caught:
        parse_manifest(data, 5)
    text = str(caught.value)
    assert text.startswith(("step 5", "manifest")), "every error names the step"
    if "tensors" in data.decode(errors="replace") and "'w'" in text:
        assert "field" in text, "and the field"


def test_manifest_of_another_step_is_refused() -> None:
    with pytest.raises(FormatError, match="says step 5"):
        parse_manifest(json.dumps(good()).encode(), 6)


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
