"""Pure facts about a job's pods and nodes at one instant: lost, usable, running, failed, stale."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from elastra.api.membership import EXIT_RESTART_CLEAN, AgentState, Membership
from elastra.api.trainingjob import TrainingJobSpec

from .views import NodeView, PodView

READY = NodeView(name="", ready=True)
PEER_LOST = "PeerLost"
"""Agent failure reason prefix for a worker that died because a peer did: never permanent."""
PEER_SETTLE_SECONDS = 5.0
"""After a first `PeerLost` report, the longest live members get to report theirs."""
PEER_QUIET_SECONDS = 1.0
"""Once the reporters outnumber the silent members, how long after the newest `PeerLost` report the
operator stops waiting: live peers of a dead rank fail together (their collectives break within
milliseconds of each other, measured in docs/benchmarks.md, Recovery), so a second of quiet means the
silent ones are not about to speak."""
REASON_CHARS = 160
UNRESPONSIVE = "Unresponsive"
"""Failure reason prefix of a member whose agent stopped reporting (`Facts.unresponsive`)."""
HEARTBEAT_FRACTION = 4
"""Agents report at least every quarter of the silence timeout: one late write is no loss."""
MIN_SILENCE_SECONDS = 5.0
"""Least silence that counts as a loss whatever `nodeLossTimeoutSeconds` says (1 s would count a busy
API server or a loaded machine's scheduling delay as a lost node)."""


def silence_timeout(spec: TrainingJobSpec) -> float:
    """How long a member's agent may go without a report before the member counts as lost."""
    return max(float(spec.elastic.node_loss_timeout_seconds), MIN_SILENCE_SECONDS)


class Failure(NamedTuple):
    """A member of the running generation that is gone or failed."""

    pod: str
    reason: str
    permanent: bool
    peer_since: dt.datetime | None = None
    """When the agent reported `PeerLost` (only a symptom); None for a cause."""
    seen_at: dt.datetime | None = None
    """Earliest evidence of the failure in what the API holds: the agent's `Failed` report of this
    generation, the node's NotReady transition, the pod's deletion deadline; None when there is none."""


def permanent_exit(code: int | None, retryable: tuple[int, ...]) -> bool:
    """Exit codes 1-127 come from user code and are permanent unless listed; 128+ are signals: retryable.
    `EXIT_RESTART_CLEAN` is the session's own (a worker that must start over), never permanent."""
    return code is not None and 1 <= code <= 127 and code not in retryable and code != EXIT_RESTART_CLEAN


@dataclass(frozen=True, slots=True, kw_only=True)
class Facts:
    """Judgements of pods against the nodes, the current generation and the spec's timeouts."""

    nodes: Mapping[str, NodeView]
    """Nodes by name."""
    membership: Membership
    """The current generation."""
    spec: TrainingJobSpec
    now: dt.datetime

    def node_lost(self, pod: PodView) -> bool:
        if pod.node is None:
            return False
        node = self.nodes.get(pod.node)
        if node is None:
            return True
        if node.ready or node.not_ready_since is None:
            return False
        return (
            self.now - node.not_ready_since
        ).total_seconds() >= self.spec.elastic.node_loss_timeout_seconds

    def cordoned(self, pod: PodView) -> bool:
        node = self.nodes.get(pod.node or "")
        return node is not None and node.unschedulable

    def loss(self, pod: PodView) -> str | None:
        """Why the pod is gone for good (None while it can still train)."""
        if pod.deleting:
            return "Drained" if self.cordoned(pod) else "PodDeleted"
        if pod.reason == "Evicted":
            return "Evicted"
        if self.node_lost(pod):
            return "NodeLost"
        if pod.phase == "Failed":
            return f"ExitCode{pod.exit_code}" if pod.exit_code is not None else "PodFailed"
        if pod.phase == "Unknown":
            return "PodUnknown"
        return None

    def usable(self, pod: PodView) -> bool:
        return self.loss(pod) is None and pod.phase in ("Pending", "Running")

    def running(self, pod: PodView) -> bool:
        return pod.phase == "Running" and bool(pod.ip) and bool(pod.node)

    def in_generation(self, pod: PodView, state: AgentState) -> bool:
        return (
            pod.agent is not None
            and pod.agent.generation == self.membership.generation
            and pod.agent.state is state
        )

    def failed_members(self, members: list[PodView | None]) -> list[Failure]:
        """Every member of the generation that is gone or failed."""
        retryable = self.spec.run_policy.retryable_exit_codes
        failed: list[Failure] = []
        for member, pod in zip(self.membership.members, members, strict=True):
            if pod is None:  # already gone: a drain if it was on a node now cordoned
                node = self.nodes.get(member.node)
                drained = node is not None and node.unschedulable
                failed.append(Failure(member.pod, "Drained" if drained else "PodDeleted", False))
            elif (loss := self.loss(pod)) is not None:
                permanent = pod.phase == "Failed" and permanent_exit(pod.exit_code, retryable)
                failed.append(Failure(pod.name, loss, permanent, seen_at=self.evidence(pod)))
            elif self.unresponsive(pod) and self.someone_reports(members):
                assert pod.agent is not None
                timeout = silence_timeout(self.spec)
                silent = (self.now - pod.agent.time).total_seconds()
                failed.append(
                    Failure(
                        pod.name,
                        f"{UNRESPONSIVE}: no agent report for {silent:.0f}s (timeout {timeout:g}s)",
                        False,
                        seen_at=pod.agent.time + dt.timedelta(seconds=timeout),
                    )
                )
            elif self.in_generation(pod, AgentState.FAILED):
                assert pod.agent is not None
                why = (pod.agent.reason or f"exit code {pod.agent.exit_code}")[:REASON_CHARS]
                peer = (pod.agent.reason or "").startswith(PEER_LOST)
                permanent = not peer and permanent_exit(pod.agent.exit_code, retryable)
                failed.append(
                    Failure(
                        pod.name,
                        f"WorkerFailed: {why}",
                        permanent,
                        pod.agent.time if peer else None,
                        seen_at=pod.agent.time,
                    )
                )
        return failed

    def unresponsive(self, pod: PodView) -> bool:
        """Its agent, which heartbeats its report, has written nothing for `silence_timeout` (the node-loss
        timeout, at least `MIN_SILENCE_SECONDS`): the
        pod's processes, its node or its path to the API server hang (a frozen node, a partition). No TCP
        reset reached its peers, so their collectives block until their own timeout; this is the inside
        path for that silent loss, before node NotReady (the kubelet's grace) plus the same timeout.
        Clocks: the agent stamps `time`; skew between nodes must stay well under the timeout (NTP)."""
        agent = pod.agent
        if agent is None or pod.phase != "Running" or pod.deleting:
            return False
        return (self.now - agent.time).total_seconds() >= silence_timeout(self.spec)

    def someone_reports(self, members: list[PodView | None]) -> bool:
        """Some member's agent reports on time: the API path works, so a silent one is the one in trouble
        (when every agent is silent, the operator's own view or the API server is the suspect: wait)."""
        return any(p is not None and p.agent is not None and not self.unresponsive(p) for p in members)

    def evidence(self, pod: PodView) -> dt.datetime | None:
        """The earliest time the API shows `pod` failing or gone: its agent's `Failed` report of this
        generation, its node's NotReady transition, its deletion deadline (None when none applies). The
        caller bounds it by the generation's start and by now (clocks of agents and kubelets differ)."""
        times: list[dt.datetime] = []
        if self.in_generation(pod, AgentState.FAILED):
            assert pod.agent is not None
            times.append(pod.agent.time)
        node = self.nodes.get(pod.node or "")
        if node is not None and not node.ready and node.not_ready_since is not None:
            times.append(node.not_ready_since)
        if pod.deleting and pod.deletion_deadline is not None:
            times.append(pod.deletion_deadline)
        return min(times, default=None)

    def stale(self, pod: PodView) -> bool:
        """Its agent last said it runs an older generation: it missed the change (dead or cut off)."""
        agent = pod.agent
        running = (AgentState.RUNNING, AgentState.RESTORING)
        return agent is not None and agent.generation < self.membership.generation and agent.state in running

    def can_join(self, pod: PodView) -> bool:
        """Runs, did not miss the last generation change, and its agent reports on time."""
        return self.running(pod) and not self.stale(pod) and not self.unresponsive(pod)

    def any_node_unsure(self, members: list[PodView | None]) -> bool:
        """A member sits on a NotReady node not yet declared lost: a peer's error may be its symptom."""
        return any(
            p is not None
            and not self.node_lost(p)
            and not self.nodes.get(p.node or "", READY).ready
            and not (self.unresponsive(p) and self.someone_reports(members))  # known culprit, not unsure
            for p in members
        )
