"""`reconcile.failures`: which failures count, and when silent members become the suspects."""

from __future__ import annotations

import datetime as dt

import pytest

from elastra_operator.reconcile.facts import PEER_QUIET_SECONDS, PEER_SETTLE_SECONDS, Failure
from elastra_operator.reconcile.failures import failure_label, silent_suspects, unplanned
from elastra_operator.reconcile.views import PodView

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
MEMBERS: list[PodView | None] = [
    PodView(name=f"w-{i}", node=f"n{i}", phase="Running", created_at=T0) for i in range(4)
]


def _peer(pod: str, after_s: float) -> Failure:
    return Failure(pod, "WorkerFailed: PeerLost: rank exited 75", False, T0 + dt.timedelta(seconds=after_s))


@pytest.mark.parametrize(
    ("failed", "now_s", "expected"),
    [
        pytest.param([Failure("w-0", "NodeLost", False)], 0.0, (False, frozenset()), id="a-known-cause"),
        pytest.param([_peer("w-0", 0)], 1.0, (True, frozenset()), id="one-symptom-wait-for-the-others"),
        pytest.param(
            [_peer("w-0", 0)], PEER_SETTLE_SECONDS, (False, frozenset({"w-1", "w-2", "w-3"})),
            id="settle-time-over-the-silent-are-suspects",
        ),
        pytest.param(
            [_peer("w-0", 0), _peer("w-1", 0.1), _peer("w-2", 0.2)], 0.2 + PEER_QUIET_SECONDS,
            (False, frozenset({"w-3"})), id="reporters-outnumber-silent-and-quiet",
        ),
        pytest.param(
            [_peer("w-0", 0), _peer("w-1", 0.1), _peer("w-2", 0.2)], 0.2 + PEER_QUIET_SECONDS / 2,
            (True, frozenset()), id="reporters-outnumber-silent-not-yet-quiet",
        ),
        pytest.param(
            [_peer(f"w-{i}", 0) for i in range(4)], 0.0, (False, frozenset()), id="nobody-silent",
        ),
        pytest.param(
            [_peer("w-0", 0), _peer("w-1", 0.9), _peer("w-2", 1.4)], 1.4,
            (False, frozenset({"w-3"})), id="one-silent-a-second-after-the-first-symptom-not-the-last",
        ),
        pytest.param(
            [_peer("w-0", 0), _peer("w-1", 0.1), _peer("w-2", 0.2)], PEER_QUIET_SECONDS * 0.9,
            (True, frozenset()), id="one-silent-gets-a-second-to-report-its-cause",
        ),
        pytest.param(
            [_peer("w-0", 0), _peer("w-1", 0.9)], 1.4, (True, frozenset()),
            id="two-silent-wait-for-quiet-after-the-last",
        ),
    ],
)  # fmt: skip
def test_silent_suspects(failed: list[Failure], now_s: float, expected: tuple[bool, frozenset[str]]) -> None:
    assert silent_suspects(MEMBERS, failed, T0 + dt.timedelta(seconds=now_s)) == expected


@pytest.mark.parametrize(
    ("failed", "counted"),
    [
        pytest.param([Failure("w-0", "Drained", False), _peer("w-1", 0)], [], id="drain-and-its-symptoms"),
        pytest.param([Failure("w-0", "NodeLost", False)], [("w-0", "NodeLost")], id="a-cause-counts"),
        pytest.param(
            [_peer("w-1", 0)], [("w-1", "WorkerFailed: PeerLost: rank exited 75")], id="symptom-alone"
        ),
    ],
)
def test_unplanned(failed: list[Failure], counted: list[tuple[str, str]]) -> None:
    assert unplanned(failed) == counted


@pytest.mark.parametrize(
    ("failed", "suspects", "label"),
    [
        pytest.param([("w-1", "WorkerFailed: PeerLost: x"), ("w-0", "NodeLost: gone")], set(), "NodeLost",
                     id="first-real-cause"),
        pytest.param([("w-1", "WorkerFailed: PeerLost: x")], {"w-0"}, "Unresponsive",
                     id="someone-went-silent"),
        pytest.param([("w-1", "WorkerFailed: PeerLost: x")], set(), "PeerLost", id="only-symptoms"),
    ],
)  # fmt: skip
def test_failure_label(failed: list[tuple[str, str]], suspects: set[str], label: str) -> None:
    assert failure_label(failed, suspects) == label


def test_two_pods_one_silent_gets_the_whole_settle_time() -> None:
    """With one reporter and one silent member either may be the broken one: no 1 s shortcut."""
    two: list[PodView | None] = MEMBERS[:2]
    failed = [_peer("w-0", 0)]
    assert silent_suspects(two, failed, T0 + dt.timedelta(seconds=PEER_QUIET_SECONDS * 2)) == (
        True,
        frozenset(),
    )
    assert silent_suspects(two, failed, T0 + dt.timedelta(seconds=PEER_SETTLE_SECONDS)) == (
        False,
        frozenset({"w-1"}),
    )
