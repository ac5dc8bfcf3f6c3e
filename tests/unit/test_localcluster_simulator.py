"""The protocol simulator's agents, driven step by step: what each virtual pod reports for each record,
in the models of `elastra.api.membership`. The API is a recording double of `CoreV1Api.patch_namespaced_pod`
(our boundary); the membership watch is replaced by handing records in."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from typing import Any

import pytest

from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    AgentReport,
    CheckpointRequest,
    CommitReport,
    Member,
    Membership,
)
from localcluster.simulator import Simulator, SimulatorConfig


class _Response:
    def read(self) -> bytes:
        return b"{}"

    def release_conn(self) -> None:
        pass


class RecordingApi:
    """Stands in for CoreV1Api: records every report patch."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    def patch_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> _Response:
        with self.lock:
            self.patches.append((name, dict(body["metadata"]["annotations"])))
        return _Response()

    def agent(self, pod: str) -> list[AgentReport]:
        with self.lock:
            return [AgentReport.model_validate_json(a[AGENT_ANNOTATION]) for p, a in self.patches
                    if p == pod and AGENT_ANNOTATION in a]  # fmt: skip

    def commits(self) -> list[CommitReport]:
        with self.lock:
            return [CommitReport.model_validate_json(a[COMMIT_ANNOTATION]) for _, a in self.patches
                    if COMMIT_ANNOTATION in a]  # fmt: skip


class NoWatch:
    def __init__(self, *_: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, flush_timeout: float = 0) -> None:
        pass


def record(generation: int, pods: list[str], phase: str = "Run", **over: Any) -> Membership:
    members = tuple(
        Member(pod=p, node=f"vnode-{i}", pod_ip=f"127.1.0.{i + 2}", rank_start=i, nprocs=1)
        for i, p in enumerate(pods)
    )
    return Membership(generation=generation, phase=phase, world_size=len(pods) if phase == "Run" else 0,
                      members=members if phase == "Run" else (), **over)  # fmt: skip


def start(sim: Simulator, index: int, env: dict[str, str] | None = None) -> None:
    base = {"ELASTRA_JOB": "tj", "POD_NAME": f"tj-w-{index}", "POD_NAMESPACE": "ns",
            "ELASTRA_CHECKPOINT_URI": "/ck/ns/tj", "ELASTRA_CHECKPOINT_EVERY_STEPS": "2"}  # fmt: skip
    sim.handle({"op": "start", "uid": f"u{index}", "namespace": "ns", "pod": f"tj-w-{index}",
                "node": f"vnode-{index}", "env": {**base, **(env or {})}})  # fmt: skip


