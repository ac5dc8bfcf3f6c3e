"""What a training state holds, seen as pieces of logical tensors plus JSON values.

Walks the nested dicts and lists of a state, and for every tensor leaf works out the box of the global
tensor this rank holds: plain tensors are replicated (the full box), DTensors use their mesh and
placements (uneven shards included; a `_StridedShard` local tensor may be several boxes, one leaf
each), `Flat` is a range of the flattened tensor. No I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from elastra.checkpoint.geometry import Box, ShardSpec, local_parts

TORCH_TO_ST: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.complex64: "C64", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}  # fmt: skip
ST_TO_TORCH = {v: k for k, v in TORCH_TO_ST.items()}


@dataclass(frozen=True, slots=True)
class Flat:
    """ZeRO-style flat-partitioned state: this rank holds elements `[offset, offset + numel)` of the
    row-major flattening of a tensor of global `shape`, in the 1-D tensor `local`."""

    local: torch.Tensor
    """1-D tensor of `numel` elements; loads write into it in place."""
    offset: int
    """Index of `local[0]` in the flattened global tensor."""
    numel: int
    """Elements held here."""
    shape: tuple[int, ...]
    """Global shape of the logical tensor."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.local.dim() != 1 or self.local.numel() != self.numel:
            raise ValueError(
                f"Flat.local must be 1-D with {self.numel} elements, got {tuple(self.local.shape)}"
            )
        if self.offset < 0 or self.offset + self.numel > math.prod(self.shape):
            raise ValueError(
                f"Flat range [{self.offset}, +{self.numel}) outside a tensor of shape {self.shape}"
            )


@dataclass(frozen=True, slots=True)
class TensorLeaf:
    """One tensor leaf of the state as this rank holds it."""

    path: str
    local: torch.Tensor
    """The data held here, shaped like `box` (a view; loads copy into it in place)."""
    dtype: str
    shape: tuple[int, ...]
    """Global shape."""
    layout: str
    sharding: str
    box: Box


def escape(key: object) -> str:
    """One path component: `%` and `/` escaped so that joining with `/` is unambiguous."""
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise TypeError(f"state keys must be str or int, got {type(key).__name__} {key!r}")
    return str(key).replace("%", "%25").replace("/", "%2F")


def walk(state: object, prefix: str = "") -> Iterator[tuple[str, object, object, object]]:
    """Yield `(path, container, key, leaf)` for every leaf of nested dicts and lists."""
    items: Any
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, list):
        items = enumerate(state)
    else:
        raise TypeError(f"state must be a dict or a list, got {type(state).__name__}")
    for key, value in items:
        path = f"{prefix}/{escape(key)}" if prefix else escape(key)
        if isinstance(value, dict | list):
            yield from walk(value, path)
        else:
            yield path, state, key, value


def _is_dtensor(value: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def shard_specs(path: str, placements: Any, ndim: int) -> tuple[ShardSpec | None, ...]:
    """Torch placements as torch-free `ShardSpec`s (`None` for Replicate); TypeError for the others."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    specs: list[ShardSpec | None] = []
    for p in placements:
        if isinstance(p, _StridedShard):  # before Shard: older torch makes it a Shard subclass
            specs.append(ShardSpec(p.dim % max(ndim, 1), int(p.split_factor)))
        elif isinstance(p, Shard):
            specs.append(ShardSpec(p.dim % max(ndim, 1)))
        elif isinstance(p, Replicate):
            specs.append(None)
        else:
            raise TypeError(
                f"{path}: placement {p} is not supported (only Shard(dim), _StridedShard and Replicate); "
                "reduce Partial placements before saving"
            )
    return tuple(specs)


def dtensor_leaves(path: str, value: Any) -> list[TensorLeaf]:
    """The boxes of a DTensor this rank holds, one leaf each: a `Shard`/`Replicate` local tensor is one
    box, a `_StridedShard` one may be several (each leaf's `local` is a view of the local tensor)."""
    shape = tuple(value.shape)
    specs = shard_specs(path, value.placements, len(shape))
    coordinate = value.device_mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(f"{path}: this rank is not part of the DTensor's device mesh")
    mesh_shape = tuple(value.device_mesh.shape)
    parts = local_parts(shape, mesh_shape, tuple(coordinate), specs)
    local = value._local_tensor
    expected = tuple(max(p.local_offsets[d] + p.box.shape[d] for p in parts) for d in range(len(shape)))
    if tuple(local.shape) != expected:
        raise ValueError(f"{path}: local shard shape {tuple(local.shape)} != expected {expected}")
    sharding = f"mesh={mesh_shape} {list(map(str, value.placements))}"
    dtype = _st_dtype(path, local.dtype)
    leaves = []
    for part in parts:
        index = tuple(slice(o, o + n) for o, n in zip(part.local_offsets, part.box.shape, strict=True))
        view = local[index] if len(parts) > 1 else local
        leaves.append(TensorLeaf(path, view, dtype, shape, "boxes", sharding, part.box))
    return leaves


def _st_dtype(path: str, dtype: torch.dtype) -> str:
    if dtype not in TORCH_TO_ST:
        raise TypeError(f"{path}: dtype {dtype} is not supported by the checkpoint format")
    return TORCH_TO_ST[dtype]


def is_tensor_value(value: object) -> bool:
    """Whether a state leaf is tensor data (a tensor, a DTensor or `Flat`) rather than a JSON value."""
    return isinstance(value, Flat | torch.Tensor)


def tensor_leaves(path: str, value: object) -> list[TensorLeaf] | None:
    """The `TensorLeaf`s of a tensor-like leaf (one per box held here), or None for a JSON value."""
    if isinstance(value, Flat):
        return [TensorLeaf(path, value.local, _st_dtype(path, value.local.dtype), value.shape, "flat", "flat",
                           Box((value.offset,), (value.numel,)))]  # fmt: skip
    if _is_dtensor(value):
        return dtensor_leaves(path, value)
    if isinstance(value, torch.Tensor):
        shape = tuple(value.shape)
        return [TensorLeaf(path, value, _st_dtype(path, value.dtype), shape, "boxes", "replicated",
                           Box((0,) * len(shape), shape))]  # fmt: skip
    return None


def split_state(state: object) -> tuple[list[TensorLeaf], dict[str, Any]]:
    """Tensor leaves and JSON values (checked to be JSON-able) of a state."""
    tensors: list[TensorLeaf] = []
    values: dict[str, Any] = {}
    for path, _container, _key, value in walk(state):
        leaves = tensor_leaves(path, value)
        if leaves is not None:
            tensors.extend(leaves)
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{path}: {type(value).__name__} is neither a tensor nor JSON-able: {exc}"
            ) from exc
        values[path] = value
    return tensors, values
