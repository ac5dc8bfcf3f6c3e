"""The random generators as checkpoint state: `RngState`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class RngState:
    """The torch CPU generator, and on CUDA the current device's generator too, as state (replicated:
    every rank continues from rank 0's state). Its keys follow the device the session trains on, so a
    job keeps one kind of device across restarts; a CUDA key in the checkpoint is ignored on CPU."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"torch_cpu": torch.get_rng_state()}
        if cuda_rng_in_use():
            state["torch_cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch_cpu"].to(torch.uint8))
        if "torch_cuda" in state and cuda_rng_in_use():
            torch.cuda.set_rng_state(state["torch_cuda"].to(torch.uint8))


def cuda_rng_in_use() -> bool:
    """The process trains on CUDA (a device is available and CUDA is initialized: `Session` sets the
    device before any state exists), so the CUDA generator is part of the state."""
    return torch.cuda.is_available() and bool(torch.cuda.is_initialized())  # type: ignore[no-untyped-call]
