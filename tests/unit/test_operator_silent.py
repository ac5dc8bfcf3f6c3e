"""Silent loss (a frozen node, a partition) as plan() sees it, and who wins a partition (issue 14).

A frozen or cut-off node sends no reset: its peers' collectives block, nobody reports `PeerLost`, and
the node turns NotReady only after the kubelet's grace. The agents' reports are heartbeats (one at least
every `nodeLossTimeoutSeconds / 4`), so a member whose agent said nothing for `nodeLossTimeoutSeconds`
while another member's agent did is lost: the next generation goes on without it.

Partitions on localcluster cannot be made real (docs/architecture.md, "Partitions"), so the decision is
shown here, on the pure planner and the agent's pure `decide`: the side that still reaches the API
server wins, and at most one generation trains at a time.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_support import NOW, agent, at, ckpt, job, membership, node, nodes, pod, summarize

from elastra.agent.decide import Kind, Local, decide
from elastra.api.membership import Membership
from elastra_operator.reconcile.actions import WriteMembership
from elastra_operator.reconcile.manifests import report_interval
from elastra_operator.reconcile.plan import plan
from elastra_operator.reconcile.views import OperatorRecord

M4 = membership(1, ["tj-w-0", "tj-w-1", "tj-w-2", "tj-w-3"])
STARTED = OperatorRecord(started_at=at(-500), last_rescale_at=at(-500), rescale_reason="Start")
TIMEOUT = 30  # test_operator_support's nodeLossTimeoutSeconds


def member(index: int, *, silent_for: float = 0.0, generation: int = 1, state: str = "Running") -> Any:
    """A pod whose agent last reported `silent_for` seconds ago."""
    return pod(index, report=agent(generation, state, time=at(-silent_for)))


CASES = [
    pytest.param(
        [member(0), member(1), member(2, silent_for=4.5), member(3)],
        nodes(4),
        {"members": None, "events": [], "labels": [], "deleted": [], "timeout": 1},
        id="timeout-1s-still-waits-for-the-5s-floor",
    ),
    pytest.param(
        [member(0), member(1), member(2, silent_for=5.5), member(3)],
        nodes(4),
        {"members": ["tj-w-0", "tj-w-1", "tj-w-3"], "events": ["Failure", "Rescaled"], "timeout": 1},
        id="timeout-1s-counts-after-the-5s-floor",
    ),
    pytest.param(
        [member(0), member(1), member(2, silent_for=TIMEOUT + 0.5), member(3)],
        nodes(4),
        {
            "members": ["tj-w-0", "tj-w-1", "tj-w-3"],
            "events": ["Failure", "Rescaled"],
            "labels": ["Unresponsive"],
            "deleted": [],
            "detected": at(-0.5),
        },
        id="silent-past-timeout-is-left-out-not-deleted",
    ),
    pytest.param(
        [member(0), member(1), member(2, silent_for=TIMEOUT - 1), member(3)],
        nodes(4),
        {"members": None, "events": [], "labels": [], "deleted": []},
        id="silent-under-timeout-is-still-a-member",
    ),
    pytest.param(
        [member(i, silent_for=TIMEOUT + 5) for i in range(4)],
        nodes(4),
        {"members": None, "events": [], "labels": [], "deleted": []},
        id="everyone-silent-is-the-api-path-not-a-node-wait",
    ),
    pytest.param(
        [member(0), member(1), member(2, silent_for=TIMEOUT + 0.5), member(3)],
        [node(0), node(1), node(2, ready=False, not_ready_since=at(-TIMEOUT + 10)), node(3)],
        {
            "members": ["tj-w-0", "tj-w-1", "tj-w-3"],
            "events": ["Failure", "Rescaled"],
            "labels": ["Unresponsive"],
            "deleted": [],
        },
        id="silent-on-a-notready-node-does-not-wait-for-node-loss",
    ),
    pytest.param(
        [member(0), member(1, silent_for=TIMEOUT + 1), member(2, silent_for=TIMEOUT + 1), member(3)],
        nodes(4),
        {
            "members": ["tj-w-0", "tj-w-3"],
            "events": ["Failure", "Rescaled"],
            "labels": ["Unresponsive"],
            "deleted": [],
        },
        id="partition-api-side-wins-even-as-a-half",
    ),
    pytest.param(
        [member(0), member(1), member(2, silent_for=TIMEOUT + 1), member(3, silent_for=TIMEOUT + 1)],
        [node(0), node(1), node(2), node(3)],
        {"members": None, "events": ["Failure", "Held", "InsufficientCapacity"], "labels": ["Unresponsive"]},
        id="partition-below-min-holds-nobody-trains",
    ),
]


@pytest.mark.parametrize(("pods", "nodes_", "expect"), CASES)
def test_silent_member(pods: list[Any], nodes_: Any, expect: dict[str, Any]) -> None:
    min_ = 3 if "Held" in expect["events"] else 2  # replicas.min
    elastic = {"nodeLossTimeoutSeconds": expect.get("timeout", TIMEOUT)}
    view = job(m=M4, record=STARTED, replicas={"min": min_, "max": 4}, elastic=elastic)
    out = summarize(plan(view, pods, nodes_, [], NOW))
    if expect["members"] is None:
        assert out.membership is None or out.membership.generation == 1 or not out.membership.members
    else:
        assert out.membership is not None and out.membership.generation == 2
        assert [m.pod for m in out.membership.members] == expect["members"]
        assert out.membership.world_size == len(expect["members"])
    assert out.events == expect["events"]
    assert out.failure_labels == expect.get("labels", ["Unresponsive"])
    if "deleted" in expect:
        assert out.deleted_pods == expect["deleted"]
    if "detected" in expect:
        assert out.record is not None and out.record.failure_detected_at == expect["detected"]


@pytest.mark.parametrize(
    ("timeout", "interval"),
    [
        pytest.param(30, 7.5, id="default-7.5s"),
        pytest.param(8, 2.0, id="quarter"),
        pytest.param(1, 1.25, id="floor-5s"),
    ],
)
def test_heartbeat_is_a_quarter_of_the_silence_timeout(timeout: int, interval: float) -> None:
    view = job(elastic={"nodeLossTimeoutSeconds": timeout})
    assert view.spec is not None and report_interval(view.spec) == interval
    out = summarize(plan(job(elastic={"nodeLossTimeoutSeconds": timeout}), [], nodes(2), [], NOW))
    env = {e["name"]: e.get("value") for e in out.pod_manifests[0]["spec"]["containers"][0]["env"]}
    assert float(env["ELASTRA_REPORT_INTERVAL_SECONDS"]) == interval


def _record(pods: list[str], generation: int) -> Membership:
    return membership(generation, pods)


def test_partition_has_no_split_brain_and_the_cut_off_pod_rejoins_later() -> None:
    """Node n2 is cut off from its peers and the API server (or frozen). Walk the generations through
    plan() and every agent's decide(): at any time at most one generation has every member running it."""
    pods4 = ["tj-w-0", "tj-w-1", "tj-w-2", "tj-w-3"]
    # 1. n2 silent past the timeout; the others report (their workers are blocked in a collective).
    silent = [member(0), member(1), member(2, silent_for=TIMEOUT + 1), member(3)]
    out = summarize(plan(job(m=M4, record=STARTED), silent, nodes(4), [ckpt(40)], NOW))
    g2 = out.membership
    assert (
        g2 is not None
        and g2.generation == 2
        and [m.pod for m in g2.members] == ["tj-w-0", "tj-w-1", "tj-w-3"]
    )
    assert g2.restore is not None and g2.restore.step == 40

    # 2. What each agent does: the reachable ones see generation 2; the cut-off one still holds 1.
    seen = {"tj-w-0": g2, "tj-w-1": g2, "tj-w-2": M4, "tj-w-3": g2}
    running_g1 = Local(generation=1, running=True, outcome=None)
    actions = {p: decide(seen[p], p, running_g1) for p in pods4}
    assert {p: a.kind for p, a in actions.items()} == {
        "tj-w-0": Kind.START,  # kills its blocked generation-1 workers first (agent._start)
        "tj-w-1": Kind.START,
        "tj-w-2": Kind.KEEP,  # its generation-1 workers wait on peers that no longer run generation 1
        "tj-w-3": Kind.START,
    }
    training = _trainable(seen, actions)
    assert training == {2}, "generation 1 lost three of its four ranks; only generation 2 can train"

    # 3. The partition heals: tj-w-2 reads generation 2, is not a member, stops its stale workers.
    back = decide(g2, "tj-w-2", running_g1)
    assert back.kind is Kind.STOP

    # 4. It reports Stopped on time again: the operator grows back to four after the cooldown,
    # checkpoint first (a planned grow), never into generation 1.
    healed = [member(0, generation=2), member(1, generation=2), member(2, generation=2, state="Stopped")]
    healed.append(member(3, generation=2))
    record = OperatorRecord(started_at=at(-500), last_rescale_at=at(-100), rescale_reason="Failure")
    out = summarize(plan(job(m=g2, record=record), healed, nodes(4), [ckpt(40)], NOW))
    assert out.membership is not None and out.membership.generation == 2
    assert (
        out.membership.checkpoint_request is not None
        and out.membership.checkpoint_request.reason == "ScaleUp"
    )


