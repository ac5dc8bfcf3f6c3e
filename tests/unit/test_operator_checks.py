"""Whether a Checkpoint's storage may be deleted now (the finalizer's decision)."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_support import ckpt, job, membership, node, pod

from elastra_operator.reconcile.checks import deletion_refusal, teardown

SIBLINGS = [ckpt(30), ckpt(40), ckpt(50)]
RUNNING = {"phase": "Running"}


@pytest.mark.parametrize(
    ("target", "job_view", "refused"),
    [
        pytest.param(
            ckpt(50), job(status=RUNNING), "newest committed checkpoint", id="newest-of-running-job"
        ),
        pytest.param(ckpt(40), job(status=RUNNING), None, id="older-of-running-job"),
        pytest.param(ckpt(50), job(status={"phase": "Succeeded"}), None, id="newest-of-finished-job"),
        pytest.param(ckpt(50), job(status=RUNNING, deleting=True), None, id="newest-of-deleted-job"),
        pytest.param(ckpt(50), None, None, id="job-gone"),
        pytest.param(
            ckpt(40),
            job(status={"phase": "Restoring"}, m=membership(3, ["tj-w-0"], restore=40)),
            "being restored",
            id="restore-point-while-restoring",
        ),
        pytest.param(
            ckpt(40),
            job(status=RUNNING, m=membership(3, ["tj-w-0"], restore=40)),
            None,
            id="old-restore-point-once-running",
        ),
    ],
)
def test_deletion_refusal(target: Any, job_view: Any, refused: str | None) -> None:
    reason = deletion_refusal(target, job_view, SIBLINGS)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("pods", "expected"),
    [
        pytest.param([pod(0), pod(1)], [("tj-w-0", False), ("tj-w-1", False)], id="delete-running-pods"),
        pytest.param([pod(0, deleting=True)], [], id="already-deleting-on-ready-node"),
        pytest.param([pod(2, deleting=True)], [("tj-w-2", True)], id="stranded-on-notready-node-is-forced"),
        pytest.param([pod(3)], [("tj-w-3", True)], id="node-gone-is-forced"),
        pytest.param([pod(4, phase="Pending", node=None)], [("tj-w-4", False)], id="unscheduled"),
    ],
)
def test_teardown(pods: Any, expected: list[tuple[str, bool]]) -> None:
    assert teardown(pods, [node(0), node(1), node(2, ready=False), node(4)]) == expected
