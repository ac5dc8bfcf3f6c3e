"""Which failures of a running generation count, and who is to blame for a broken collective. Pure.

A rank that dies takes its peers' collectives with it: they report `PeerLost` (a symptom), while the
culprit may say nothing at all (its node is gone). These functions tell the causes from the
symptoms; `plan` decides what to do with the answer.
"""

from __future__ import annotations

import datetime as dt

from .facts import PEER_LOST, PEER_QUIET_SECONDS, PEER_SETTLE_SECONDS, Failure
from .views import PodView


def unplanned(failed: list[Failure]) -> list[tuple[str, str]]:
    """The failures that count, as (pod, reason): not a drained pod, and, beside one, not its peers'
    `PeerLost`."""
    drained = any(f.reason == "Drained" for f in failed)
    return [(f.pod, f.reason) for f in failed if f.reason != "Drained" and not (drained and f.peer_since)]


def detected_at(
    failed: list[Failure], counted: list[tuple[str, str]], *, now: dt.datetime, not_before: dt.datetime | None
) -> dt.datetime:
    """When the counted failures were first detected: the earliest evidence among them (an agent's
    `Failed` report, a node's NotReady transition, a deletion deadline), never before the generation was
    written (`not_before`: older evidence is another generation's) and never after `now` (clocks differ);
    `now` when there is no evidence."""
    names = {pod for pod, _ in counted}
    times = [f.seen_at for f in failed if f.pod in names and f.seen_at is not None]
    if not times:
        return now
    earliest = min(times)
    if not_before is not None:
        earliest = max(earliest, not_before)
    return min(earliest, now)


def draining(members: list[PodView | None], now: dt.datetime) -> bool:
    """A member is being evicted and still within its grace period (taking its emergency checkpoint)."""
    return any(
        p is not None
        and p.deleting
        and p.phase == "Running"
        and p.deletion_deadline is not None
        and now < p.deletion_deadline
        for p in members
    )


def silent_suspects(
    members: list[PodView | None], failed: list[Failure], now: dt.datetime
) -> tuple[bool, frozenset[str]]:
    """`(wait, suspects)` when only symptoms (`PeerLost`) were reported: the member that broke the
    collective is among the silent ones. Every live member gets up to `PEER_SETTLE_SECONDS` to report
    too — or, once the silent are few (`few_silent`), until no new report came for
    `PEER_QUIET_SECONDS`; `wait` is True until then. After that the silent ones are the suspects, to
    be left out of the next generation (a dead pod's last report still says Running).

    When everyone but one member has reported, and the reporters are at least two, that one gets
    `PEER_QUIET_SECONDS` from the first symptom, not from the last: if it is alive (its worker
    crashed) its own report left when the failure happened, as the first symptom did, so how long
    hundreds of symptoms then take through the API (1-2 s for 511 reports here) is no reason to wait
    longer for it. In a job of three or more whose symptoms arrive together, the two rules are the
    same. With one reporter and one silent member (a 2-pod job) either may be the broken one, so the
    silent one still gets the whole settle time."""
    nobody = frozenset[str]()
    if any(f.peer_since is None for f in failed):
        return False, nobody  # a cause is known
    named = {f.pod for f in failed}
    silent = frozenset(p.name for p in members if p is not None and p.name not in named)
    if not silent:
        return False, nobody
    times = [f.peer_since for f in failed if f.peer_since is not None]
    waited = (now - min(times)).total_seconds()
    quiet = (now - max(times)).total_seconds()
    settled = (
        waited >= PEER_SETTLE_SECONDS
        or (len(silent) == 1 and len(named) > 1 and waited >= PEER_QUIET_SECONDS)
        or (few_silent(len(named), len(silent)) and quiet >= PEER_QUIET_SECONDS)
    )
    return (False, silent) if settled else (True, nobody)


def few_silent(reporters: int, silent: int) -> bool:
    """Whether the silent members are few enough to be the dead ones once the reports went quiet: the
    reporters outnumber them, and they are one pod or at most a quarter of the reporters. A lost node
    silences its one pod; hundreds of silent members are reports still on their way (a 512-pod job's
    511 reports reach a busy API server over seconds), not hundreds of dead pods."""
    return reporters > silent and (silent == 1 or reporters >= 4 * silent)


def failure_label(unplanned: list[tuple[str, str]], suspects: frozenset[str] | set[str]) -> str:
    """One low-cardinality cause for the failures metric: the first real cause, else who went silent."""
    causes = [why.split(":")[0] for _, why in unplanned if not why.startswith(f"WorkerFailed: {PEER_LOST}")]
    if causes:
        return causes[0]
    return "Unresponsive" if suspects else PEER_LOST


DETAIL_PODS = 5
"""At most this many pods are named in a Failure Event; the rest are counted."""


def failure_detail(unplanned: list[tuple[str, str]], suspects: frozenset[str] | set[str]) -> str:
    """The `lost …` part of a Failure Event, bounded whatever the job's size: causes before `PeerLost`
    symptoms, at most DETAIL_PODS named, then how many more (a 512-pod job's peers must not make one
    Event of 50 KB). Pure."""
    ordered = sorted(unplanned, key=lambda item: PEER_LOST in item[1])
    named = ordered[:DETAIL_PODS]
    text = ", ".join(f"{pod} ({why})" for pod, why in named)
    rest = ordered[DETAIL_PODS:]
    if rest:
        peers = sum(1 for _, why in rest if PEER_LOST in why)
        text += f" and {len(rest)} more" + (f" ({peers} {PEER_LOST})" if peers else "")
    if suspects:
        silent = sorted(suspects)
        more = f" and {len(silent) - DETAIL_PODS} more" if len(silent) > DETAIL_PODS else ""
        text += f"; left out, silent since: {', '.join(silent[:DETAIL_PODS])}{more}"
    return text
