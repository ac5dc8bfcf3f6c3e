"""The protocol simulator: plays the Elastra agent of every pod on a virtual node, through the API only.

`python -m localcluster.simulator --kubeconfig K [--config JSON]` is started by the cluster when it has
virtual nodes (`localcluster.virtual`). The cluster tells it, one JSON line at a time on stdin, what only
the machine knows: a pod started (with its container's environment), a pod's SIGTERM, a node powered off,
an injected worker failure. It answers `{"op": "exit", ...}` when a simulated agent exits.

Everything else is the agent protocol (docs/protocol.md), spoken as a real agent speaks it:

- the membership record is read by `elastra.agent.kube.KubeLink`'s watch (one per job, shared by its
  virtual pods), parsed by the same `parse_membership`;
- each virtual pod's next move comes from the real agent's pure `elastra.agent.decide.decide`;
- reports are `elastra.api.membership.AgentReport` / `CommitReport` JSON, written on the pod's own
  annotations by `elastra.agent.kube.patch_own_pod` (the real agent's only write), newest value per pod,
  one request in flight per pod;
- the identity comes from the pod's environment through `agent_config_from_env`.

What the workers would do is simulated: a restore takes `restore_seconds`, a step `step_seconds`; the pod
of global rank 0 commits every `ELASTRA_CHECKPOINT_EVERY_STEPS` steps and answers checkpoint requests at the
next step (a `CommitReport` only: no bytes are written); when a member fails or its node is powered off,
its live peers report `Failed` / `PeerLost` after `peer_detect_seconds`, as their collective would fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import hashlib
import heapq
import json
import logging
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from elastra.agent.agent import failure_reason, report_due
from elastra.agent.config import AgentConfig, agent_config_from_env
from elastra.agent.decide import Kind, Local, decide
from elastra.agent.kube import KubeLink, load_kube_config, patch_own_pod
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    AgentReport,
    AgentState,
    CommitReport,
    Membership,
    MembershipPhase,
)
from elastra.control import EXIT_PEER_LOST
from localcluster.simconfig import SimulatorConfig

log = logging.getLogger("localcluster.simulator")

TICK_S = 0.02
"""How often the simulation advances."""


@dataclass(slots=True)
class SimAgent:
    """One virtual pod's agent and its simulated workers."""

    cfg: AgentConfig
    uid: str
    node: str
    checkpoint_uri: str
    checkpoint_every: int
    report_interval_s: float
    generation: int = 0
    state: AgentState = AgentState.WAITING
    step: int | None = None
    exit_code: int | None = None
    reason: str | None = None
    ack: str | None = None
    restore_s: float | None = None
    local_generation: int | None = None
    running: bool = False
    outcome: int | None = None
    rank_start: int | None = None
    started_at: float = 0.0
    running_at: float = 0.0
    next_step_at: float = 0.0
    fail_at: float | None = None
    commit_request: str | None = None
    reported: tuple[Any, ...] | None = None
    reported_at: float = 0.0
    alive: bool = True

    @property
    def job(self) -> tuple[str, str]:
        return (self.cfg.namespace, self.cfg.job)

    def local(self) -> Local:
        return Local(generation=self.local_generation, running=self.running, outcome=self.outcome)


