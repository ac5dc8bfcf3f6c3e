"""How a state meets a checkpoint: what is restored, missing, unexpected or tied; no silent partial loads.

Pure (no I/O): compares the tensor leaves of the state being loaded with the tensor paths of a
checkpoint. A state tensor the checkpoint lacks is missing: an error unless the caller allows it (then
it keeps its value). A checkpoint tensor no state leaf takes is unexpected: reported. One case is
always an error, because it silently loses training state: an optimizer whose state is still empty
(a fresh `torch.optim` optimizer has no `exp_avg` until its first step) while the checkpoint holds
state for it. Tied weights (two paths, one memory) are restored through either path.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from elastra.checkpoint.format import FormatError
from elastra.checkpoint.state import TensorLeaf

GROUPS = "param_groups/"
STATE = "state/"
FRESH_OPTIMIZER_HELP = (
    "create its state before loading: call torch.distributed.checkpoint.state_dict.get_state_dict("
    "model, optimizer) (which creates it) and load into the state dict it returns, or hand the "
    "optimizer itself to session.restore(), which creates the state of an empty optimizer before a "
    "checkpoint restore"
)


class StateMismatch(FormatError):
    """The state and the checkpoint disagree on which tensors there are, and the caller did not allow it."""


def memory_key(leaf: TensorLeaf) -> tuple[Any, ...]:
    """Equal for two leaves over the same memory (tied weights)."""
    local = leaf.local
    if local.device.type == "meta":
        return (id(local), leaf.box.offsets)
    return (
        local.untyped_storage().data_ptr(),
        int(local.storage_offset()),
        tuple(local.shape),
        leaf.box.offsets,
    )


@dataclass(frozen=True, slots=True)
class Coverage:
    """The leaves a checkpoint can fill, and what it cannot."""

    loadable: list[TensorLeaf]
    """Leaves whose path the checkpoint holds."""
    missing: tuple[str, ...] = ()
    """State paths the checkpoint lacks (allowed by the caller; they keep their values)."""
    unexpected: tuple[str, ...] = ()
    """Checkpoint paths no leaf takes."""
    tied: dict[str, str] = field(default_factory=dict)
    """State paths the checkpoint lacks that share memory with a loadable leaf -> that leaf's path."""


def optimizer_roots(value_paths: Iterable[str]) -> set[str]:
    """Prefixes (`optim/`, `model/optim/`, or `` for a bare optimizer state dict) under which the state
    holds a `torch.optim` state dict, recognised by its `param_groups` values."""
    roots = set()
    for path in value_paths:
        if path.startswith(GROUPS):
            roots.add("")
        elif f"/{GROUPS}" in path:
            roots.add(path[: path.index(f"/{GROUPS}") + 1])
    return roots


def _allowed(path: str, allow: bool | Collection[str]) -> bool:
    return allow if isinstance(allow, bool) else path in allow


def cover(
    leaves: list[TensorLeaf],
    value_paths: Iterable[str],
    saved: Collection[str],
    *,
    step: int,
    allow_missing: bool | Collection[str] = False,
) -> Coverage:
    """Match `leaves` with the checkpoint's tensor paths `saved`. Raises StateMismatch for an empty
    optimizer whose state the checkpoint holds, and for missing tensors not allowed."""
    paths = {leaf.path for leaf in leaves}
    loadable = [leaf for leaf in leaves if leaf.path in saved]
    unexpected = tuple(sorted(set(saved) - paths))
    for root in sorted(optimizer_roots(value_paths)):
        state_prefix = root + STATE
        lost = [p for p in unexpected if p.startswith(state_prefix)]
        if lost and not any(p.startswith(state_prefix) for p in paths):
            raise StateMismatch(
                f"the optimizer at {root or '/'!r} has no state yet, so {len(lost)} saved tensor(s) of step "
                f"{step} (e.g. {lost[0]}) would be dropped and training would go on from zero moments: "
                f"{FRESH_OPTIMIZER_HELP}"
            )
    filled = {memory_key(leaf): leaf.path for leaf in loadable}
    tied: dict[str, str] = {}
    missing: list[str] = []
    for leaf in leaves:
        if leaf.path in saved or leaf.path in tied or leaf.path in missing:
            continue
        twin = filled.get(memory_key(leaf))
        if twin is not None:
            tied[leaf.path] = twin
        else:
            missing.append(leaf.path)
    refused = [p for p in missing if not _allowed(p, allow_missing)]
    if refused:
        raise StateMismatch(
            f"{len(refused)} tensor(s) of the state are not in step {step}, e.g. {refused[:5]}; pass "
            "allow_missing=True (or the paths) to keep their current values"
        )
    return Coverage(loadable, tuple(missing), unexpected, tied)


def like(current: Any, saved: Any) -> Any:
    """`saved` (a JSON value) with Python's types where the state held them: a tuple (or namedtuple)
    comes back as one, not as the list JSON made of it. Anything else is `saved` as is."""
    if isinstance(current, tuple) and isinstance(saved, list) and len(current) == len(saved):
        items = [like(c, s) for c, s in zip(current, saved, strict=True)]
        make = getattr(type(current), "_make", None)
        return make(items) if make is not None else type(current)(items)
    if isinstance(current, list) and isinstance(saved, list) and len(current) == len(saved):
        return [like(c, s) for c, s in zip(current, saved, strict=True)]
    if isinstance(current, dict) and isinstance(saved, dict):
        return {k: like(current.get(k), v) for k, v in saved.items()}
    return saved


def init_optimizer_state(optimizer: Any) -> bool:
    """Create the state of a `torch.optim` optimizer that has none yet, so that a restore has tensors to
    fill: one `step()` with zero gradients and lr 0, as `torch.distributed.checkpoint.state_dict`'s
    `get_state_dict` does (parameters are unchanged; the restore then overwrites the state, `step`
    counters included). True when it created the state; False when there was state already, or
    gradients (mid-step: left alone)."""
    if optimizer.state:
        return False
    from torch.distributed.checkpoint.state_dict import _init_optim_state

    _init_optim_state(optimizer)
    return bool(optimizer.state)
