"""Reed-Solomon erasure coding of equal-length blocks, behind two functions (zfec).

`encode(blocks, parity)` returns `parity` parity blocks for `k = len(blocks)` data blocks; `decode`
rebuilds any data block from any `k` of the `k + parity` shares. Blocks are byte ranges at the same
offsets of every share, so a caller may encode whole blocks and later decode just the range it needs.

Chosen by measurement (`benchmarks/memory_tier.py`, `docs/benchmarks.md`): zfec works on the caller's
`k` blocks as they are (no concatenation, no fragment headers), and encoded fastest of zfec, pyeclib
(liberasurecode / ISA-L backends) and galois at 64 MiB blocks, the size this tier codes (at 4 MiB,
pyeclib's ISA-L backend was on par). With one data block (`k == 1`) the parity is a copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import zfec

Buffer = bytes | bytearray | memoryview


class ErasureError(ValueError):
    """Not enough shares, or shares of different lengths."""


def _equal(blocks: Sequence[Buffer]) -> int:
    sizes = {memoryview(b).nbytes for b in blocks}
    if len(sizes) != 1:
        raise ErasureError(f"blocks must have one length, got {sorted(sizes)}")
    return sizes.pop()


def encode(blocks: Sequence[Buffer], parity: int, only: Sequence[int] | None = None) -> list[bytes]:
    """The `parity` parity blocks (share numbers `k .. k+parity-1`) of the equal-length `blocks`, or
    only those with the parity indices in `only` (in that order)."""
    k = len(blocks)
    if k < 1 or parity < 0 or k + parity > 256:
        raise ErasureError(f"need 1 <= k and k + parity <= 256, got k={k}, parity={parity}")
    _equal(blocks)
    wanted = list(range(parity)) if only is None else list(only)
    if any(not 0 <= j < parity for j in wanted):
        raise ErasureError(f"parity indices must be in [0, {parity}), got {wanted}")
    if not wanted:
        return []
    if k == 1:
        return [bytes(blocks[0]) for _ in wanted]
    encoder = zfec.Encoder(k, k + parity)
    out: list[bytes] = encoder.encode(list(blocks), [k + j for j in wanted])
    return out


def decode(shares: Mapping[int, Buffer], k: int, parity: int, want: int) -> bytes:
    """Data block `want` (`0 <= want < k`) from any `k` of the shares (`{share number: bytes}`)."""
    if not 0 <= want < k:
        raise ErasureError(f"want must be a data share in [0, {k}), got {want}")
    if want in shares:
        return bytes(shares[want])  # a copy: the caller may reuse its buffers
    usable = {n: b for n, b in shares.items() if 0 <= n < k + parity}
    if len(usable) < k:
        raise ErasureError(f"need {k} shares to rebuild share {want}, have {sorted(usable)}")
    _equal(list(usable.values()))
    if k == 1:
        return bytes(next(iter(usable.values())))
    numbers = sorted(usable)[:k]
    decoder = zfec.Decoder(k, k + parity)
    data: list[bytes] = decoder.decode([usable[n] for n in numbers], numbers)
    return data[want]
