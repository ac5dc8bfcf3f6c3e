"""The file tier's error paths: missing keys, short ranges, and writes that fail half way."""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import pytest

from elastra.storage import NotFoundError, StorageError
from elastra.storage.local import LocalStorage


@pytest.mark.parametrize(
    ("read", "error"),
    [
        pytest.param(lambda s: s.get("step-1/missing"), NotFoundError, id="get-missing"),
        pytest.param(lambda s: s.get_range("step-1/missing", 0, 4), NotFoundError, id="range-missing"),
        pytest.param(
            lambda s: s.read_into("step-1/missing", 0, [memoryview(bytearray(4))]),
            NotFoundError,
            id="read-into-missing",
        ),
        pytest.param(lambda s: s.get_range("step-1/f", 0, 99), StorageError, id="range-past-the-end"),
        pytest.param(
            lambda s: s.read_into("step-1/f", 5, [memoryview(bytearray(8))]),
            StorageError,
            id="read-into-short",
        ),
        pytest.param(lambda s: s.get_range("step-1/f", 3, 1), StorageError, id="range-backwards"),
    ],
)
def test_reads_fail_clearly(
    tmp_path: pathlib.Path, read: Callable[[LocalStorage], object], error: type[Exception]
) -> None:
    storage = LocalStorage(str(tmp_path))
    storage.put_bytes("step-1/f", b"0123456789")
    with pytest.raises(error):
        read(storage)


def test_ranged_reads_return_the_bytes_asked_for(tmp_path: pathlib.Path) -> None:
    storage = LocalStorage(str(tmp_path))
    storage.put_parts("step-1/f", [memoryview(b"0123"), memoryview(b"456789")])
    assert storage.get_range("step-1/f", 2, 7) == b"23456"
    target = bytearray(5)
    storage.read_into("step-1/f", 5, [memoryview(target)[:2], memoryview(target)[2:]])
    assert bytes(target) == b"56789"


def test_a_write_that_fails_half_way_leaves_nothing(tmp_path: pathlib.Path) -> None:
    storage = LocalStorage(str(tmp_path))
    storage.put_bytes("step-1/f", b"old")
    with pytest.raises(TypeError):
        storage.put_parts("step-1/f", [memoryview(b"new"), 7])  # type: ignore[list-item]
    assert storage.get("step-1/f") == b"old"
    assert sorted(p.name for p in (tmp_path / "step-1").iterdir()) == ["f"]  # no .tmp-* leftover
