"""The real operator against localcluster: node kill, node add, cordon, and an operator restart in the
middle of a rescale. Each test gets its own cluster and operator process."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_operator_harness import Harness, make_harness, metric_value  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)


def test_node_kill_rescales_survivors_from_newest_checkpoint(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(3)
    h.create_job("kill")
    before = h.wait(h.running("kill", 3), 40, "the job to run on 3 nodes")
    h.wait(lambda: len(h.checkpoints("kill")) >= 1, 20, "a first committed checkpoint")
    m = h.membership("kill")
    assert m is not None
    rank0 = m.members[0].pod
    victim_node = h.node_of(rank0)

    h.cluster.kill_node(victim_node)

    after = h.wait(h.running("kill", 2, before["generation"]), 40, "a new generation of the survivors")
    m2 = h.membership("kill")
    assert m2 is not None and m2.generation == after["generation"]
    assert rank0 not in {x.pod for x in m2.members}
    assert m2.restore is not None
    committed = {c["metadata"]["name"]: c["spec"]["step"] for c in h.checkpoints("kill")}
    assert m2.restore.checkpoint in committed, "the restore point is a committed Checkpoint"
    assert after["failures"] == 1
    h.wait(lambda: rank0 not in h.live_pods("kill"), 20, "the lost pod to be deleted")
    assert "Failure" in h.events("kill") and "Recovered" in h.events("kill")
    text = h.metrics()
    assert metric_value(text, "elastra_failures_total", job="kill", reason="NodeLost") == 1
    assert metric_value(text, "elastra_recovery_seconds_count", job="kill") == 1
    assert metric_value(text, "elastra_job_world_size", job="kill") == 2


def test_node_add_grows_after_a_requested_checkpoint(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(2)
    h.create_job("grow", replicas={"min": 1, "max": 3})
    before = h.wait(h.running("grow", 2), 40, "the job to run on 2 nodes")

    h.cluster.add_node()

    after = h.wait(h.running("grow", 3, before["generation"]), 40, "a grown generation of 3")
    assert after["failures"] == 0
    events = h.events("grow")
    assert "CheckpointRequested" in events and "Rescaled" in events
    m = h.membership("grow")
    assert m is not None and m.restore is not None and m.world_size == 3
    assert len(h.live_pods("grow")) == 3
    assert metric_value(h.metrics(), "elastra_rescales_total", job="grow", reason="ScaleUp") == 1


def test_cordon_checkpoints_then_shrinks_without_counting_a_failure(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(3)
    h.create_job("cordon")
    before = h.wait(h.running("cordon", 3), 40, "the job to run on 3 nodes")
    m = h.membership("cordon")
    assert m is not None
    leaving = m.members[-1].pod

    h.cluster.cordon(h.node_of(leaving))

    after = h.wait(h.running("cordon", 2, before["generation"]), 40, "a shrunk generation of 2")
    assert after["failures"] == 0
    assert after["generation"] == before["generation"] + 1
    h.wait(lambda: leaving not in h.live_pods("cordon"), 20, "the cordoned node's pod to be deleted")
    events = h.events("cordon")
    assert "CheckpointRequested" in events and "CheckpointLate" not in events
    m2 = h.membership("cordon")
    assert m2 is not None and m2.restore is not None
    answered = [c for c in h.checkpoints("cordon") if c["metadata"]["name"] == m2.restore.checkpoint]
    assert answered, "the shrink restores the checkpoint it asked for"


def test_operator_restart_in_the_middle_of_a_rescale(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(3)
    # The trainers answer checkpoint requests only 60 steps (~3 s) later: a wide window to crash in.
    h.create_job("restart", env={"STUB_REQUEST_DELAY_STEPS": "60"})
    before = h.wait(h.running("restart", 3), 40, "the job to run on 3 nodes")
    m = h.membership("restart")
    assert m is not None
    leaving = m.members[-1].pod
    h.cluster.cordon(h.node_of(leaving))

    def requested() -> bool:
        record = h.membership("restart")
        return record is not None and record.checkpoint_request is not None

    h.wait(requested, 20, "the operator to request the pre-shrink checkpoint")
    h.kill_operator()
    request = h.membership("restart")
    assert request is not None and request.generation == before["generation"], "killed mid-rescale"
    h.start_operator()

    after = h.wait(
        h.running("restart", 2, before["generation"]), 40, "the restarted operator to finish the shrink"
    )
    assert after["generation"] == before["generation"] + 1, "one rescale, not two"
    assert after["failures"] == 0
    h.wait(lambda: len(h.live_pods("restart")) == 2, 20, "exactly the two remaining pods")
    assert leaving not in h.live_pods("restart")
    m2 = h.membership("restart")
    assert m2 is not None and [x.rank_start for x in m2.members] == [0, 1]


def test_killed_worker_is_replaced_and_counted_once(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(2)
    env = {
        "STUB_FAIL_POD": "oom-w-1",
        "STUB_FAIL_AT_STEP": "30",
        "STUB_FAIL_EXIT_CODE": "137",
        "STUB_FAIL_MODE": "exit",
    }
    h.create_job("oom", env=env, replicas={"min": 2, "max": 2})
    before = h.wait(h.running("oom", 2), 40, "the job to run")

    after = h.wait(h.running("oom", 2, before["generation"]), 40, "a new generation with a replacement pod")
    assert after["failures"] == 1
    members = {m["pod"] for m in after["members"]}
    assert "oom-w-1" not in members and len(members) == 2, "the dead pod is replaced, the survivor kept"
    assert "oom-w-0" in members
    assert metric_value(h.metrics(), "elastra_failures_total", job="oom", reason="ExitCode137") == 1


def test_failed_worker_restarts_in_place_in_a_new_generation(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(2)
    env = {"STUB_FAIL_POD": "flaky-w-1", "STUB_FAIL_AT_STEP": "30", "STUB_FAIL_EXIT_CODE": "134"}
    h.create_job("flaky", env=env, replicas={"min": 2, "max": 2})
    before = h.wait(h.running("flaky", 2), 40, "the job to run")

    after = h.wait(h.running("flaky", 2, before["generation"]), 40, "a new generation of the same pods")
    assert after["failures"] == 1 and after["generation"] == before["generation"] + 1
    assert [m["pod"] for m in after["members"]] == ["flaky-w-0", "flaky-w-1"], "no pod was recreated"
    assert h.live_pods("flaky") == ["flaky-w-0", "flaky-w-1"]


def test_two_operators_at_once_neither_duplicate_pods_nor_generations(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    # No peering: the worst case. Deterministic names and conditional membership writes keep them honest.
    h = make_harness(3)
    h.start_operator(metrics=False)
    h.create_job("twin")
    before = h.wait(h.running("twin", 3), 40, "the job to run on 3 nodes")
    assert before["generation"] == 1 and h.live_pods("twin") == ["twin-w-0", "twin-w-1", "twin-w-2"]
    m = h.membership("twin")
    assert m is not None
    h.cluster.cordon(h.node_of(m.members[-1].pod))

    after = h.wait(h.running("twin", 2, before["generation"]), 40, "one shrink")
    assert after["generation"] == 2 and after["failures"] == 0
    h.wait(lambda: len(h.live_pods("twin")) == 2, 20, "two pods")


def test_drain_rescales_without_counting_a_failure(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(3)
    h.create_job("drain")
    before = h.wait(h.running("drain", 3), 40, "the job to run on 3 nodes")
    m = h.membership("drain")
    assert m is not None
    leaving = m.members[-1].pod

    evicted = h.cluster.drain(h.node_of(leaving))

    assert f"default/{leaving}" in evicted
    after = h.wait(h.running("drain", 2, before["generation"]), 40, "a generation without the drained node")
    assert after["failures"] == 0 and after["generation"] == before["generation"] + 1
    assert "Failure" not in h.events("drain")
    assert leaving not in {x["pod"] for x in after["members"]}