def run(sim: Simulator, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sim.step()
        time.sleep(0.005)
    sim.step()
    sim.pool.shutdown(wait=True)
    sim.pool = type(sim.pool)(1)


def states(api: RecordingApi, pod: str) -> list[tuple[int, str]]:
    out: list[tuple[int, str]] = []
    for report in api.agent(pod):
        item = (report.generation, report.state.value)
        if not out or out[-1] != item:
            out.append(item)
    return out


@pytest.fixture
def sim() -> tuple[Simulator, RecordingApi, list[dict[str, Any]]]:
    api, emitted = RecordingApi(), []
    config = SimulatorConfig(restore_seconds=0.02, step_seconds=0.01, peer_detect_seconds=0.0)
    return Simulator(config, api, emitted.append, watch=NoWatch), api, emitted


def test_agents_wait_restore_run_and_rank_0_commits(sim: tuple[Simulator, RecordingApi, list[Any]]) -> None:
    simulator, api, _ = sim
    start(simulator, 0)
    start(simulator, 1)
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0", "tj-w-1"]))
    run(simulator, 0.15)
    for pod in ("tj-w-0", "tj-w-1"):
        assert states(api, pod) == [(0, "Waiting"), (1, "Restoring"), (1, "Running")]
    commits = api.commits()
    assert commits and all(c.step % 2 == 0 and c.generation == 1 and c.world_size == 2 for c in commits)
    assert {p for p, a in api.patches if COMMIT_ANNOTATION in a} == {"tj-w-0"}, "only rank 0 commits"
    assert commits[0].uri == f"/ck/ns/tj/step-{commits[0].step}"


def test_node_loss_makes_live_peers_report_peer_lost(sim: tuple[Simulator, RecordingApi, list[Any]]) -> None:
    simulator, api, _ = sim
    for i in range(3):
        start(simulator, i)
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0", "tj-w-1", "tj-w-2"]))
    run(simulator, 0.1)
    before = len(api.agent("tj-w-1"))
    simulator.handle({"op": "nodeLost", "node": "vnode-1"})
    run(simulator, 0.05)
    assert len(api.agent("tj-w-1")) == before, "an agent on a dead node says nothing"
    for pod in ("tj-w-0", "tj-w-2"):
        last = api.agent(pod)[-1]
        assert last.state.value == "Failed" and last.exit_code == 75
        assert last.reason is not None and last.reason.startswith("PeerLost") and "tj-w-1" in last.reason


def test_injected_failure_then_next_generation_restarts_in_place(
    sim: tuple[Simulator, RecordingApi, list[Any]],
) -> None:
    simulator, api, _ = sim
    start(simulator, 0)
    start(simulator, 1)
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0", "tj-w-1"]))
    run(simulator, 0.1)
    simulator.handle({"op": "fail", "namespace": "ns", "pod": "tj-w-1", "exitCode": 137})
    run(simulator, 0.05)
    failed = api.agent("tj-w-1")[-1]
    assert (failed.state.value, failed.exit_code) == ("Failed", 137)
    assert api.agent("tj-w-0")[-1].reason.startswith("PeerLost")  # type: ignore[union-attr]
    simulator._record_arrived(("ns", "tj"), record(2, ["tj-w-0", "tj-w-1"]))
    run(simulator, 0.1)
    assert states(api, "tj-w-1")[-2:] == [(2, "Restoring"), (2, "Running")]


def test_checkpoint_request_is_acked_and_answered_by_a_commit(
    sim: tuple[Simulator, RecordingApi, list[Any]],
) -> None:
    simulator, api, _ = sim
    start(simulator, 0, {"ELASTRA_CHECKPOINT_EVERY_STEPS": ""})
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0"]))
    run(simulator, 0.05)
    request = CheckpointRequest(id="r-1", reason="ScaleUp", requested_at=dt.datetime.now(dt.UTC))
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0"], checkpoint_request=request))
    run(simulator, 0.05)
    assert api.agent("tj-w-0")[-1].ack_request == "r-1"
    assert [c.request_id for c in api.commits()] == ["r-1"]


def test_done_exits_and_sigterm_reports_stopped(sim: tuple[Simulator, RecordingApi, list[Any]]) -> None:
    simulator, api, emitted = sim
    start(simulator, 0)
    start(simulator, 1)
    simulator._record_arrived(("ns", "tj"), record(1, ["tj-w-0", "tj-w-1"]))
    run(simulator, 0.05)
    simulator.handle({"op": "stop", "uid": "u1"})
    run(simulator, 0.02)
    assert api.agent("tj-w-1")[-1].state.value == "Stopped"
    simulator._record_arrived(("ns", "tj"), record(2, [], phase="Done"))
    run(simulator, 0.02)
    assert sorted(json.dumps(e, sort_keys=True) for e in emitted) == sorted(
        json.dumps({"op": "exit", "uid": u, "code": 0}, sort_keys=True) for u in ("u0", "u1")
    )


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param('{"stepSeconds": 1}', "unknown simulator settings: stepSeconds", id="unknown-key"),
        pytest.param('{"step_seconds": 0}', "step_seconds > 0", id="zero-step"),
        pytest.param('{"failure_probability": 2}', "failure_probability", id="probability-above-1"),
    ],
)
def test_config_is_checked(raw: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        SimulatorConfig.from_json(raw)
