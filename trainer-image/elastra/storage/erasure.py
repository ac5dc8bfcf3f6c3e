"""Reed-Solomon erasure coding of equal-length blocks, behind two functions, with two codecs.

`encode(blocks, parity)` returns `parity` parity blocks for `k = len(blocks)` data blocks; `decode`
rebuilds any data block from any `k` of the `k + parity` shares. Blocks are byte ranges at the same
offsets of every share, so a caller may encode whole blocks and later decode just the range it needs.

Codecs (`CODECS`; a snapshot's layout records the one that made its parity, and only that one decodes
it, since their parity bytes differ):
- `isa-l`: Intel ISA-L's `ec_encode_data` over a Cauchy matrix (always invertible), called through
  ctypes on the caller's buffers (no copies). Used when a `libisal` shared library is found: the
  system's (Debian's `libisal2`), else the copy the `pyeclib` wheel bundles. About 9-12 GB/s per core
  on AVX-512, where zfec gives 0.9-1.8 (`benchmarks/memory_tier.py`, `docs/benchmarks.md`).
- `zfec`: the fallback, always installed.
With one data block (`k == 1`) the parity is a copy, in both.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import zfec

Buffer = bytes | bytearray | memoryview

CODECS = ("isa-l", "zfec")


class ErasureError(ValueError):
    """Not enough shares, shares of different lengths, or a codec this process does not have."""


@functools.cache
def _isal() -> ctypes.CDLL | None:
    """ISA-L (`libisal`), or None when this process has none."""
    candidates = [ctypes.util.find_library("isal")]
    try:
        import pyeclib  # optional: only to find the libisal its wheel bundles

        candidates += [
            str(p) for p in sorted(Path(pyeclib.__file__).parent.parent.glob("pyeclib.libs/libisal*.so*"))
        ]
    except ImportError:
        pass
    for name in filter(None, candidates):
        try:
            lib = ctypes.CDLL(name)
            if all(hasattr(lib, f) for f in ("ec_encode_data", "ec_init_tables", "gf_gen_cauchy1_matrix")):
                return lib
        except OSError:
            continue
    return None


def default_codec() -> str:
    """The codec new parity is made with: `ELASTRA_ERASURE_CODEC` if set, else ISA-L when present."""
    forced = os.environ.get("ELASTRA_ERASURE_CODEC")
    if forced:
        if forced not in CODECS:
            raise ErasureError(f"ELASTRA_ERASURE_CODEC must be one of {CODECS}, got {forced!r}")
        return forced
    return "isa-l" if _isal() is not None else "zfec"


def available(codec: str) -> bool:
    return codec == "zfec" or (codec == "isa-l" and _isal() is not None)


def _equal(blocks: Sequence[Buffer]) -> int:
    sizes = {memoryview(b).nbytes for b in blocks}
    if len(sizes) != 1:
        raise ErasureError(f"blocks must have one length, got {sorted(sizes)}")
    return sizes.pop()


_ISAL_MAX = 1 << 30


def _pointers(buffers: Sequence[Buffer]) -> list[int]:
    """Addresses of the buffers (read-only ones too); the caller keeps them alive."""
    return [int(np.frombuffer(b, dtype=np.uint8).ctypes.data) for b in buffers]


def _cauchy(k: int, parity: int) -> np.ndarray:
    """ISA-L's (k + parity) x k encoding matrix: identity on top, Cauchy rows below."""
    lib = _isal()
    assert lib is not None
    matrix = np.zeros((k + parity) * k, dtype=np.uint8)
    lib.gf_gen_cauchy1_matrix(matrix.ctypes.data_as(ctypes.c_void_p), k + parity, k)
    return matrix.reshape(k + parity, k)


def _isal_apply(
    rows: np.ndarray, inputs: Sequence[Buffer], outputs: Sequence[Buffer], n: int, in_offset: int = 0
) -> None:
    """outputs[i][:n] = sum_j rows[i, j] * inputs[j][in_offset : in_offset + n] over GF(2^8), by ISA-L."""
    lib = _isal()
    assert lib is not None
    k, count = len(inputs), len(outputs)
    rows = np.ascontiguousarray(rows, dtype=np.uint8)
    tables = np.empty(32 * k * count, dtype=np.uint8)
    lib.ec_init_tables(k, count, rows.ctypes.data_as(ctypes.c_void_p), tables.ctypes.data_as(ctypes.c_void_p))
    sources, targets = [p + in_offset for p in _pointers(inputs)], _pointers(outputs)
    for offset in range(0, n, _ISAL_MAX):  # its lengths are C ints
        length = min(_ISAL_MAX, n - offset)
        shifted_in = (ctypes.c_void_p * k)(*[p + offset for p in sources])
        shifted_out = (ctypes.c_void_p * count)(*[p + offset for p in targets])
        lib.ec_encode_data(length, k, count, tables.ctypes.data_as(ctypes.c_void_p), shifted_in, shifted_out)


