"""`elastra.demo.timeline`: a rescale's milestones from log lines (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from elastra.demo.timeline import Line, milestones, parse, table

T0 = dt.datetime(2026, 1, 1, 12, 0, 0).timestamp()


def op(at: float, text: str) -> Line:
    return Line(at=T0 + at, source="operator", text=text)


def pod(name: str, at: float, text: str) -> Line:
    return Line(at=T0 + at, source=name, text=text)


KILL = [
    pod("a", 0.1, "elastra-agent INFO generation 1: Running -> Failed"),
    pod("b", 0.2, "elastra-agent INFO generation 1: Running -> Failed"),
    op(1.2, "INFO elastra.operator.kube: event Failure on default/tj: generation 1: lost …"),
    op(
        1.2, "INFO elastra.operator.kube: event Rescaled on default/tj: generation 2 (Run): world size 3 -> 2"
    ),
    pod("a", 1.3, "elastra-agent INFO starting generation 2: ranks 0..0"),
    pod("b", 1.4, "elastra-agent INFO starting generation 2: ranks 1..1"),
    pod("a", 1.3, "elastra-agent INFO generation 2: forked from the warm launcher rank 0 (pid 7)"),
    pod("b", 1.5, "elastra-agent INFO generation 2: spawned rank 1 (pid 8)"),
    pod(
        "b",
        6.5,
        "elastra-session INFO rank 1 generation 2 start: launch+imports 0.50s, process group "
        "1.00s, model 2.00s, restore 1.00s, first step 0.50s",
    ),
    pod("a", 6.4, "elastra-agent INFO generation 2: Restoring -> Running"),
    pod("b", 6.6, "elastra-agent INFO generation 2: Restoring -> Running"),
    op(6.7, "INFO elastra.operator.kube: event Recovered on default/tj: training resumed"),
]


def test_kill_milestones_follow_the_slowest_pod() -> None:
    got = {m.name: None if m.at is None else round(m.at - T0, 2) for m in milestones("kill", T0, KILL)}
    assert got == {
        "disruption (demo)": 0.0,
        "first agent reports Failed (PeerLost)": 0.1,
        "operator counts the failure": 1.2,
        "new membership written": 1.2,
        "every agent saw it": 1.4,
        "old workers stopped, new ones launched": 1.5,
        "slowest worker: launch + imports done": 2.0,
        "slowest worker: process group up": 3.0,
        "slowest worker: model built (script)": 5.0,
        "slowest worker: checkpoint restored": 6.0,
        "slowest worker: first step done": 6.5,
        "every agent reports Running": 6.6,
        "operator: Recovered": 6.7,
    }


def test_freeze_milestones_start_at_the_operator_noticing_the_silence() -> None:
    """A frozen node's peers report nothing (no reset): the first milestone is the operator's count."""
    silent = [line for line in KILL if "Running -> Failed" not in line.text]
    got = {m.name: None if m.at is None else round(m.at - T0, 2) for m in milestones("freeze", T0, silent)}
    assert "first agent reports Failed (PeerLost)" not in got
    assert got["operator counts the failure"] == 1.2 and got["operator: Recovered"] == 6.7


def test_missing_generation_stops_the_timeline_and_prints_gaps() -> None:
    steps = milestones("add", T0, [op(0.5, "INFO elastra.operator.kube: created Pod default/tj-w-3")])
    assert [m.name for m in steps][-1] == "new membership written" and steps[-1].at is None
    assert "| new membership written | n/a | n/a |" in table(steps)


@pytest.mark.parametrize(
    ("line", "count"),
    [
        pytest.param("2026-01-01 12:00:01,250 elastra-agent INFO x", 1, id="logging-stamp"),
        pytest.param("step 50 loss 2.41", 0, id="unstamped-output-skipped"),
    ],
)
def test_parse(line: str, count: int) -> None:
    parsed = parse([line], "a")
    assert len(parsed) == count
    if parsed:
        assert parsed[0].at == pytest.approx(T0 + 1.25)
