"""Which worker pod changes trigger an immediate planning pass (`handlers.pod_signature`)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from elastra_operator.handlers import pod_signature


def worker(
    *, phase: str = "Running", agent: dict[str, Any] | None = None, commit: int | None = None, **meta: Any
) -> dict[str, Any]:
    annotations = {}
    if agent is not None:
        annotations["elastra.dev/agent"] = json.dumps(agent)
    if commit is not None:
        annotations["elastra.dev/commit"] = json.dumps({"step": commit})
    return {
        "metadata": {"name": "tj-w-0", "annotations": annotations, **meta},
        "spec": {"nodeName": "node-1"},
        "status": {"phase": phase, "podIP": "127.0.0.5"},
    }


RUNNING = {"generation": 2, "state": "Running", "step": 10, "time": "t1"}


@pytest.mark.parametrize(
    ("before", "after", "triggers"),
    [
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "step": 30, "time": "t2"}),
            False,
            id="step-report-alone-does-not-trigger",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "state": "Failed", "exitCode": 75}),
            True,
            id="agent-failure-triggers",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "generation": 3}),
            True,
            id="new-generation-report-triggers",
        ),
        pytest.param(
            worker(agent=RUNNING),
            worker(agent={**RUNNING, "ackRequest": "r-1"}),
            True,
            id="request-answer-triggers",
        ),
        pytest.param(worker(commit=20), worker(commit=40), True, id="new-commit-triggers"),
        pytest.param(worker(phase="Pending"), worker(phase="Running"), True, id="pod-running-triggers"),
        pytest.param(
            worker(), worker(deletionTimestamp="2026-01-01T00:00:00Z"), True, id="deletion-triggers"
        ),
        pytest.param(worker(), worker(labels={"x": "y"}), False, id="unrelated-metadata-does-not-trigger"),
    ],
)
def test_pod_signature(before: dict[str, Any], after: dict[str, Any], triggers: bool) -> None:
    assert (pod_signature(before) != pod_signature(after)) is triggers


@pytest.mark.parametrize(
    "raw", [pytest.param("{not json", id="not-json"), pytest.param("[1, 2]", id="not-an-object")]
)
def test_unreadable_annotation_still_has_a_signature(raw: str) -> None:
    pod = worker()
    pod["metadata"]["annotations"]["elastra.dev/agent"] = raw
    changed = worker()
    changed["metadata"]["annotations"]["elastra.dev/agent"] = raw + " "
    assert pod_signature(pod) != pod_signature(changed)


def test_a_burst_of_peer_lost_reports_schedules_one_follow_up_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """511 PeerLost reports of a 512-pod job: one follow-up thread, one pass, after the last report."""
    import threading
    import time

    from elastra_operator import handlers

    passes: list[tuple[str, str]] = []
    done = threading.Event()

    def counted(namespace: str, name: str) -> None:
        passes.append((namespace, name))
        done.set()

    monkeypatch.setattr(handlers, "run_pass", counted)
    threads_before = threading.active_count()
    last = 0.0
    for _ in range(511):
        handlers.follow_up("ns", "big", 0.2)
        last = time.monotonic()
    assert threading.active_count() <= threads_before + 1
    assert done.wait(5)
    assert time.monotonic() - last >= 0.2
    time.sleep(0.3)
    assert passes == [("ns", "big")]
