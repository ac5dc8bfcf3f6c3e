"""One rescale's timeline from a demo run's logs: `python -m elastra.demo.timeline demo-out`.

Lines up the demo's disruption (summary.json `events[].wall`) with the operator's log, the agents' logs
and the sessions' start lines (`… start: launch+imports Xs, process group Ys, model Ms, restore Rs,
first step Ws`, written by `elastra.session`), and prints, per rescale, when each milestone was
reached. `milestones` is pure.
"""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (.*)$")
START = re.compile(
    r"generation (\d+) start: launch\+imports ([\d.]+)s, process group ([\d.]+)s, "
    r"model ([\d.]+)s, restore ([\d.]+)s, first step ([\d.]+)s"
)


@dataclass(frozen=True, slots=True)
class Line:
    """One timestamped log line."""

    at: float
    """Unix time."""
    source: str
    """`operator` or the pod's log folder."""
    text: str


@dataclass(frozen=True, slots=True)
class Milestone:
    name: str
    at: float | None
    """Unix time; None when the logs do not show it."""


def parse(lines: Iterable[str], source: str) -> list[Line]:
    """The timestamped lines (local time, as Python's logging writes it). Pure."""
    out = []
    for raw in lines:
        match = STAMP.match(raw)
        if match:
            at = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            out.append(Line(at=at, source=source, text=match.group(2)))
    return out


def _first(lines: Sequence[Line], after: float, pattern: str, source: str | None = None) -> float | None:
    found = [
        x.at for x in lines if x.at >= after and re.search(pattern, x.text) and source in (None, x.source)
    ]
    return min(found) if found else None


def _last_of_each(lines: Sequence[Line], after: float, pattern: str) -> float | None:
    """When the slowest pod reached `pattern` (the latest of every pod's first match)."""
    firsts: dict[str, float] = {}
    for x in lines:
        if x.at >= after and x.source != "operator" and re.search(pattern, x.text):
            firsts.setdefault(x.source, x.at)
    return max(firsts.values()) if firsts else None


def milestones(kind: str, at: float, lines: Sequence[Line]) -> list[Milestone]:
    """The milestones of the rescale a demo `kind` event (`kill`, `freeze`: a loss; `add`, `thaw`: a
    grow) at `at` caused. Pure."""
    steps: list[Milestone] = [Milestone("disruption (demo)", at)]
    op = [x for x in lines if x.source == "operator"]
    loss = kind in ("kill", "freeze")
    if kind == "kill":
        failed = _first([x for x in lines if x.source != "operator"], at, r"Running -> Failed")
        steps.append(Milestone("first agent reports Failed (PeerLost)", failed))
    if loss:  # a frozen node says nothing: the operator notices its agent's silence (or its node)
        steps.append(Milestone("operator counts the failure", _first(op, at, r"event Failure on")))
    else:
        steps.append(Milestone("operator creates the new pod", _first(op, at, r"created Pod")))
        requested = _first(op, at, r"event CheckpointRequested")
        steps.append(Milestone("new pod Running: checkpoint requested", requested))
        committed = _first(op, requested or at, r"created Checkpoint")
        steps.append(Milestone("requested checkpoint committed (operator)", committed))
    written = _first(op, at, r"event Rescaled on")
    steps.append(Milestone("new membership written", written))
    if written is None:
        return steps
    generation = next(
        (m.group(1) for x in op if x.at == written and (m := re.search(r"generation (\d+) \(Run\)", x.text))),
        "?",
    )
    steps.append(
        Milestone("every agent saw it", _last_of_each(lines, written, rf"starting generation {generation}"))
    )
    steps.append(
        Milestone(
            "old workers stopped, new ones launched",
            _last_of_each(lines, written, rf"generation {generation}: \w+ .*rank"),
        )
    )
    starts = [
        (x.at, m) for x in lines if (m := START.search(x.text)) is not None and m.group(1) == generation
    ]
    if starts:
        slowest_at, slowest = max(starts, key=lambda s: s[0])
        imports, group, model, restore, first = (float(slowest.group(i)) for i in range(2, 7))
        at_ = slowest_at - imports - group - model - restore - first
        for name, seconds in (
            ("launch + imports done", imports),
            ("process group up", group),
            ("model built (script)", model),
            ("checkpoint restored", restore),
        ):
            at_ += seconds
            steps.append(Milestone(f"slowest worker: {name}", at_))
        steps.append(Milestone("slowest worker: first step done", slowest_at))
    steps.append(
        Milestone(
            "every agent reports Running",
            _last_of_each(lines, written, rf"generation {generation}: Restoring -> Running"),
        )
    )
    if loss:
        steps.append(Milestone("operator: Recovered", _first(op, written, r"event Recovered")))
    return steps


def table(steps: Sequence[Milestone]) -> str:
    """Markdown rows: milestone, seconds since the disruption, seconds since the previous one. Pure."""
    start = steps[0].at or 0.0
    rows = ["| milestone | t (s) | Δ (s) |", "| --- | ---: | ---: |"]
    previous = start
    for step in steps:
        if step.at is None:
            rows.append(f"| {step.name} | n/a | n/a |")
            continue
        rows.append(f"| {step.name} | {step.at - start:.2f} | {step.at - previous:.2f} |")
        previous = step.at
    return "\n".join(rows)


def read(out: pathlib.Path) -> tuple[list[dict[str, object]], list[Line]]:
    """summary.json's events and every log line of the run in `out`."""
    events = json.loads((out / "summary.json").read_text())["events"]
    lines = parse((out / "operator.log").read_text(errors="replace").splitlines(), "operator")
    for log in sorted((out / "cluster" / "nodes").glob("*/pods/*/logs/*.log")):
        lines += parse(log.read_text(errors="replace").splitlines(), log.parent.parent.name)
    return events, sorted(lines, key=lambda x: x.at)


def main(argv: Sequence[str]) -> int:
    out = pathlib.Path(argv[0] if argv else "demo-out")
    events, lines = read(out)
    for event in events:
        wall = event.get("wall")
        if not isinstance(wall, (int, float)):
            continue
        print(f"\n{event['kind']} {event['node']} at step {event['step']}:\n")
        print(table(milestones(str(event["kind"]), float(wall), lines)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
