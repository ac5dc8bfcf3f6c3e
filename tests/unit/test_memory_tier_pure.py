"""The memory tier's pure parts: group layout, recoverability, erasure coding, and the checks on what
crosses a boundary (a peer's layout document, the pod environment)."""

from __future__ import annotations

import itertools
import os
import pathlib

import pytest

from elastra.api.memory import lost_groups, memory_ratio, plan_groups
from elastra.checkpoint.memory import MemoryConfig, cap_problem
from elastra.storage import StorageError
from elastra.storage.erasure import CODECS, ErasureError, available, decode, decode_into, encode
from elastra.storage.memory import MemoryStore
from elastra.storage.peers import Layout

PODS = [f"p{i}" for i in range(8)]


@pytest.mark.parametrize(
    ("n", "k", "m", "expected"),
    [
        pytest.param(4, 4, 1, [("p0 p1 p2", "p3"), ("p3", "p0")], id="4-pods-k4-m1-shrinks-k-to-3"),
        pytest.param(8, 4, 1, [("p0 p1 p2 p3", "p4"), ("p4 p5 p6 p7", "p0")], id="8-pods-two-groups"),
        pytest.param(3, 4, 1, [("p0 p1", "p2"), ("p2", "p0")], id="3-pods"),
        pytest.param(6, 4, 2, [("p0 p1 p2 p3", "p4 p5"), ("p4 p5", "p0 p1")], id="parity-2"),
        pytest.param(1, 4, 1, [("p0", "")], id="one-pod-no-parity-fits"),
        pytest.param(2, 4, 1, [("p0", "p1"), ("p1", "p0")], id="two-pods-mirror"),
    ],
)
def test_plan_groups(n: int, k: int, m: int, expected: list[tuple[str, str]]) -> None:
    groups = plan_groups(PODS[:n], k, m)
    assert [(" ".join(g.members), " ".join(g.holders)) for g in groups] == expected
    for g in groups:
        assert not set(g.members) & set(g.holders)  # parity never on the group's own members


@pytest.mark.parametrize(
    ("n", "lost", "expected"),
    [
        pytest.param(4, {"p1"}, [], id="one-member"),
        pytest.param(4, {"p3"}, [], id="the-holder-and-a-singleton-group"),
        pytest.param(4, {"p0", "p1"}, [0], id="two-members-of-one-group"),
        pytest.param(4, {"p0", "p3"}, [0, 1], id="member-and-holder-of-both"),
        pytest.param(8, {"p1", "p5"}, [], id="one-per-group"),
        pytest.param(1, {"p0"}, [0], id="no-parity"),
    ],
)
def test_lost_groups(n: int, lost: set[str], expected: list[int]) -> None:
    groups = plan_groups(PODS[:n], 4, 1)
    alive = set(PODS[:n]) - lost
    assert [g.index for g in lost_groups(groups, alive)] == expected


def test_memory_ratio_is_k_plus_m_over_k() -> None:
    assert memory_ratio(plan_groups(PODS, 4, 1)) == pytest.approx(5 / 4)


