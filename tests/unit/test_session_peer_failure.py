"""Which worker errors mean "a peer is gone" (exit 75, never a permanent failure) and which are bugs."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from elastra.checkpoint.handles import CheckpointError, RestartRequired
from elastra.session.session import is_peer_failure, worker_exit_code


@pytest.mark.parametrize(
    ("exc", "peer"),
    [
        pytest.param(
            RuntimeError(
                "[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:1"
            ),
            True,
            id="gloo-closed-by-peer",
        ),
        pytest.param(
            RuntimeError("Read error [127.0.0.1]:8623: Connection reset by peer"), True, id="reset-by-peer"
        ),
        pytest.param(RuntimeError("NCCL communicator was aborted on rank 1"), True, id="nccl-abort"),
        pytest.param(dist.DistBackendError("backend failed"), True, id="dist-backend-error"),
        pytest.param(
            dist.DistNetworkError("Connection reset by peer"), True, id="rendezvous-store-reset-by-peer"
        ),
        pytest.param(RuntimeError("mat1 and mat2 shapes cannot be multiplied"), False, id="shape-bug"),
        pytest.param(ValueError("Connection closed by peer"), False, id="not-a-runtime-error"),
        pytest.param(KeyError("model"), False, id="key-error"),
    ],
)
def test_is_peer_failure(exc: BaseException, peer: bool) -> None:
    assert is_peer_failure(exc) is peer


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        pytest.param(RuntimeError("Connection reset by peer"), 75, id="peer-gone-rescale"),
        pytest.param(
            RestartRequired("a memory snapshot failed while being read into the state"), 77,
            id="state-dirtied-by-a-failed-restore-restart-clean",
        ),
        pytest.param(CheckpointError("no usable checkpoint"), 1, id="other-checkpoint-error-is-a-crash"),
        pytest.param(KeyError("model"), 1, id="user-bug-crash"),
    ],
)  # fmt: skip
def test_worker_exit_code(exc: BaseException, code: int) -> None:
    assert worker_exit_code(exc) == code
