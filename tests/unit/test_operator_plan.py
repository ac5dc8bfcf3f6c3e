"""plan() as a table: one named case per behaviour of the operator (issue 5)."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_support import (
    NOW,
    Summary,
    agent,
    at,
    ckpt,
    commit,
    job,
    membership,
    node,
    nodes,
    pod,
    request,
    summarize,
)

from elastra_operator.reconcile.plan import plan
from elastra_operator.reconcile.views import OperatorRecord

M3 = membership(1, ["tj-w-0", "tj-w-1", "tj-w-2"])
M3R = membership(2, ["tj-w-0", "tj-w-1", "tj-w-2"], restore=40)
M2 = membership(1, ["tj-w-0", "tj-w-1"])
M2R = membership(2, ["tj-w-0", "tj-w-1"], restore=40)
STARTED = OperatorRecord(started_at=at(-500), last_rescale_at=at(-500), rescale_reason="Start")


def peer_lost(*indices: int, ago: float) -> list[Any]:
    reason = "PeerLost: worker rank 0 exited with code 75: collective failed"
    report = {"exitCode": 75, "reason": reason, "time": at(-ago)}
    return [pod(i, report=agent(1, "Failed", **report)) for i in indices]


def running(*indices: int, generation: int = 1, state: str = "Running", **over: Any) -> list[Any]:
    return [pod(i, report=agent(generation, state), **over) for i in indices]


def hold(generation: int = 0) -> Any:
    return membership(generation, [], phase="Hold")


CASES = [
    # ------------------------------------------------------------------ start
    pytest.param(
        job(),
        [],
        nodes(3),
        [],
        {
            "created_kinds": ["Service", "ServiceAccount", "Role", "RoleBinding", "Pod", "Pod", "Pod"],
            "m": (0, "Hold", []),
            "phase": "Starting",
        },
        id="start-creates-service-one-pod-per-node-and-record",
    ),
    pytest.param(
        job(),
        [],
        nodes(6),
        [],
        {"created_pods": ["tj-w-0", "tj-w-1", "tj-w-2", "tj-w-3"]},
        id="start-caps-pods-at-max",
    ),
    pytest.param(
        job(m=hold()),
        [*running(0, 1, generation=0, state="Waiting"), pod(2, phase="Pending")],
        nodes(3),
        [],
        {"m": None, "phase": "Starting", "created_pods": []},
        id="gang-start-waits-for-every-pod-to-run",
    ),
    pytest.param(
        job(m=hold()),
        running(0, 1, 2, generation=0, state="Waiting"),
        nodes(3),
        [],
        {
            "m": (1, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]),
            "restore": None,
            "events": ["Rescaled"],
            "observed": ["rescales"],
            "phase": "Starting",
            "restarts": 0,
        },
        id="gang-start-when-all-run",
    ),
    pytest.param(
        job(m=hold(), checkpoint={"restoreFrom": "other-step-40"}, restore_from=ckpt(40, job_name="other")),
        running(0, 1, generation=0),
        nodes(2),
        [],
        {"m": (1, "Run", ["tj-w-0", "tj-w-1"]), "restore": "other-step-40", "phase": "Restoring"},
        id="start-forks-from-restoreFrom",
    ),
    pytest.param(
        job(m=hold()),
        [*running(0, 1, generation=0), pod(2, phase="Pending", node=None, created=-400)],
        nodes(3),
        [],
        {"m": (1, "Run", ["tj-w-0", "tj-w-1"])},
        id="start-without-pods-pending-past-start-timeout",
    ),
    pytest.param(
        job(),
        [],
        [node(0), node(1, taints=(("dedicated", "infer", "NoSchedule"),)), node(2)],
        [],
        {"created_pods": ["tj-w-0", "tj-w-1"]},
        id="tainted-node-without-toleration-gets-no-pod",
    ),
    pytest.param(
        job(
            template={
                "spec": {"containers": [{"name": "t", "image": "i"}], "tolerations": [{"operator": "Exists"}]}
            }
        ),
        [],
        [node(0), node(1, taints=(("dedicated", "infer", "NoSchedule"),)), node(2)],
        [],
        {"created_pods": ["tj-w-0", "tj-w-1", "tj-w-2"]},
        id="tolerated-taint-is-capacity",
    ),
    pytest.param(
        job(),
        [],
        nodes(1),
        [],
        {
            "created_pods": ["tj-w-0"],
            "phase": "Pending",
            "condition": ("Capacity", "False", "InsufficientCapacity"),
        },
        id="below-min-waits-with-condition",
    ),
    pytest.param(
        job(m=hold()),
        [pod(0, phase="Pending"), pod(1, phase="Pending"), pod(2, phase="Pending")],
        nodes(3),
        [],
        {"created_pods": [], "m": None},
        id="restarted-operator-creates-no-duplicate-pods",
    ),
    # ------------------------------------------------------------------ steady
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        nodes(3),
        [],
        {"m": None, "phase": "Running", "step": 50, "world": 3, "deleted_pods": []},
        id="steady-running-writes-nothing-but-status",
    ),
    pytest.param(
        job(m=M3R, record=STARTED),
        [*running(0, 1, generation=2), pod(2, report=agent(2, "Restoring"))],
        nodes(3),
        [ckpt(40)],
        {"m": None, "phase": "Restoring"},
        id="restoring-until-every-member-runs",
    ),
    # ------------------------------------------------------------------ failure
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 2), pod(1, phase="Failed", exit_code=137)],
        nodes(3),
        [ckpt(40)],
        {
            "deleted_pods": ["tj-w-1"],
            "created_pods": ["tj-w-3"],
            "failures": 1,
            "events": ["Failure"],
            "observed": ["failures"],
            "phase": "Rescaling",
        },
        id="retryable-exit-137-counts-failure-and-replaces-pod",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-40))],
        [ckpt(40)],
        {
            "m": (2, "Run", ["tj-w-0", "tj-w-1"]),
            "restore": "tj-step-40",
            "failures": 1,
            "forced": ["tj-w-2"],
            "created_pods": [],
            "phase": "Restoring",
            "restarts": 1,
        },
        id="node-notready-past-timeout-rescales-survivors-from-newest",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-10))],
        [ckpt(40)],
        {"m": None, "deleted_pods": [], "phase": "Running"},
        id="node-notready-within-timeout-waits",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        [node(0), node(1)],
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1"]), "failures": 1},
        id="node-deleted-counts-its-pods-lost",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 2), pod(1, deleting=True)],
        nodes(3),
        [ckpt(40)],
        {"failures": 1, "events": ["Failure"]},
        id="pod-deleted-by-hand-is-a-failure",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 2), pod(1, phase="Failed", reason="Evicted")],
        nodes(3),
        [],
        {"failures": 1, "deleted_pods": ["tj-w-1"]},
        id="evicted-pod-is-a-failure",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 2), pod(1, phase="Failed", exit_code=1)],
        nodes(3),
        [],
        {"m": (1, "Done", None), "phase": "Failed", "condition": ("Failed", "True", "WorkerFailed")},
        id="exit-code-1-is-permanent",
    ),
    pytest.param(
        job(m=M3, record=STARTED, runPolicy={"retryableExitCodes": [1]}),
        [*running(0, 2), pod(1, phase="Failed", exit_code=1)],
        nodes(3),
        [],
        {"failures": 1, "phase": "Rescaling"},
        id="exit-code-1-retried-when-policy-says-so",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0), pod(1, report=agent(1, "Failed", exitCode=2, reason="ValueError")), *running(2)],
        nodes(3),
        [],
        {"phase": "Failed", "condition": ("Failed", "True", "WorkerFailed")},
        id="agent-reported-user-error-is-permanent",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0), pod(1, report=agent(1, "Failed", exitCode=77, reason="RestartRequired")), *running(2)],
        nodes(3),
        [],
        {"failures": 1, "phase": "Starting", "m": (2, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"])},
        id="a-worker-that-must-start-clean-is-restarted-in-place-not-failed",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [
            pod(0, report=agent(1, "Failed", exitCode=1, reason="PeerLost: gloo connection reset")),
            pod(1, phase="Failed", exit_code=137),
            *running(2),
        ],
        nodes(3),
        [],
        {"failures": 1, "phase": "Rescaling", "failure_reason": "ExitCode137"},
        id="peer-lost-error-beside-a-killed-rank-is-retryable",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, 1, ago=0.5), *running(2)],
        nodes(3),
        [ckpt(40)],
        {"m": None, "phase": "Rescaling", "failures": 0},
        id="only-peer-errors-wait-for-the-silent-member-to-report",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, ago=0.8), *peer_lost(1, ago=0.3), *running(2)],
        nodes(3),
        [ckpt(40)],
        {"m": None, "phase": "Rescaling", "failures": 0},
        id="the-silent-member-gets-a-second-from-the-first-symptom",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, 1, ago=1.5), *running(2)],
        nodes(3),
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1"]), "failures": 1, "failure_reason": "Unresponsive"},
        id="reporters-outnumber-the-silent-and-went-quiet-no-full-settle-wait",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, ago=2), *running(1, 2)],
        nodes(3),
        [ckpt(40)],
        {"m": None, "phase": "Rescaling", "failures": 0},
        id="silent-majority-waits-the-full-settle-time",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, 1, ago=10), *running(2)],
        nodes(3),
        [ckpt(40)],
        {
            "m": (2, "Run", ["tj-w-0", "tj-w-1"]),
            "failures": 1,
            "deleted_pods": [],
            "failure_reason": "Unresponsive",
        },
        id="only-peer-errors-after-settling-leave-the-silent-member-out",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        peer_lost(0, 1, 2, ago=10),
        nodes(3),
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]), "failures": 1, "failure_reason": "PeerLost"},
        id="everyone-lost-a-peer-restarts-everyone",
    ),
    pytest.param(
        job(m=M2R, record=STARTED),
        [*running(0, 1, generation=2), pod(2, report=agent(1, "Running"))],
        nodes(3),
        [],
        {"m": None, "phase": "Running"},
        id="member-still-running-an-old-generation-does-not-join",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [pod(0, report=agent(1, "Failed", exitCode=1)), *running(1, 2)],
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-5))],
        [],
        {"phase": "Rescaling", "m": None, "failures": 0},
        id="user-error-while-a-node-is-notready-waits-for-the-node",
    ),
    pytest.param(
        job(m=M3, record=STARTED.model_copy(update={"failures": 6})),
        [*running(0, 2), pod(1, phase="Failed", exit_code=137)],
        nodes(3),
        [],
        {"phase": "Failed", "condition": ("Failed", "True", "BackoffLimitExceeded"), "m": (1, "Done", None)},
        id="backoff-limit-exceeded-fails-the-job",
    ),
    pytest.param(
        job(
            m=M3,
            record=STARTED.model_copy(
                update={"failures": 1, "failure_generation": 1, "failure_detected_at": at(-3)}
            ),
        ),
        [*running(0, 2), pod(1, phase="Failed", exit_code=137, deleting=True)],
        nodes(3),
        [],
        {"events": [], "record_failures": None},
        id="a-generation-fails-only-once",
    ),
    pytest.param(
        job(m=M3, record=STARTED, replicas={"min": 3}),
        running(0, 1, 2),
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-60))],
        [ckpt(40)],
        {"m": (2, "Hold", []), "events": ["Failure", "Held", "InsufficientCapacity"], "phase": "Pending"},
        id="survivors-below-min-hold-with-reason",
    ),
    pytest.param(
        job(m=hold(2), record=STARTED.model_copy(update={"rescale_reason": "Failure"})),
        running(0, 1, 2, generation=2, state="Stopped"),
        nodes(3),
        [ckpt(40)],
        {
            "m": (3, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]),
            "restore": "tj-step-40",
            "reason": "CapacityRestored",
        },
        id="hold-resumes-when-capacity-returns",
    ),
    pytest.param(
        job(m=M3R, record=STARTED.model_copy(update={"failure_detected_at": at(-20), "failure_step": 55})),
        [pod(i, report=agent(2, "Running", restoreSeconds=1.5, restoreTier="directory")) for i in range(3)],
        nodes(3),
        [ckpt(40)],
        {
            "phase": "Running",
            "observed": [
                "restore_seconds",
                "restore_seconds",
                "restore_seconds",
                "recovery_seconds",
                "steps_lost",
            ],
            "events": ["Recovered"],
            "record_cleared": True,
        },
        id="resumed-training-observes-recovery-and-steps-lost",
    ),
    # ------------------------------------------------------------------ grow
    pytest.param(
        job(m=M2, record=STARTED),
        [*running(0, 1), pod(2, report=agent(0, "Waiting"))],
        nodes(3),
        [],
        {"request": "ScaleUp", "m_generation": 1, "events": ["CheckpointRequested"], "phase": "Rescaling"},
        id="grow-first-requests-a-checkpoint",
    ),
    pytest.param(
        job(m=membership(1, ["tj-w-0", "tj-w-1"], request=request("ScaleUp", ago=10)), record=STARTED),
        [*running(0, 1), pod(2, report=agent(0, "Waiting"))],
        nodes(3),
        [ckpt(40, committed=-50)],
        {"m": None, "phase": "Rescaling", "events": []},
        id="grow-waits-for-the-requested-commit",
    ),
    pytest.param(
        job(m=membership(1, ["tj-w-0", "tj-w-1"], request=request("ScaleUp", ago=10)), record=STARTED),
        [*running(0, 1), pod(2, report=agent(0, "Waiting"))],
        nodes(3),
        [ckpt(40, committed=-50), ckpt(50, committed=-5)],
        {
            "m": (2, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]),
            "restore": "tj-step-50",
            "reason": "ScaleUp",
            "request": None,
        },
        id="grow-after-commit-includes-new-pod",
    ),
    pytest.param(
        job(m=membership(1, ["tj-w-0", "tj-w-1"], request=request("ScaleUp", ago=100)), record=STARTED),
        [*running(0, 1), pod(2, report=agent(0, "Waiting"))],
        nodes(3),
        [ckpt(40, committed=-150)],
        {
            "m": (2, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]),
            "restore": "tj-step-40",
            "events": ["CheckpointLate", "Rescaled"],
        },
        id="grow-past-deadline-uses-newest-commit",
    ),
    pytest.param(
        job(m=M2, record=STARTED.model_copy(update={"last_rescale_at": at(-10)})),
        [*running(0, 1), pod(2, report=agent(0, "Waiting"))],
        nodes(3),
        [],
        {"m": None, "phase": "Running"},
        id="grow-waits-for-cooldown",
    ),
    pytest.param(
        job(m=M2, record=STARTED),
        running(0, 1),
        nodes(3),
        [],
        {"created_pods": ["tj-w-2"], "m": None, "phase": "Running"},
        id="new-node-gets-a-pod-before-the-grow",
    ),
    pytest.param(
        job(m=M2, record=STARTED),
        [*running(0, 1), pod(2)],
        nodes(3),
        [],
        {"m": None, "phase": "Running", "events": []},
        id="grow-waits-until-the-new-pods-agent-reported",
    ),
    # ------------------------------------------------------------------ planned shrink
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        [node(0), node(1), node(2, unschedulable=True)],
        [],
        {"request": "ScaleDown", "deleted_pods": [], "phase": "Rescaling", "failures": 0},
        id="cordon-requests-checkpoint-first",
    ),
    pytest.param(
        job(
            m=membership(1, ["tj-w-0", "tj-w-1", "tj-w-2"], request=request("ScaleDown", ago=5)),
            record=STARTED,
        ),
        running(0, 1, 2),
        [node(0), node(1), node(2, unschedulable=True)],
        [ckpt(50, committed=-1)],
        {
            "m": (2, "Run", ["tj-w-0", "tj-w-1"]),
            "deleted_pods": ["tj-w-2"],
            "restore": "tj-step-50",
            "failures": 0,
        },
        id="cordon-after-commit-shrinks-and-deletes-pod",
    ),
    pytest.param(
        job(m=membership(1, ["tj-w-0", "tj-w-1"], request=request("ScaleDown", ago=5)), record=STARTED),
        running(0, 1),
        [node(0), node(1, unschedulable=True)],
        [ckpt(50, committed=-1)],
        {"m": (2, "Hold", []), "deleted_pods": ["tj-w-1"], "phase": "Pending", "failures": 0},
        id="cordon-at-min-holds-and-deletes-the-leaving-pod",
    ),
    pytest.param(
        job(m=hold(2), record=STARTED),
        [*running(0, generation=2, state="Stopped"), pod(1)],
        [node(0), node(1, unschedulable=True)],
        [ckpt(50)],
        {"m": None, "deleted_pods": ["tj-w-1"], "phase": "Pending"},
        id="held-job-deletes-a-pod-on-a-cordoned-node",
    ),
    pytest.param(
        job(m=M3, record=STARTED, replicas={"max": 2}),
        running(0, 1, 2),
        nodes(3),
        [],
        {"request": "ScaleDown"},
        id="max-lowered-requests-checkpoint",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 1), pod(2, deleting=True)],
        [node(0), node(1), node(2, unschedulable=True)],
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1"]), "failures": 0, "reason": "Drain"},
        id="drained-pod-rescales-without-counting-failure",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 1), pod(2, deleting=True, deletion_deadline=at(20))],
        [node(0), node(1), node(2, unschedulable=True)],
        [ckpt(40)],
        {"m": None, "phase": "Rescaling", "failures": 0},
        id="drain-waits-for-the-evicted-pods-emergency-checkpoint",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*peer_lost(0, 1, ago=3), pod(2, deleting=True, deletion_deadline=at(-1))],
        [node(0), node(1), node(2, unschedulable=True)],
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1"]), "failures": 0, "reason": "Drain"},
        id="drain-peer-errors-are-not-failures",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1),
        [node(0), node(1), node(2, unschedulable=True)],
        [ckpt(40)],
        {"m": (2, "Run", ["tj-w-0", "tj-w-1"]), "failures": 0, "reason": "Drain"},
        id="member-gone-from-a-cordoned-node-was-drained",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1),
        nodes(3),
        [ckpt(40)],
        {"failures": 1, "failure_reason": "PodDeleted", "created_pods": ["tj-w-3"], "phase": "Rescaling"},
        id="member-gone-from-a-schedulable-node-is-a-failure-and-replaced",
    ),
    # ------------------------------------------------------------------ suspend / resume
    pytest.param(
        job(m=M3, record=STARTED, runPolicy={"suspend": True}),
        running(0, 1, 2),
        nodes(3),
        [],
        {"request": "Suspend", "deleted_pods": [], "created_pods": []},
        id="suspend-requests-checkpoint-first",
    ),
    pytest.param(
        job(
            m=membership(1, ["tj-w-0", "tj-w-1", "tj-w-2"], request=request("Suspend", ago=5)),
            record=STARTED,
            runPolicy={"suspend": True},
        ),
        running(0, 1, 2),
        nodes(3),
        [ckpt(50, committed=-1)],
        {"m": (2, "Hold", []), "deleted_pods": ["tj-w-0", "tj-w-1", "tj-w-2"], "phase": "Suspended"},
        id="suspend-after-commit-deletes-pods",
    ),
    pytest.param(
        job(
            m=hold(2),
            record=STARTED.model_copy(update={"rescale_reason": "Suspend"}),
            runPolicy={"suspend": True},
        ),
        [],
        nodes(3),
        [ckpt(50)],
        {"m": None, "created_pods": [], "phase": "Suspended"},
        id="suspended-job-creates-nothing",
    ),
    pytest.param(
        job(m=hold(2), record=STARTED.model_copy(update={"rescale_reason": "Suspend"})),
        [],
        nodes(3),
        [ckpt(50)],
        {"created_pods": ["tj-w-0", "tj-w-1", "tj-w-2"], "m": None, "phase": "Starting"},
        id="resume-recreates-pods",
    ),
    pytest.param(
        job(m=hold(2), record=STARTED.model_copy(update={"rescale_reason": "Suspend"})),
        running(0, 1, 2, generation=0, state="Waiting"),
        nodes(3),
        [ckpt(50)],
        {"m": (3, "Run", ["tj-w-0", "tj-w-1", "tj-w-2"]), "restore": "tj-step-50", "reason": "Resume"},
        id="resume-restores-newest-checkpoint",
    ),
    # ------------------------------------------------------------------ finish
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2, state="Succeeded"),
        nodes(3),
        [],
        {"m": (1, "Done", None), "phase": "Succeeded", "events": ["AllRanksSucceeded"]},
        id="every-rank-exits-0-succeeds",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [*running(0, 1, state="Succeeded"), pod(2, phase="Succeeded", exit_code=0)],
        nodes(3),
        [],
        {"phase": "Succeeded"},
        id="succeeded-pod-phase-counts-as-success",
    ),
    pytest.param(
        job(m=M3, record=STARTED, runPolicy={"activeDeadlineSeconds": 100}),
        running(0, 1, 2),
        nodes(3),
        [],
        {"phase": "Failed", "condition": ("Failed", "True", "DeadlineExceeded")},
        id="active-deadline-fails-the-job",
    ),
    pytest.param(
        job(
            m=membership(1, ["tj-w-0"], phase="Done"),
            status={"phase": "Succeeded", "completionTime": at(-10).isoformat()},
        ),
        [pod(0, phase="Succeeded"), pod(1, phase="Running")],
        nodes(2),
        [],
        {"deleted_pods": ["tj-w-0", "tj-w-1"], "job_deleted": False, "m": None},
        id="finished-clean-pod-policy-all",
    ),
    pytest.param(
        job(
            m=membership(1, ["tj-w-0"], phase="Done"),
            status={"phase": "Failed", "completionTime": at(-10).isoformat()},
            runPolicy={"cleanPodPolicy": "Running"},
        ),
        [pod(0, phase="Succeeded"), pod(1, phase="Running")],
        nodes(2),
        [],
        {"deleted_pods": ["tj-w-1"]},
        id="finished-clean-pod-policy-running",
    ),
    pytest.param(
        job(
            m=membership(1, ["tj-w-0"], phase="Done"),
            status={"phase": "Succeeded", "completionTime": at(-100).isoformat()},
            runPolicy={"ttlSecondsAfterFinished": 50},
        ),
        [],
        nodes(2),
        [],
        {"job_deleted": True},
        id="finished-ttl-deletes-the-job",
    ),
    # ------------------------------------------------------------------ checkpoints
    pytest.param(
        job(m=M3, record=STARTED),
        [pod(0, report=agent(1, "Running"), commit=commit(60)), *running(1, 2)],
        nodes(3),
        [ckpt(40), ckpt(50)],
        {
            "created_checkpoints": ["tj-step-60"],
            "deleted_checkpoints": ["tj-step-40"],
            "events": ["CheckpointCommitted"],
            "observed": ["checkpoint_commit_seconds"],
            "last_checkpoint": "tj-step-60",
        },
        id="commit-becomes-checkpoint-and-retention-deletes-oldest",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        [pod(0, report=agent(1, "Running"), commit=commit(50)), *running(1, 2)],
        nodes(3),
        [ckpt(40), ckpt(50)],
        {"created_checkpoints": [], "deleted_checkpoints": []},
        id="known-commit-is-not-recreated",
    ),
    pytest.param(
        job(m=M3, record=STARTED),
        running(0, 1, 2),
        nodes(3),
        [ckpt(30, deleting=True), ckpt(40), ckpt(50)],
        {"deleted_checkpoints": []},
        id="checkpoint-already-deleting-is-not-deleted-again",
    ),
    # ------------------------------------------------------------------ bad input
    pytest.param(
        job(replicas={"min": 5, "max": 2}),
        [],
        nodes(3),
        [],
        {
            "created_kinds": [],
            "m": None,
            "phase": "Pending",
            "condition": ("Valid", "False", "InvalidSpec"),
            "events": ["InvalidSpec"],
        },
        id="min-greater-than-max-creates-nothing",
    ),
    pytest.param(
        job(checkpoint={"restoreFrom": "missing-step-1"}),
        [],
        nodes(3),
        [],
        {"created_kinds": [], "condition": ("Valid", "False", "InvalidSpec"), "events": ["InvalidSpec"]},
        id="restoreFrom-missing-checkpoint",
    ),
    pytest.param(
        job(checkpoint={"restoreFrom": "/models/gpt2"}),
        [],
        nodes(3),
        [],
        {"created_pods": ["tj-w-0", "tj-w-1", "tj-w-2"]},
        id="restoreFrom-pretrained-location-is-not-a-checkpoint-name",
    ),
    pytest.param(
        job(m=hold(), checkpoint={"restoreFrom": "s3://hub/gpt2"}),
        running(0, 1, generation=0),
        nodes(2),
        [],
        {"m": (1, "Run", ["tj-w-0", "tj-w-1"]), "restore": None},
        id="start-from-pretrained-has-no-restore-point",
    ),
    pytest.param(
        job(
            checkpoint={"s3": {"bucket": "bkt", "credentialsSecret": "creds"}, "directory": None},
            missing_secret="creds",
        ),
        [],
        nodes(3),
        [],
        {"created_kinds": [], "condition": ("Valid", "False", "InvalidSpec")},
        id="missing-credentials-secret",
    ),
    pytest.param(
        job(
            nprocPerPod=4,
            template={
                "spec": {
                    "containers": [
                        {"name": "t", "image": "i", "resources": {"limits": {"nvidia.com/gpu": 2}}}
                    ]
                }
            },
        ),
        [],
        nodes(3),
        [],
        {"created_kinds": [], "condition": ("Valid", "False", "InvalidSpec")},
        id="more-procs-than-gpus",
    ),
    pytest.param(
        job(template={"spec": {"containers": []}}),
        [],
        nodes(3),
        [],
        {"created_kinds": [], "condition": ("Valid", "False", "InvalidSpec")},
        id="template-without-containers",
    ),
    pytest.param(
        job(
            status={
                "phase": "Running",
                "generation": 5,
                "failures": 2,
                "restarts": 4,
                "startTime": at(-99).isoformat(),
            }
        ),
        running(0, 1, generation=5),
        nodes(2),
        [],
        {"m": (6, "Run", ["tj-w-0", "tj-w-1"]), "failures": 2, "restarts": 5},
        id="lost-membership-record-resumes-above-the-last-generation",
    ),
    pytest.param(
        job(deleting=True),
        [],
        nodes(3),
        [],
        {"nothing": True},
        id="deleting-job-is-left-to-garbage-collection",
    ),
]


def _check(out: Summary, expect: dict[str, Any]) -> None:
    for key, want in expect.items():
        m = out.membership
        if key == "m":
            if want is None:
                assert m is None, f"unexpected membership write: {m}"
            else:
                assert m is not None, "expected a membership write"
                gen, phase, pods = want
                assert (m.generation, m.phase.value) == (gen, phase)
                if pods is not None:
                    assert [x.pod for x in m.members] == pods
                    assert m.world_size == len(pods)
        elif key == "m_generation":
            assert m is not None and m.generation == want
        elif key == "restore":
            assert m is not None
            assert (m.restore.checkpoint if m.restore else None) == want
        elif key == "request":
            assert m is not None
            assert (m.checkpoint_request.reason if m.checkpoint_request else None) == want
        elif key == "reason":
            assert out.record is not None and out.record.rescale_reason == want
        elif key == "failures":
            failures = (
                out.record.failures if out.record is not None else (out.status or {}).get("failures", 0)
            )
            assert failures == want
        elif key == "record_failures":
            assert (out.record.failures if out.record else None) == want
        elif key == "record_cleared":
            assert out.record is not None and out.record.failure_detected_at is None
        elif key == "restarts":
            assert out.record is not None and out.record.restarts == want
        elif key == "phase":
            assert out.phase == want, out.status
        elif key == "condition":
            type_, status, reason = want
            conds = {c["type"]: c for c in (out.status or {}).get("conditions", [])}
            assert (conds[type_]["status"], conds[type_]["reason"]) == (status, reason), conds
        elif key == "step":
            assert out.status is not None and out.status["step"] == want
        elif key == "world":
            assert out.status is not None and out.status["worldSize"] == want
        elif key == "last_checkpoint":
            assert out.status is not None and out.status["lastCheckpoint"]["name"] == want
        elif key == "failure_reason":
            assert out.failure_labels == [want]
        elif key == "nothing":
            assert out == Summary()
        else:
            got = getattr(out, key)
            assert got == want, f"{key}: {got} != {want}"


@pytest.mark.parametrize(("job_view", "pods", "nodes_", "ckpts", "expect"), CASES)
def test_plan(job_view: Any, pods: Any, nodes_: Any, ckpts: Any, expect: dict[str, Any]) -> None:
    actions = plan(job_view, pods, nodes_, ckpts, NOW)
    _check(summarize(actions), expect)


@pytest.mark.parametrize(
    ("job_view", "pods", "nodes_", "ckpts"),
    [pytest.param(*case.values[:4], id=case.id) for case in CASES],
)
def test_plan_is_deterministic(job_view: Any, pods: Any, nodes_: Any, ckpts: Any) -> None:
    assert plan(job_view, pods, nodes_, ckpts, NOW) == plan(job_view, pods, nodes_, ckpts, NOW)


def test_membership_writes_are_conditional_on_the_version_read() -> None:
    from elastra_operator.reconcile.actions import WriteMembership

    actions = plan(job(m=hold(), record=STARTED), running(0, 1, generation=0), nodes(2), [], NOW)
    writes = [a for a in actions if isinstance(a, WriteMembership)]
    assert [w.expected_version for w in writes] == ["7"]
