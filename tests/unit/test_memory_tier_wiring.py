"""The memory tier across the operator and the agent: the pod's volume and env, the workers' peer
list, and the operator's Event when lost pods take more of a group than its parity covers."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_support import job

from elastra.agent.decide import worker_env
from elastra.api.membership import Membership
from elastra.api.memory import MemoryTier
from elastra_operator.reconcile import manifests
from elastra_operator.reconcile.memory import memory_loss_event

PODS = ("tj-w-0", "tj-w-1", "tj-w-2", "tj-w-3")


def _membership(phase: str = "Run", pods: tuple[str, ...] = PODS) -> Membership:
    return Membership.model_validate(
        {
            "generation": 4, "phase": phase, "worldSize": len(pods), "nprocPerPod": 1,
            "masterAddr": "127.0.0.5", "masterPort": 29511, "restore": None, "checkpointRequest": None,
            "members": [
                {"pod": p, "node": f"n{i}", "podIP": f"10.0.0.{i}", "rankStart": i, "nprocs": 1}
                for i, p in enumerate(pods)
            ],
        }
    )  # fmt: skip


def _memory_checkpoint(**memory: Any) -> dict[str, Any]:
    return {"everySteps": 50, "directory": {"path": "/ck"}, "memory": memory}


def test_pod_gets_a_memory_volume_capped_and_the_env() -> None:
    pod = manifests.worker_pod(job(checkpoint=_memory_checkpoint(parity=2, maxBytesPerPod=1 << 30)), 0)
    assert {"name": "elastra-memory", "emptyDir": {"medium": "Memory", "sizeLimit": str(1 << 30)}} in pod[
        "spec"
    ]["volumes"]
    container = pod["spec"]["containers"][0]
    assert {"name": "elastra-memory", "mountPath": "/elastra-memory"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["ELASTRA_MEMORY_DIR"] == "/elastra-memory" and env["ELASTRA_MEMORY_PARITY"] == "2"
    assert env["ELASTRA_MEMORY_EVERY_STEPS"] == "1" and env["ELASTRA_MEMORY_GROUP_SIZE"] == "4"
    assert env["ELASTRA_MEMORY_MAX_BYTES"] == str(1 << 30)


def test_pod_without_memory_tier_has_neither() -> None:
    pod = manifests.worker_pod(job(), 0)
    assert not any(v["name"] == "elastra-memory" for v in pod["spec"].get("volumes", []))
    assert not any(e["name"].startswith("ELASTRA_MEMORY") for e in pod["spec"]["containers"][0]["env"])


@pytest.mark.parametrize(
    ("base", "peers"),
    [
        pytest.param(
            {"ELASTRA_MEMORY_DIR": "/m", "ELASTRA_MEMORY_PORT": "9500"},
            "tj-w-0=10.0.0.0:9500,tj-w-1=10.0.0.1:9500,tj-w-2=10.0.0.2:9500,tj-w-3=10.0.0.3:9500",
            id="every-member",
        ),
        pytest.param({}, None, id="no-memory-tier"),
    ],
)
def test_worker_env_lists_every_members_snapshot_server(base: dict[str, str], peers: str | None) -> None:
    m = _membership()
    env = worker_env(base, m, m.members[1], 0, "/ctl")
    assert env.get("ELASTRA_MEMORY_PEERS") == peers
    if peers:
        assert env["ELASTRA_MEMORY_ADDR"] == "10.0.0.1:9500"


@pytest.mark.parametrize(
    ("survivors", "phase", "event"),
    [
        pytest.param(PODS[1:], "Run", None, id="one-lost-rebuilt-from-parity"),
        pytest.param(PODS[2:], "Run", "tj-w-0, tj-w-1 gone", id="two-of-one-group"),
        pytest.param(PODS[1:3], "Run", "tj-w-0, tj-w-3 gone", id="member-and-holder"),
        pytest.param(PODS[2:], "Hold", None, id="not-a-run-generation"),
    ],
)
def test_memory_loss_event(survivors: tuple[str, ...], phase: str, event: str | None) -> None:
    found = memory_loss_event(MemoryTier(), _membership(phase), set(survivors), "tj-step-40")
    if event is None:
        assert found is None
    else:
        assert found is not None and found.reason == "MemorySnapshotLost" and found.warning
        assert event in found.message and "restoring from checkpoint tj-step-40" in found.message


def test_no_event_without_memory_tier() -> None:
    assert memory_loss_event(None, _membership(), set(), None) is None


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"parity": -1}, id="negative-parity"),
        pytest.param({"groupSize": 0}, id="empty-groups"),
        pytest.param({"everySteps": 0}, id="every-zero"),
        pytest.param({"maxBytesPerPod": 10}, id="cap-below-1MiB"),
        pytest.param({"paritty": 1}, id="typo"),
    ],
)
def test_memory_spec_refuses(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        MemoryTier.model_validate(bad)


@pytest.mark.parametrize(
    ("restores", "tier", "lost"),
    [
        pytest.param({2: ("memory", 99)}, "memory", 1, id="memory-step-newer-than-checkpoint"),
        pytest.param({2: ("durable", 80)}, "durable", 20, id="fell-back-to-s3"),
        pytest.param({2: ("local", 80)}, "local", 20, id="local-tier"),
        pytest.param({}, None, 20, id="not-reported"),
    ],
)
def test_demo_summary_carries_the_restore_tier(
    restores: dict[int, tuple[str, int]], tier: str | None, lost: int
) -> None:
    from elastra.demo.report import Event, Generation, Observed, Sample, summarize

    observed = Observed(
        samples=[Sample(1.0, "Running", 1, 4, 100, 1.0), Sample(3.0, "Running", 2, 3, 101, 1.0)],
        events=[Event(t=1.5, kind="kill", node="node-3", step=100)],
        generations={1: Generation(1, 0.0, 4, None), 2: Generation(2, 2.0, 3, 80)},
        restores=restores,
    )
    (rescale,) = summarize(observed, phase="Succeeded")["rescales"]
    assert rescale["restore_tier"] == tier and rescale["steps_lost"] == lost