def _trainable(seen: dict[str, Membership], actions: dict[str, Any]) -> set[int]:
    """Generations whose every member runs (or starts) workers of that generation: a generation trains
    only when all its world_size ranks join its rendezvous (its own masterPort)."""
    runs: dict[str, int] = {}
    for name, action in actions.items():
        if action.kind is Kind.START:
            runs[name] = action.generation
        elif action.kind is Kind.KEEP:
            runs[name] = 1  # still generation 1's workers
    out = set()
    for generation in (1, 2):
        record = seen["tj-w-0"] if generation == 2 else M4
        if all(runs.get(m.pod) == generation for m in record.members):
            out.add(generation)
    return out


def test_second_operator_cannot_write_a_competing_generation() -> None:
    """Two operators (a Kopf peering hand-over) planning the same silent loss write at the same
    resourceVersion: the API server accepts one replace, so one generation 2 exists."""
    pods = [member(0), member(1), member(2, silent_for=TIMEOUT + 1), member(3)]
    writes = [
        a
        for _ in range(2)
        for a in plan(job(m=M4, record=STARTED), pods, nodes(4), [], NOW)
        if isinstance(a, WriteMembership)
    ]
    assert len(writes) == 2 and {w.expected_version for w in writes} == {"7"}
    assert writes[0].membership == writes[1].membership