def encode(
    blocks: Sequence[Buffer],
    parity: int,
    only: Sequence[int] | None = None,
    codec: str | None = None,
    out: Sequence[bytearray | memoryview] | None = None,
) -> list[Buffer]:
    """The `parity` parity blocks (share numbers `k .. k+parity-1`) of the equal-length `blocks`, or
    only those with the parity indices in `only` (in that order), made with `codec` (default:
    `default_codec()`). With `k == 1` the parity is the block itself (not a copy). `out`: writable
    buffers of the blocks' length, one per parity block returned, that ISA-L writes into (reused by
    a caller that encodes piece by piece); zfec always returns new ones."""
    codec = codec or default_codec()
    k = len(blocks)
    if k < 1 or parity < 0 or k + parity > 256:
        raise ErasureError(f"need 1 <= k and k + parity <= 256, got k={k}, parity={parity}")
    if not available(codec):
        raise ErasureError(f"erasure codec {codec!r} is not available in this process")
    n = _equal(blocks)
    wanted = list(range(parity)) if only is None else list(only)
    if any(not 0 <= j < parity for j in wanted):
        raise ErasureError(f"parity indices must be in [0, {parity}), got {wanted}")
    if not wanted:
        return []
    if k == 1:
        return [blocks[0] for _ in wanted]
    if codec == "zfec":
        made: list[Buffer] = zfec.Encoder(k, k + parity).encode(list(blocks), [k + j for j in wanted])
        return made
    outputs: Sequence[bytearray | memoryview] = [bytearray(n) for _ in wanted] if out is None else out
    if len(outputs) != len(wanted) or _equal([*outputs, blocks[0]]) != n:
        raise ErasureError(f"out must be {len(wanted)} buffers of {n} bytes")
    _isal_apply(_cauchy(k, parity)[[k + j for j in wanted]], blocks, outputs, n)
    return list(outputs)


def _decoding_matrix(numbers: list[int], k: int, parity: int) -> np.ndarray:
    """ISA-L: the inverse of the encoding matrix's rows for shares `numbers` (k of them), whose row
    `want` rebuilds data share `want` from those shares. ErasureError when they are not independent."""
    lib = _isal()
    assert lib is not None
    square = np.ascontiguousarray(_cauchy(k, parity)[numbers])
    inverse = np.empty_like(square)
    if lib.gf_invert_matrix(
        square.ctypes.data_as(ctypes.c_void_p), inverse.ctypes.data_as(ctypes.c_void_p), k
    ):
        raise ErasureError(f"shares {numbers} do not determine the data (singular matrix)")
    return inverse


def decode(shares: Mapping[int, Buffer], k: int, parity: int, want: int, codec: str = "zfec") -> Buffer:
    """Data block `want` (`0 <= want < k`) from any `k` of the shares (`{share number: bytes}`), made
    by `codec`. Never one of the given buffers: the caller may reuse them."""
    if not 0 <= want < k:
        raise ErasureError(f"want must be a data share in [0, {k}), got {want}")
    if not available(codec):
        raise ErasureError(f"erasure codec {codec!r} is not available in this process")
    if want in shares:
        return bytes(shares[want])
    usable = {n: b for n, b in shares.items() if 0 <= n < k + parity}
    if len(usable) < k:
        raise ErasureError(f"need {k} shares to rebuild share {want}, have {sorted(usable)}")
    n = _equal(list(usable.values()))
    if k == 1:
        return bytes(next(iter(usable.values())))
    numbers = sorted(usable)[:k]
    if codec == "zfec":
        data: list[bytes] = zfec.Decoder(k, k + parity).decode([usable[s] for s in numbers], numbers)
        return data[want]
    inverse = _decoding_matrix(numbers, k, parity)
    out = bytearray(n)
    _isal_apply(inverse[[want]], [usable[s] for s in numbers], [out], n)
    return out


def decode_into(
    shares: Mapping[int, Buffer],
    k: int,
    parity: int,
    want: int,
    *,
    codec: str,
    out: Sequence[tuple[int, memoryview]],
) -> None:
    """As `decode`, but bytes `[offset, offset + len(view))` of data block `want` go straight into each
    writable `(offset, view)` of `out` (ISA-L writes them there; zfec decodes, then they are copied)."""
    if codec != "isa-l" or want in shares or k == 1:
        data = memoryview(decode(shares, k, parity, want, codec))
        for offset, view in out:
            view[:] = data[offset : offset + view.nbytes]
        return
    if not available(codec):
        raise ErasureError(f"erasure codec {codec!r} is not available in this process")
    usable = {n: b for n, b in shares.items() if 0 <= n < k + parity}
    if len(usable) < k:
        raise ErasureError(f"need {k} shares to rebuild share {want}, have {sorted(usable)}")
    n = _equal(list(usable.values()))
    if any(offset < 0 or offset + view.nbytes > n for offset, view in out):
        raise ErasureError(f"out ranges must lie within the {n} bytes of a share")
    numbers = sorted(usable)[:k]
    inverse = _decoding_matrix(numbers, k, parity)
    inputs = [usable[s] for s in numbers]
    for offset, view in out:
        if view.nbytes:
            _isal_apply(inverse[[want]], inputs, [view], view.nbytes, in_offset=offset)
