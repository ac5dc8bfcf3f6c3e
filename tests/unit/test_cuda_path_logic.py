"""The CUDA path's decisions that run without a GPU (issue 14). The GPU itself is exercised by
`tests/integration/test_cuda_path.py` (skipped without CUDA) and `benchmarks/gpu.py`."""

from __future__ import annotations

import pytest
import torch

from elastra.checkpoint.plan import Piece, plan_save
from elastra.checkpoint.staging import FillKind, StagingBuffer, fill_kind
from elastra.checkpoint.state import split_state
from elastra.session import RngState
from elastra.session.rng import cuda_rng_in_use


@pytest.mark.parametrize(
    ("device", "contiguous", "same_dtype", "kind"),
    [
        pytest.param("cpu", True, True, FillKind.IN_PLACE, id="cpu-contiguous-same-dtype-in-place"),
        pytest.param("cpu", False, True, FillKind.SCRATCH, id="cpu-strided-scratch"),
        pytest.param("cpu", True, False, FillKind.SCRATCH, id="cpu-other-dtype-scratch"),
        pytest.param("cuda", True, True, FillKind.PINNED, id="cuda-pinned"),
        pytest.param("cuda", False, False, FillKind.PINNED, id="cuda-strided-other-dtype-pinned"),
        pytest.param("meta", True, True, FillKind.SCRATCH, id="other-device-scratch"),
    ],
)
def test_restore_fill_kind(device: str, contiguous: bool, same_dtype: bool, kind: FillKind) -> None:
    assert fill_kind(device, contiguous, same_dtype) is kind


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour")
def test_rng_state_on_cpu_has_no_cuda_key_and_ignores_one() -> None:
    assert not cuda_rng_in_use()
    rng = RngState()
    state = rng.state_dict()
    assert set(state) == {"torch_cpu"}
    expected = torch.rand(3)
    # a checkpoint written on CUDA carries `torch_cuda` too: a CPU restore uses the CPU part only
    rng.load_state_dict({**state, "torch_cuda": torch.zeros(16, dtype=torch.uint8)})
    assert torch.equal(torch.rand(3), expected)


def test_cpu_staging_neither_pins_nor_makes_a_stream() -> None:
    """On CPU, `prepare` takes the plain path: a pageable buffer (pinning needs a CUDA driver), no
    side stream; the copy is exact."""
    state = {"w": torch.arange(12, dtype=torch.float32).view(3, 4), "b": torch.ones(5, dtype=torch.bfloat16)}
    leaves, _ = split_state(state)
    pieces = [Piece(x.path, x.dtype, x.shape, x.layout, x.sharding, x.box) for x in leaves]
    writes = plan_save([pieces]).writes[0]
    buffer = StagingBuffer()
    job = buffer.prepare(writes, {(x.path, x.box.offsets, x.box.shape): x for x in leaves}, b" " * 4096)
    assert job.stream is None and buffer._stream is None
    staged = bytes(StagingBuffer.copy(job).data)
    assert len(staged) == writes.data_bytes == 12 * 4 + 5 * 2
    for placed in writes.pieces:
        source = state[placed.piece.path]
        chunk = staged[placed.data_offset : placed.data_offset + placed.piece.nbytes]
        assert chunk == source.contiguous().view(torch.uint8).numpy().tobytes()
