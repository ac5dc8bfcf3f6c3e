"""The protocol models: wire names, and the invariants a generation must keep."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from elastra.api.membership import AgentReport, AgentState, CommitReport, Membership


def _member(pod: str, start: int, n: int = 1) -> dict[str, Any]:
    return {"pod": pod, "node": f"n-{pod}", "podIP": "127.0.0.2", "rankStart": start, "nprocs": n}


@pytest.mark.parametrize(
    ("members", "world", "error"),
    [
        pytest.param([_member("a", 0), _member("b", 1)], 2, None, id="two-pods-tile"),
        pytest.param([_member("a", 0, 2), _member("b", 2, 2)], 4, None, id="multi-proc-pods-tile"),
        pytest.param([_member("b", 1), _member("a", 0)], 2, None, id="order-free"),
        pytest.param([_member("a", 0), _member("b", 2)], 3, "expected 1", id="gap-in-ranks"),
        pytest.param([_member("a", 0, 2), _member("b", 1)], 3, "expected 2", id="overlapping-ranks"),
        pytest.param([_member("a", 0), _member("b", 1)], 3, "worldSize is 3", id="world-size-mismatch"),
        pytest.param([_member("a", 0), {**_member("a", 1)}], 2, "listed twice", id="duplicate-pod"),
        pytest.param([], 0, None, id="empty-hold-record"),
    ],
)
def test_membership_rank_map_invariants(members: list[dict[str, Any]], world: int, error: str | None) -> None:
    raw = {"generation": 1, "phase": "Run", "worldSize": world, "members": members}
    if error is None:
        record = Membership.model_validate(raw)
        assert record.world_size == world
    else:
        with pytest.raises(ValidationError, match=error):
            Membership.model_validate(raw)


def test_membership_round_trips_with_camel_case() -> None:
    record = Membership.model_validate(
        {
            "generation": 3,
            "phase": "Run",
            "worldSize": 1,
            "masterAddr": "127.0.0.5",
            "members": [_member("a", 0)],
        }
    )
    wire = record.to_json()
    assert '"worldSize":1' in wire and '"masterAddr":"127.0.0.5"' in wire
    assert Membership.model_validate_json(wire) == record
    assert record.member("a") is not None and record.member("zz") is None


def test_agent_report_rejects_unknown_state() -> None:
    now = dt.datetime.now(dt.UTC).isoformat()
    ok = AgentReport.model_validate({"generation": 1, "state": "Running", "time": now})
    assert ok.state is AgentState.RUNNING
    with pytest.raises(ValidationError):
        AgentReport.model_validate({"generation": 1, "state": "Exploded", "time": now})


@pytest.mark.parametrize("field", [pytest.param(f, id=f) for f in ("commitSeconds", "stallSeconds")])
def test_commit_report_timings_are_finite(field: str) -> None:
    """A pod's commit report feeds the operator's histograms: inf would poison their sums for good."""
    raw = {"step": 1, "uri": "/r/step-1", "tiers": ["durable"], "bytes": 1, "manifestDigest": "sha256:ab",
           "worldSize": 1, "formatVersion": 1, "generation": 1,
           "time": dt.datetime.now(dt.UTC).isoformat(), field: float("inf")}  # fmt: skip
    with pytest.raises(ValidationError):
        CommitReport.model_validate(raw)
    assert CommitReport.model_validate({**raw, field: 1.5}) is not None
