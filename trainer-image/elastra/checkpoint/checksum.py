"""CRC-32 of checkpoint chunks: the format's checksum (the zlib / gzip polynomial), computed fast.

ISA-L's `crc32` (the `isal` package, folded carry-less multiplication: several GB/s per core) gives the
same values as `zlib.crc32`; without it the standard library's is used (about 2 GB/s on the reference
machine, enough to be most of a restore's time). Both release the GIL on large buffers, so checksums
run in parallel with reads. Pure.
"""

from __future__ import annotations

import zlib
from typing import Protocol

BytesLike = bytes | bytearray | memoryview


class _Crc32(Protocol):
    def __call__(self, data: BytesLike, value: int = 0, /) -> int: ...


try:
    from isal.isal_zlib import crc32 as _isal_crc32

    _CRC32: _Crc32 = _isal_crc32
    IMPLEMENTATION = "isal"
except ImportError:  # pragma: no cover - depends on the environment
    _CRC32 = zlib.crc32
    IMPLEMENTATION = "zlib"
"""Which implementation computes the checksums: `isal` or `zlib` (same values)."""


def crc32(data: BytesLike) -> int:
    """The CRC-32 of `data` (bytes, bytearray or memoryview), equal to `zlib.crc32(data)`."""
    return _CRC32(data) & 0xFFFFFFFF
