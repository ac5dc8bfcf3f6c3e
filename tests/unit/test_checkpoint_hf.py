"""Hugging Face safetensors headers and indexes as untrusted input, name matching, export planning."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from elastra.checkpoint.format import FormatError, Manifest, TensorEntry
from elastra.checkpoint.hf_export import Item, find_prefix, plan_shards, slabs
from elastra.checkpoint.hf_format import (
    MAX_HEADER_BYTES,
    HFTensor,
    check_against_index,
    header_length,
    parse_header,
    parse_index,
    parse_size,
)
from elastra.checkpoint.pretrained import find_prefix as find_state_prefix
from elastra.checkpoint.report import RestoreReport

pytestmark = pytest.mark.unit

GOOD = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]}}  # fmt: skip


def header(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_a_valid_header_parses_with_absolute_offsets() -> None:
    body = header({"__metadata__": {"format": "pt"}, **GOOD})
    metadata, tensors = parse_header(body, "m.safetensors", 8 + len(body) + 32)
    assert metadata == {"format": "pt"}
    by_name = {t.name: t for t in tensors}
    assert by_name["a"] == HFTensor("a", "m.safetensors", "F32", (2, 3), 8 + len(body), 24)
    assert by_name["b"].offset == 8 + len(body) + 24 and by_name["b"].length == 8


@pytest.mark.parametrize(
    ("doc", "data_bytes", "match"),
    [
        pytest.param([1, 2], 32, "JSON object", id="not-an-object"),
        pytest.param(
            {**GOOD, "a": {**GOOD["a"], "dtype": "F4"}}, 32, "unsupported dtype", id="dtype-unknown"
        ),
        pytest.param(
            {**GOOD, "a": {**GOOD["a"], "dtype": ["F32"]}}, 32, "unsupported dtype", id="dtype-list"
        ),
        pytest.param({**GOOD, "a": {**GOOD["a"], "shape": [2, -3]}}, 32, "shape", id="shape-negative"),
        pytest.param(
            {**GOOD, "a": {**GOOD["a"], "shape": [1] * 33}}, 32, "at most", id="shape-too-many-dims"
        ),
        pytest.param({**GOOD, "a": {**GOOD["a"], "shape": [2, True]}}, 32, "shape", id="shape-bool"),
        pytest.param({**GOOD, "a": {**GOOD["a"], "shape": [2, 4]}}, 32, "expected", id="length-vs-shape"),
        pytest.param(
            {**GOOD, "b": {**GOOD["b"], "data_offsets": [24, 40]}}, 32, "outside", id="past-the-end"
        ),
        pytest.param({**GOOD, "b": {**GOOD["b"], "data_offsets": [16, 24]}}, 32, "overlap", id="overlap"),
        pytest.param(
            {**GOOD, "b": {**GOOD["b"], "data_offsets": [32, 24]}}, 40, "outside", id="end-before-begin"
        ),
        pytest.param(
            {**GOOD, "b": {**GOOD["b"], "data_offsets": [24]}}, 32, "data_offsets", id="offsets-short"
        ),
        pytest.param(
            {**GOOD, "b": {**GOOD["b"], "data_offsets": [24, 10**30]}}, 32, "outside", id="huge-end"
        ),
        pytest.param({**GOOD, "a": "tensor"}, 32, "must be an object", id="entry-not-object"),
        pytest.param({**GOOD, "__metadata__": {"format": 1}}, 32, "metadata", id="metadata-not-strings"),
        pytest.param({**GOOD, "": GOOD["a"]}, 32, "names", id="empty-name"),
    ],
)
def test_hostile_headers_are_format_errors(doc: Any, data_bytes: int, match: str) -> None:
    body = header(doc)
    with pytest.raises(FormatError, match=match):
        parse_header(body, "m.safetensors", 8 + len(body) + data_bytes)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(b"{" * 100_000 + b"}" * 100_000, "not valid JSON", id="deep-nesting"),
        pytest.param(b'{"a": 1, "a": 2}', "duplicate key", id="duplicate-name"),
        pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
    ],
)
def test_headers_that_are_not_json_objects_are_format_errors(body: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        parse_header(body, "m.safetensors", 8 + len(body))


@pytest.mark.parametrize(
    ("declared", "file_size", "ok"),
    [
        pytest.param(100, 200, True, id="inside"),
        pytest.param(192, 200, True, id="exactly-fills"),
        pytest.param(193, 200, False, id="past-the-file"),
        pytest.param(MAX_HEADER_BYTES + 1, 1 << 40, False, id="over-the-limit"),
        pytest.param(2**63, 1 << 40, False, id="huge"),
        pytest.param(0, 200, False, id="zero"),
    ],
)
def test_header_length_is_bounded_by_the_file_size(declared: int, file_size: int, ok: bool) -> None:
    prefix = struct.pack("<Q", declared)
    if ok:
        assert header_length(prefix, "f", file_size) == declared
    else:
        with pytest.raises(FormatError, match="header length"):
            header_length(prefix, "f", file_size)


def test_a_file_shorter_than_the_length_field_is_refused() -> None:
    with pytest.raises(FormatError, match="shorter"):
        header_length(b"\x01\x02", "f", 2)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        pytest.param({"weight_map": {"a": "../etc/passwd.safetensors"}}, "invalid file", id="walks-out"),
        pytest.param({"weight_map": {"a": "/abs/x.safetensors"}}, "invalid file", id="absolute"),
        pytest.param({"weight_map": {"a": "sub/x.safetensors"}}, "invalid file", id="subdirectory"),
        pytest.param({"weight_map": {"a": "x.bin"}}, "invalid file", id="not-safetensors"),
        pytest.param({"weight_map": {"a": 3}}, "invalid file", id="not-a-string"),
        pytest.param({"weight_map": {}}, "empty", id="empty"),
        pytest.param({"metadata": {}}, "weight_map", id="no-weight-map"),
    ],
)
def test_hostile_indexes_are_format_errors(doc: Any, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        parse_index(json.dumps(doc).encode())


def test_an_index_of_a_gigabyte_is_refused_before_parsing() -> None:
    with pytest.raises(FormatError, match="allowed"):
        parse_index(b" " * ((64 << 20) + 1))


def _t(name: str, file: str) -> HFTensor:
    return HFTensor(name, file, "F32", (1,), 8, 4)


@pytest.mark.parametrize(
    ("weight_map", "tensors", "match"),
    [
        pytest.param({"a": "x.safetensors"}, [_t("a", "x.safetensors")], None, id="consistent"),
        pytest.param({"a": "x.safetensors"}, [_t("a", "y.safetensors")], "puts in", id="wrong-file"),
        pytest.param(
            {"a": "x.safetensors", "b": "x.safetensors"},
            [_t("a", "x.safetensors")],
            "no shard holds",
            id="indexed-but-absent",
        ),
        pytest.param(
            {"a": "x.safetensors"},
            [_t("a", "x.safetensors"), _t("a", "y.safetensors")],
            "both",
            id="in-two-files",
        ),
    ],
)
def test_shards_must_agree_with_the_index(
    weight_map: dict[str, str], tensors: list[HFTensor], match: str | None
) -> None:
    if match is None:
        assert set(check_against_index(weight_map, tensors)) == set(weight_map)
    else:
        with pytest.raises(FormatError, match=match):
            check_against_index(weight_map, tensors)


@pytest.mark.parametrize(
    ("paths", "names", "expected"),
    [
        pytest.param(
            ["model/w", "model/b", "optim/state/w/exp_avg"], ["w", "b"], "model/", id="checkpointer"
        ),
        pytest.param(
            ["model/model/w", "model/optim/state/w/exp_avg", "rng/x"], ["w"], "model/model/", id="session"
        ),
        pytest.param(["w", "b"], ["w", "b"], "", id="bare-state-dict"),
        pytest.param(["a/w", "b/w"], ["w"], None, id="ambiguous"),
        pytest.param(["model/x"], ["w"], None, id="nothing-matches"),
    ],
)
def test_the_state_prefix_of_the_model_is_found(
    paths: list[str], names: list[str], expected: str | None
) -> None:
    if expected is None:
        with pytest.raises(FormatError, match="prefix="):
            find_state_prefix(paths, names)
    else:
        assert find_state_prefix(paths, names) == expected


def test_a_key_map_renames_before_matching() -> None:
    assert find_state_prefix(["m/layer.w"], ["h.w"], key_map=lambda n: n.replace("h.", "layer.")) == "m/"


def _entry(shape: tuple[int, ...], dtype: str = "F32", layout: str = "boxes") -> TensorEntry:
    return TensorEntry(dtype, shape, layout, "", ())


def test_export_prefix_prefers_the_model_names_then_the_biggest_group() -> None:
    manifest = Manifest(step=1, world_size=1, values={}, tensors={
        "model/model/wte": _entry((64, 16)), "model/model/h.0": _entry((16, 16)),
        "model/optim/state/wte/exp_avg": _entry((64, 16)), "rng/torch_cpu": _entry((5000,), "U8"),
    })  # fmt: skip
    assert find_prefix(manifest, None) == "model/model/"
    assert find_prefix(manifest, frozenset({"torch_cpu"})) == "rng/"
    with pytest.raises(FormatError, match="--prefix"):
        find_prefix(manifest, frozenset({"lm_head.weight"}))


def _item(name: str, nbytes: int) -> Item:
    return Item(name, f"model/{name}", _entry((nbytes,), "U8"), "U8")


@pytest.mark.parametrize(
    ("sizes", "limit", "expected"),
    [
        pytest.param([10, 10, 10], 100, [["a", "b", "c"]], id="fits-one-file"),
        pytest.param([10, 10, 10], 20, [["a", "b"], ["c"]], id="split"),
        pytest.param([10, 50, 10], 20, [["a"], ["b"], ["c"]], id="oversized-tensor-alone"),
    ],
)
def test_shards_are_filled_greedily_in_name_order(
    sizes: list[int], limit: int, expected: list[list[str]]
) -> None:
    items = [_item(chr(ord("a") + i), n) for i, n in enumerate(sizes)]
    assert [[i.name for i in shard] for shard in plan_shards(items, limit)] == expected


@pytest.mark.parametrize(
    ("shape", "layout", "piece"),
    [
        pytest.param((10, 4), "boxes", 48, id="row-slabs"),
        pytest.param((10, 4), "boxes", 8, id="one-row-over-budget"),
        pytest.param((37,), "boxes", 40, id="1d"),
        pytest.param((6, 7), "flat", 40, id="flat"),
        pytest.param((), "boxes", 40, id="scalar"),
        pytest.param((0, 4), "boxes", 40, id="empty"),
    ],
)
def test_slabs_cover_the_tensor_once_in_order(shape: tuple[int, ...], layout: str, piece: int) -> None:
    import math

    covered = 0
    for box, _layout in slabs(_entry(shape, layout=layout), piece):
        covered += box.numel
    assert covered == math.prod(shape)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        pytest.param("5GB", 5 * 10**9, id="GB"),
        pytest.param("20KB", 20_000, id="KB"),
        pytest.param("2MiB", 2 << 20, id="MiB"),
        pytest.param("123", 123, id="bytes"),
        pytest.param("five", None, id="words"),
        pytest.param("0", None, id="zero"),
    ],
)
def test_shard_sizes_parse_as_hugging_face_writes_them(text: str, size: int | None) -> None:
    if size is None:
        with pytest.raises(ValueError):
            parse_size(text)
    else:
        assert parse_size(text) == size


def test_the_restore_line_says_step_tier_seconds_and_what_was_skipped() -> None:
    unexpected = ("optim/state/a/exp_avg", "b", "c", "d")
    report = RestoreReport(step=40, source="/ck/step-40", tier="local", seconds=1.234, restored=3,
                           unexpected=unexpected, tied={"lm": "wte"})  # fmt: skip
    line = report.summary()
    assert "step 40" in line and "local tier" in line and "1.23s" in line
    assert "4 not restored (unexpected): optim/state/a/exp_avg, b, c, +1 more" in line
    assert "1 tied: lm = wte" in line
    assert "nothing skipped" in RestoreReport(step=1, source="x").summary()