@dataclass(slots=True)
class _Outbox:
    """Newest unsent annotations per pod; at most one request per pod in flight (reports stay ordered)."""

    pending: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    after: dict[tuple[str, str], list[Callable[[], None]]] = field(default_factory=dict)
    busy: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Simulator:
    """All simulated agents of one cluster."""

    def __init__(
        self,
        config: SimulatorConfig,
        api: Any,
        emit: Callable[[dict[str, Any]], None],
        watch: Callable[[AgentConfig, Callable[[Membership | None], None]], Any] = KubeLink,
    ) -> None:
        """`api`: a CoreV1Api for the reports; `emit`: a line to the cluster; `watch`: how a job's
        membership record is followed (the real agent's `KubeLink`)."""
        self.config = config
        self.watch = watch
        self.api = api
        self.emit = emit
        self.rng = random.Random(config.seed)  # noqa: S311 - failure draws, not secrets
        self.agents: dict[str, SimAgent] = {}
        self.by_pod: dict[tuple[str, str], str] = {}
        self.links: dict[tuple[str, str], Any] = {}
        self.records: dict[tuple[str, str], Membership | None] = {}
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.outbox = _Outbox()
        self.pool = ThreadPoolExecutor(config.api_threads, thread_name_prefix="sim-report")
        self.requests = 0
        self.failed_requests = 0

    # ------------------------------------------------------------------ the cluster's messages
    def handle(self, message: dict[str, Any]) -> None:
        """One line from the cluster (called on the simulation thread)."""
        op = message.get("op")
        if op == "start":
            self._start(message)
        elif op == "stop":
            self._sigterm(str(message["uid"]))
        elif op == "nodeLost":
            self._node_lost(str(message["node"]))
        elif op == "fail":
            uid = self.by_pod.get((str(message["namespace"]), str(message["pod"])))
            if uid is not None:
                self._fail(self.agents[uid], int(message.get("exitCode", 137)), message.get("reason"))
        else:
            log.warning("unknown message %r", message)

    def _start(self, message: dict[str, Any]) -> None:
        env = {str(k): str(v) for k, v in (message.get("env") or {}).items()}
        try:
            cfg = agent_config_from_env(env)
        except ValueError as exc:  # not an Elastra worker: a pod that just runs
            log.info("pod %s/%s runs no agent: %s", message.get("namespace"), message.get("pod"), exc)
            return
        every = env.get("ELASTRA_CHECKPOINT_EVERY_STEPS", "").strip()
        agent = SimAgent(
            cfg=cfg,
            uid=str(message["uid"]),
            node=str(message.get("node", "")),
            checkpoint_uri=env.get("ELASTRA_CHECKPOINT_URI", "").rstrip("/"),
            checkpoint_every=int(every) if every.isdigit() else 0,
            report_interval_s=self.config.report_interval_seconds or cfg.report_interval_s,
        )
        self.agents[agent.uid] = agent
        self.by_pod[(cfg.namespace, cfg.pod)] = agent.uid
        if agent.job not in self.links:
            link = self.watch(cfg, functools.partial(self._record_arrived, agent.job))
            self.links[agent.job] = link
            link.start()
        self._report(agent, force=True)

    def _record_arrived(self, job: tuple[str, str], record: Membership | None) -> None:
        """A job's membership record as its watch delivered it (called on the watch thread)."""
        self.inbox.put(("membership", (job, record)))

    def _sigterm(self, uid: str) -> None:
        agent = self.agents.get(uid)
        if agent is None:
            self.emit({"op": "exit", "uid": uid, "code": 0})
            return
        agent.running = False
        if agent.state is not AgentState.SUCCEEDED:
            agent.state = AgentState.STOPPED
        self._report(agent, force=True, then=lambda: self.emit({"op": "exit", "uid": uid, "code": 0}))
        self._forget(agent)

    def _node_lost(self, node: str) -> None:
        lost = [a for a in self.agents.values() if a.node == node]
        for agent in lost:
            self._forget(agent)
        for agent in lost:
            self._peers_notice(agent)

    def _forget(self, agent: SimAgent) -> None:
        agent.alive = False
        self.agents.pop(agent.uid, None)
        self.by_pod.pop((agent.cfg.namespace, agent.cfg.pod), None)
        if not any(a.job == agent.job for a in self.agents.values()):
            link = self.links.pop(agent.job, None)
            if link is not None:
                link.stop(flush_timeout=0)
            self.records.pop(agent.job, None)

    # ------------------------------------------------------------------ failures
    def _fail(self, agent: SimAgent, code: int, reason: str | None) -> None:
        if not agent.running:
            return
        agent.running, agent.outcome = False, code
        agent.state, agent.exit_code = AgentState.FAILED, code
        agent.reason = reason or failure_reason(agent.rank_start or 0, code, "injected by the simulator")
        self._report(agent, force=True)
        self._peers_notice(agent)

    def _peers_notice(self, gone: SimAgent) -> None:
        """The collective of `gone`'s generation fails on every live peer, after the detection delay."""
        generation = gone.local_generation

        def notice() -> None:
            for peer in list(self.agents.values()):
                if peer.job == gone.job and peer.running and peer.local_generation == generation:
                    detail = f"peer {gone.cfg.pod} is gone"
                    self._fail(
                        peer, EXIT_PEER_LOST, failure_reason(peer.rank_start or 0, EXIT_PEER_LOST, detail)
                    )

        self._after(self.config.peer_detect_seconds, notice)

    # ------------------------------------------------------------------ simulation
    def _after(self, delay: float, action: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._seq, action))

    def step(self) -> None:
        """Advance: messages, membership records, timers, then every agent."""
        while True:
            try:
                kind, payload = self.inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "membership":
                key, record = payload
                old = self.records.get(key)
                if record is None or old is None or record.generation >= old.generation:
                    self.records[key] = record
            else:
                self.handle(payload)
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, action = heapq.heappop(self.timers)
            action()
        for agent in list(self.agents.values()):
            if agent.alive:
                self._advance(agent, self.records.get(agent.job), now)

    def _advance(self, agent: SimAgent, record: Membership | None, now: float) -> None:
        action = decide(record, agent.cfg.pod, agent.local())
        if action.kind is Kind.EXIT:
            code = action.exit_code or 0
            agent.running = False
            self._report(
                agent, force=True, then=lambda: self.emit({"op": "exit", "uid": agent.uid, "code": code})
            )
            self._forget(agent)
            return
        if action.kind is Kind.STOP:
            agent.running = False
            agent.state = AgentState.STOPPED
        elif action.kind is Kind.START and action.member is not None and record is not None:
            agent.local_generation = agent.generation = record.generation
            agent.running, agent.outcome = True, None
            agent.state = AgentState.RESTORING
            agent.step = record.restore.step if record.restore is not None else None
            agent.exit_code = agent.reason = agent.ack = agent.restore_s = None
            agent.rank_start = action.member.rank_start
            agent.started_at = now
            agent.running_at = now + self.config.restore_seconds
            agent.fail_at = None
            if self.config.failure_probability and self.rng.random() < self.config.failure_probability:
                agent.fail_at = now + self.rng.uniform(0, self.config.failure_window_seconds)
        if agent.running and record is not None and record.phase is MembershipPhase.RUN:
            self._work(agent, record, now)
        self._report(agent)

    def _work(self, agent: SimAgent, record: Membership, now: float) -> None:
        if agent.state is AgentState.RESTORING and now >= agent.running_at:
            agent.state = AgentState.RUNNING
            agent.restore_s = round(now - agent.started_at, 3)
            agent.next_step_at = now + self.config.step_seconds
        if agent.fail_at is not None and now >= agent.fail_at:
            self._fail(agent, 137, None)
            return
        request = record.checkpoint_request
        if request is not None and agent.state is AgentState.RUNNING and agent.ack != request.id:
            agent.ack = request.id
            agent.commit_request = request.id
        while agent.state is AgentState.RUNNING and now >= agent.next_step_at:
            agent.step = (agent.step or 0) + 1
            agent.next_step_at += self.config.step_seconds
            due = agent.checkpoint_every and agent.step % agent.checkpoint_every == 0
            if agent.rank_start == 0 and self.config.commits and (due or agent.commit_request):
                self._commit(agent, record)
            if self.config.train_steps is not None and agent.step >= self.config.train_steps:
                agent.running, agent.outcome = False, 0
                agent.state, agent.exit_code = AgentState.SUCCEEDED, 0

    def _commit(self, agent: SimAgent, record: Membership) -> None:
        step = agent.step or 0
        uri = f"{agent.checkpoint_uri}/step-{step}"
        report = CommitReport(
            step=step,
            uri=uri,
            tiers=("durable",),  # as the real checkpointer says (`CommitInfo.tiers`)
            bytes=0,
            manifest_digest="sha256:" + hashlib.sha256(uri.encode()).hexdigest(),
            world_size=record.world_size,
            format_version=1,
            generation=record.generation,
            request_id=agent.commit_request,
            time=dt.datetime.now(dt.UTC),
        )
        agent.commit_request = None
        self._send(agent, {COMMIT_ANNOTATION: report.to_json()})

    # ------------------------------------------------------------------ reports
    def _report(
        self, agent: SimAgent, *, force: bool = False, then: Callable[[], None] | None = None
    ) -> None:
        key = (agent.generation, agent.state, agent.exit_code, agent.reason, agent.ack, agent.restore_s)
        now = time.monotonic()
        changed = key != agent.reported
        if not report_due(
            changed=changed, since_last_s=now - agent.reported_at, interval_s=agent.report_interval_s,
            force=force,
        ):  # fmt: skip
            return
        report = AgentReport(
            generation=agent.generation,
            state=agent.state,
            step=agent.step,
            exit_code=agent.exit_code,
            reason=agent.reason,
            ack_request=agent.ack,
            restore_seconds=agent.restore_s,
            restore_tier="durable" if agent.restore_s is not None else None,  # as a real agent says
            time=dt.datetime.now(dt.UTC),
        )
        agent.reported, agent.reported_at = key, now
        self._send(agent, {AGENT_ANNOTATION: report.to_json()}, then=then)

    def _send(
        self, agent: SimAgent, annotations: dict[str, str], *, then: Callable[[], None] | None = None
    ) -> None:
        pod = (agent.cfg.namespace, agent.cfg.pod)
        box = self.outbox
        with box.lock:
            box.pending.setdefault(pod, {}).update(annotations)
            if then is not None:
                box.after.setdefault(pod, []).append(then)
            if pod in box.busy:
                return
            box.busy.add(pod)
        self.pool.submit(self._deliver, pod)

    def _deliver(self, pod: tuple[str, str]) -> None:
        box = self.outbox
        while True:
            with box.lock:
                batch = box.pending.pop(pod, None)
                after = box.after.pop(pod, [])
                if batch is None:
                    box.busy.discard(pod)
                    return
            self.requests += 1
            try:
                patch_own_pod(self.api, pod[0], pod[1], _stamped(batch))
            except Exception as exc:
                self.failed_requests += 1
                status = getattr(exc, "status", None)
                log.info("report on %s/%s: %s", *pod, status or exc)
                if status != 404 and self._alive(pod):  # like the real agent: retry, newer values win
                    with box.lock:
                        box.pending[pod] = {**batch, **box.pending.get(pod, {})}
                        box.after[pod] = after + box.after.get(pod, [])
                    time.sleep(0.2)
                    continue
            for action in after:
                action()

    def _alive(self, pod: tuple[str, str]) -> bool:
        return pod in self.by_pod

    def run(self, stop: threading.Event) -> None:
        """Simulate until `stop` is set."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.step()
            except Exception:
                log.exception("simulation step failed")
            stop.wait(max(0.0, TICK_S - (time.monotonic() - started)))
        for link in self.links.values():
            link.stop(flush_timeout=0)
        self.pool.shutdown(wait=True, cancel_futures=False)


def _stamped(batch: dict[str, str]) -> dict[str, str]:
    """The batch with its agent report's `time` set to now. A real agent writes its report the moment it
    decides it; one simulator process delivering hundreds of agents' reports through a few threads
    would otherwise send reports stamped seconds earlier than they reach the API, which the operator's
    quiet window (docs/protocol.md) would read as silence."""
    raw = batch.get(AGENT_ANNOTATION)
    if raw is None:
        return batch
    report = AgentReport.model_validate_json(raw).model_copy(update={"time": dt.datetime.now(dt.UTC)})
    return {**batch, AGENT_ANNOTATION: report.to_json()}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m localcluster.simulator`: messages on stdin, exits on stdout."""
    parser = argparse.ArgumentParser(prog="localcluster.simulator")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--config", default="{}", help="SimulatorConfig as a JSON object")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s simulator %(levelname)s %(message)s")
    logging.getLogger("elastra.agent").setLevel(logging.ERROR)
    config = SimulatorConfig.from_json(args.config)
    os.environ["KUBECONFIG"] = args.kubeconfig  # what a real agent's KubeLink reads
    out_lock = threading.Lock()

    def emit(message: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    from kubernetes import client

    configuration = load_kube_config().api_client.configuration  # the real agent's way to the API
    configuration.connection_pool_maxsize = config.api_threads
    api = client.CoreV1Api(client.ApiClient(configuration))
    api.api_client.user_agent = "localcluster-simulator/1"  # its requests are told apart from the operator's
    simulator = Simulator(config, api, emit)
    stop = threading.Event()
    worker = threading.Thread(target=simulator.run, args=(stop,), name="simulation", daemon=True)
    worker.start()
    for line in sys.stdin:
        try:
            simulator.inbox.put(("message", json.loads(line)))
        except ValueError:
            log.warning("unreadable message %r", line[:200])
    stop.set()
    worker.join(10)
    log.info("simulator done: %d report requests, %d failed", simulator.requests, simulator.failed_requests)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