@pytest.mark.parametrize(
    "bad", [pytest.param(("p0", "p0"), id="duplicate-pods"), pytest.param(("p0",), id="k-zero")]
)
def test_plan_groups_refuses(bad: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        plan_groups(list(bad), 0 if len(bad) == 1 else 4, 1)


@pytest.mark.parametrize("codec", [pytest.param(c, id=c) for c in CODECS])
@pytest.mark.parametrize(("k", "m"), [(1, 1), (2, 1), (3, 1), (3, 2), (4, 2), (4, 4)])
def test_erasure_rebuilds_any_block_from_any_k_shares(k: int, m: int, codec: str) -> None:
    if not available(codec):
        pytest.skip(f"{codec} is not installed here")
    blocks = [os.urandom(4099) for _ in range(k)]
    shares = dict(enumerate([*blocks, *encode(blocks, m, codec=codec)]))
    for kept in itertools.combinations(shares, k):
        for want in range(k):
            assert decode({s: shares[s] for s in kept}, k, m, want, codec) == blocks[want]
    assert encode(blocks, m, only=[m - 1], codec=codec) == [shares[k + m - 1]]


@pytest.mark.parametrize("codec", [pytest.param(c, id=c) for c in CODECS])
@pytest.mark.parametrize(
    ("kept", "ranges"),
    [
        pytest.param((0, 2, 3), [(0, 1000), (1000, 3099), (3099, 4099)], id="rebuilt-into-three-views"),
        pytest.param((0, 2, 3), [(17, 1017)], id="rebuilt-an-inner-range"),
        pytest.param((0, 1, 2), [(0, 10), (4000, 4099)], id="block-present-copied"),
    ],
)
def test_erasure_decode_into_fills_the_views(
    codec: str, kept: tuple[int, ...], ranges: list[tuple[int, int]]
) -> None:
    if not available(codec):
        pytest.skip(f"{codec} is not installed here")
    blocks = [os.urandom(4099) for _ in range(3)]
    shares = dict(enumerate([*blocks, *encode(blocks, 1, codec=codec)]))
    outs = [bytearray(b - a) for a, b in ranges]
    decode_into({s: shares[s] for s in kept}, 3, 1, 1, codec=codec,
                out=[(a, memoryview(o)) for (a, _), o in zip(ranges, outs, strict=True)])  # fmt: skip
    assert [bytes(o) for o in outs] == [blocks[1][a:b] for a, b in ranges]


def test_erasure_codecs_differ_and_refuse_each_others_parity() -> None:
    """A snapshot decodes only with the codec its layout names: their parity bytes differ."""
    if not available("isa-l"):
        pytest.skip("isa-l is not installed here")
    blocks = [os.urandom(1000) for _ in range(3)]
    (zfec_parity,) = encode(blocks, 1, codec="zfec")
    (isal_parity,) = encode(blocks, 1, codec="isa-l")
    assert bytes(zfec_parity) != bytes(isal_parity)
    shares = {0: blocks[0], 2: blocks[2], 3: isal_parity}
    assert decode(shares, 3, 1, 1, "isa-l") == blocks[1]
    assert decode(shares, 3, 1, 1, "zfec") != blocks[1]


@pytest.mark.parametrize(
    ("shares", "why"),
    [
        pytest.param({0: b"ab"}, "need 2 shares", id="too-few"),
        pytest.param({0: b"ab", 2: b"abc"}, "one length", id="unequal"),
    ],
)
def test_erasure_refuses(shares: dict[int, bytes], why: str) -> None:
    with pytest.raises(ErasureError, match=why):
        decode(shares, 2, 1, 1)


GOOD = {
    "parity": 1,
    "groups": [{"members": ["a", "b"], "holders": ["c"], "length": 10}, {"members": ["c"], "holders": ["a"],
               "length": 4}],
    "blocks": {"a": [["rank-00000.safetensors", 10]], "b": [["rank-00001.safetensors", 7]],
               "c": [["rank-00002.safetensors", 4]]},
}  # fmt: skip


def test_layout_round_trip_and_locate() -> None:
    layout = Layout.from_json(GOOD)
    assert layout.codec == "zfec"  # a document from before the codec was recorded
    assert Layout.from_json(layout.to_json()) == layout
    assert Layout.from_json({**GOOD, "codec": "isa-l"}).codec == "isa-l"
    assert layout.locate("rank-00001.safetensors") == ("b", 0, 7)


@pytest.mark.parametrize(
    ("pod", "cap", "refused"),
    [
        pytest.param("a", 28, False, id="data-and-parity-twice-fit"),  # 10 data + 4 parity, twice
        pytest.param("a", 27, True, id="previous-snapshot-not-counted-would-overflow"),
        pytest.param("b", 14, False, id="member-without-parity"),
        pytest.param("c", 27, True, id="holder-of-the-big-group"),
    ],
)
def test_cap_counts_the_previous_snapshot(pod: str, cap: int, refused: bool) -> None:
    problem = cap_problem(Layout.from_json(GOOD), pod, cap)
    assert (problem is not None) == refused
    if refused:
        assert problem is not None and "maxBytesPerPod" in problem


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"parity": "x"}, id="parity-not-int"),
        pytest.param({"blocks": {"a": [["../../etc/passwd", 1]]}}, id="path-escape"),
        pytest.param({"groups": [{"members": ["a"], "holders": ["a"], "length": 10}]}, id="holder-is-member"),
        pytest.param({"groups": [{"members": ["a"], "holders": ["c"], "length": 3}]}, id="block-over-length"),
        pytest.param({"groups": [{"members": ["zz"], "holders": ["c"], "length": 30}]}, id="unknown-pod"),
        pytest.param({"groups": [{"members": ["a"], "holders": [], "length": 30}]}, id="holders-vs-parity"),
        pytest.param({"blocks": []}, id="blocks-not-a-map"),
        pytest.param({"codec": "rot13"}, id="unknown-codec"),
        pytest.param({"parity": 1.9}, id="parity-a-float"),
        pytest.param({"parity": 5, "groups": []}, id="parity-over-the-spec-bound"),
        pytest.param({"groups": [{"members": [], "holders": ["c"], "length": 3}]}, id="empty-group"),
        pytest.param(
            {
                "groups": [{"members": [f"p{i}" for i in range(33)], "holders": ["c"], "length": 10}],
                "blocks": {**{f"p{i}": [] for i in range(33)}, "c": []},
            },
            id="group-over-the-spec-bound-each-member-a-rebuild-buffer",
        ),
    ],
)
def test_layout_refuses_hostile_documents(change: dict[str, object]) -> None:
    with pytest.raises(StorageError, match="malformed memory layout"):
        Layout.from_json({**GOOD, **change})


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        pytest.param({"ELASTRA_MEMORY_PEERS": "p0=noport"}, "pod=host:port", id="peer-without-port"),
        pytest.param({"ELASTRA_MEMORY_PEERS": "=1.2.3.4:5"}, "pod=host:port", id="peer-without-name"),
        pytest.param({"ELASTRA_MEMORY_EVERY_STEPS": "0"}, "ELASTRA_MEMORY_EVERY_STEPS", id="every-zero"),
        pytest.param({"ELASTRA_MEMORY_PARITY": "x"}, "ELASTRA_MEMORY_PARITY", id="parity-not-int"),
    ],
)
def test_memory_config_refuses(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        MemoryConfig.from_env({"ELASTRA_MEMORY_DIR": "/m", "POD_NAME": "p0", **env})


def test_memory_config_from_env() -> None:
    assert MemoryConfig.from_env({}) is None
    config = MemoryConfig.from_env(
        {
            "ELASTRA_MEMORY_DIR": "/m",
            "POD_NAME": "p1",
            "ELASTRA_MEMORY_PEERS": "p0=10.0.0.1:9401,p1=10.0.0.2:9401",
        }
    )
    assert config is not None and config.addr == "10.0.0.2:9401" and config.peers["p0"] == "10.0.0.1:9401"


@pytest.mark.parametrize(
    ("start", "n", "mapped"),
    [
        pytest.param(0, 10_000, True, id="whole-file"),
        pytest.param(4095, 3, True, id="unaligned-start-across-a-page"),
        pytest.param(9_000, 1_000, True, id="up-to-the-end"),
        pytest.param(9_000, 1_001, False, id="past-the-end-is-read-instead"),
        pytest.param(0, 0, False, id="empty"),
    ],
)
def test_memory_store_map_range(tmp_path: pathlib.Path, start: int, n: int, mapped: bool) -> None:
    data = os.urandom(10_000)
    store = MemoryStore(str(tmp_path))
    store.put_bytes("step-1/a.bin", data)
    view = store.map_range("step-1/a.bin", start, n)
    assert (view is not None) == mapped
    if view is not None:
        assert view.readonly and bytes(view) == data[start : start + n]
