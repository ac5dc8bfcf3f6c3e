"""The CUDA path on a real device (issue 14): pinned staging on a side stream, restore into CUDA tensors
through pinned memory, the CUDA generator in `RngState`, and a save/restore over NCCL. Skipped without
CUDA (the CPU-testable decisions are in tests/unit/test_cuda_path_logic.py); `benchmarks/gpu.py`
measures the same path at 8.5 GiB."""

from __future__ import annotations

import pathlib
import socket
from collections.abc import Iterator

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _state(device: torch.device) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(1)
    return {
        "w": torch.randn(1024, 257, device=device, generator=gen),
        "h": torch.randn(33, 7, device=device, generator=gen).to(torch.bfloat16),
        "strided": torch.randn(64, 64, device=device, generator=gen).t(),  # not contiguous
    }


@pytest.fixture
def world_of_one() -> Iterator[torch.device]:
    import torch.distributed as dist

    device = torch.device("cuda:0")
    torch.cuda.set_device(device)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group(
        "cpu:gloo,cuda:nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, device_id=device
    )
    try:
        yield device
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("staging", ["eager", "lazy"])
def test_cuda_state_saves_through_pinned_staging_and_restores_exactly(
    world_of_one: torch.device, tmp_path: pathlib.Path, staging: str
) -> None:
    from elastra.checkpoint import Checkpointer

    state = _state(world_of_one)
    saved = {k: v.clone() for k, v in state.items()}
    writer = Checkpointer(str(tmp_path))
    handle = writer.save(5, state, staging=staging)
    writer.fence()
    with torch.no_grad():  # the optimizer step after the fence: must not reach the checkpoint
        for tensor in state.values():
            tensor.add_(1)
    assert handle.wait() is not None
    assert writer._staging._buffer.is_pinned() and writer._staging._stream is not None
    writer.close()

    target = {k: torch.zeros_like(v) for k, v in saved.items()}
    reader = Checkpointer(str(tmp_path))
    assert reader.load(target) == 5
    reader.close()
    for key, tensor in target.items():
        assert tensor.is_cuda and torch.equal(tensor, saved[key]), key


def test_rng_state_carries_the_cuda_generator(world_of_one: torch.device) -> None:
    from elastra.session import RngState

    torch.cuda.manual_seed(7)
    rng = RngState()
    state = {k: v.clone() for k, v in rng.state_dict().items()}
    assert set(state) == {"torch_cpu", "torch_cuda"}
    expected = torch.rand(4, device=world_of_one)
    torch.rand(100, device=world_of_one)  # move on
    rng.load_state_dict(state)
    assert torch.equal(torch.rand(4, device=world_of_one), expected)
