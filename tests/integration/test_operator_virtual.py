"""The real operator and 64 virtual pods (issue 16): localcluster's virtual nodes run no process and its
protocol simulator plays every pod's agent through the API. The operator sees agents, not simulations:
it starts the job, rescales on a node loss and restarts in place on an injected worker failure, and turns
the simulated commits into Checkpoints, exactly as with real pods."""

from __future__ import annotations

import json
import pathlib
import subprocess
from collections.abc import Iterator

import pytest
from test_operator_harness import ELASTRA, NS, Harness

from elastra.api.membership import AGENT_ANNOTATION, AgentReport, AgentState

pytestmark = pytest.mark.timeout(180)
PODS = 64


@pytest.fixture
def virtual(tmp_path: pathlib.Path) -> Iterator[Harness]:
    simulator = {"restore_seconds": 0.2, "step_seconds": 0.2, "report_interval_seconds": 5}
    harness = Harness(tmp_path, 0, virtual_nodes=PODS + 2, simulator=simulator)
    try:
        yield harness
    finally:
        harness.close()


def test_64_virtual_pods_start_rescale_on_node_loss_and_restart_in_place(virtual: Harness) -> None:
    h = virtual
    checkpoint = {"everySteps": 5, "directory": {"path": str(h.workdir / "ckpt"), "keep": 2}}
    h.create_job("sim", replicas={"min": PODS // 2, "max": PODS}, checkpoint=checkpoint)
    first = h.wait(h.running("sim", PODS), 90, f"{PODS} virtual pods to run")
    pods = h.pods("sim")
    assert len(pods) == PODS and all(p.spec.node_name.startswith("vnode-") for p in pods)
    reports = [AgentReport.model_validate_json(p.metadata.annotations[AGENT_ANNOTATION]) for p in pods]
    assert {r.state for r in reports} == {AgentState.RUNNING}, "every agent report is the real contract"
    h.wait(lambda: h.checkpoints("sim"), 30, "a Checkpoint from the simulated commits")

    m = h.membership("sim")
    assert m is not None
    victim = m.members[PODS // 3]
    h.cluster.kill_node(victim.node)
    second = h.wait(h.running("sim", PODS - 1, first["generation"]), 60, "the survivors' generation")
    m2 = h.membership("sim")
    assert m2 is not None and victim.pod not in {x.pod for x in m2.members}
    assert m2.restore is not None, "the new generation restores the newest commit"
    assert second["failures"] == 1

    broken = m2.members[5].pod
    h.cluster.fail_pod(NS, broken, 137)
    # The pod replacing the lost one may join this generation too (the world grows back to 64).
    third = h.wait(
        lambda: (
            (s := h.status("sim")).get("phase") == "Running" and s["generation"] > second["generation"] and s
        ),
        60,
        "an in-place restart",
    )
    m3 = h.membership("sim")
    assert m3 is not None and broken in {x.pod for x in m3.members}, "the failed pod restarts in place"
    assert third["failures"] == 2
    assert {"Failure", "Rescaled", "Recovered", "CheckpointCommitted"} <= set(h.events("sim"))


def test_local_up_with_virtual_nodes(tmp_path: pathlib.Path) -> None:
    def local(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(ELASTRA), "local", "--dir", str(tmp_path / "lc"), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False)

    up = local("up", "--nodes", "0", "--virtual-nodes", "3", "--simulator", json.dumps({"step_seconds": 1}))
    try:
        assert up.returncode == 0, up.stderr
        assert "0 node(s) + 3 virtual" in up.stdout
        status = local("status")
        assert status.returncode == 0, status.stderr
        rows = [line.split() for line in status.stdout.splitlines() if line.startswith("vnode-")]
        assert [(r[0], r[3]) for r in rows] == [(f"vnode-{i}", "virtual") for i in (1, 2, 3)]
        assert local("node", "kill", "vnode-2").returncode == 0
        assert "killed" in local("status").stdout
        missing = local("fail", "default/nothing")
        assert missing.returncode == 0, "a failure for a pod the simulator does not play is ignored"
    finally:
        assert local("down").returncode == 0
