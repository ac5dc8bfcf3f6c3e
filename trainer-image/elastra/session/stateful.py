"""The state a training script hands the session: a mapping whose values are tensors, containers of
them, or `Stateful` objects (modules, optimizers, samplers) that save and load their own state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """Anything with `state_dict()` / `load_state_dict()`; saved through its state dict."""

    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def materialize(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state with every `Stateful` value replaced by its state dict (top level only)."""
    return {k: (v.state_dict() if isinstance(v, Stateful) else v) for k, v in state.items()}
