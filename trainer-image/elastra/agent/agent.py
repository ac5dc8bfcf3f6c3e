"""The agent's loop: membership in, workers run, reports out. Decisions come from `decide` (pure)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import pathlib
import queue
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from elastra.agent.config import AgentConfig, agent_config_from_env
from elastra.agent.decide import Kind, Local, control_message, decide, worker_env
from elastra.agent.metrics import TrainerMetrics
from elastra.agent.snapshots import start_memory_server, stop_memory_server
from elastra.agent.workers import WorkerGroup, clear_status_files
from elastra.agent.zygote import Zygote, zygote_target
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    AgentReport,
    AgentState,
    Membership,
    RestoreSkip,
)
from elastra.control import (
    CONTROL_FILE,
    EXIT_PEER_LOST,
    EXIT_PEER_STOPPED,
    ControlMessage,
    FileReader,
    WorkerStatus,
    status_file,
    write_atomic,
)

log = logging.getLogger("elastra.agent")

TICK_S = 0.1
"""How often the loop looks at its inbox, workers and status files."""
SWITCH_STOP_S = 5.0
"""Grace for the workers when the job is done and they are still running (then SIGKILL)."""
ZYGOTE_READY_S = 60.0
"""Longest the agent holds its first report back while the warm launcher imports."""
FAILURE_GRACE_S = 2.0
"""After one local worker failed, how long the others get to exit by themselves."""
DONE_WAIT_S = 300.0
"""After the workers succeeded, how long to wait for the operator's `Done` before exiting anyway."""


PEER_LOST = "PeerLost"
"""Reason prefix the operator reads as "not this pod's fault": never a permanent failure."""


def report_due(*, changed: bool, since_last_s: float, interval_s: float, force: bool = False) -> bool:
    """Whether an agent writes its report now: on a change, when forced, and as a heartbeat at least
    every `interval_s` even when nothing changed (Waiting, a long restore, workers blocked in a
    collective): the report's `time` is the pod's heartbeat, and the operator counts an agent silent
    for nodeLossTimeoutSeconds as lost (its node frozen or cut off), whatever the collectives do. The
    real agent and localcluster's protocol simulator both decide with this. Pure."""
    return force or changed or since_last_s >= interval_s


def commit_key(commit: Mapping[str, Any]) -> tuple[Any, Any]:
    """What makes a worker's `last_commit` a new one to report: its step and manifest digest. A later
    generation that fell back past a corrupt checkpoint saves the same step again (a new manifest);
    keyed by step alone, the agent that survived the rescale would never report it and the operator
    would never verify that step again."""
    return commit.get("step"), commit.get("manifestDigest")


def failure_reason(rank: int, code: int, detail: str | None) -> str:
    """The `reason` of a Failed report. Pure."""
    text = f"worker rank {rank} exited with code {code}" + (f": {detail}" if detail else "")
    return f"{PEER_LOST}: {text}" if code in (EXIT_PEER_LOST, EXIT_PEER_STOPPED) else text


class Reporter(Protocol):
    """Where the agent's annotations go (the Kubernetes link, or a test double at this boundary)."""

    def start(self) -> None: ...

    def report(self, annotations: dict[str, str]) -> None: ...

    def stop(self, flush_timeout: float = 3.0) -> None: ...


class Agent:
    """One pod's agent. `run()` returns the process exit code."""

    def __init__(self, cfg: AgentConfig, command: Sequence[str], link: Reporter | None = None) -> None:
        self.cfg = cfg
        self.command = list(command)
        self.inbox: queue.Queue[Membership | None] = queue.Queue()
        if link is None:
            from elastra.agent.kube import KubeLink

            link = KubeLink(cfg, self.inbox.put)
        self.link = link
        self.metrics = TrainerMetrics(job=cfg.job, pod=cfg.pod)
        self.membership: Membership | None = None
        self.workers: WorkerGroup | None = None
        self.state = AgentState.WAITING
        self.generation = 0
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.step: int | None = None
        self.ack: str | None = None
        self.restore: tuple[float, str] | None = None
        """(seconds, tier) of this generation's slowest local restore, once a worker reported one."""
        self.restored: tuple[int | None, tuple[RestoreSkip, ...]] | None = None
        """The step this generation's workers restored and the checkpoints they skipped."""
        self._terminate = threading.Event()
        self._readers: dict[int, FileReader[WorkerStatus]] = {}
        self._control: ControlMessage | None = None
        self._reported: tuple[Any, ...] | None = None
        self._reported_at = 0.0
        self._commit: tuple[Any, Any] | None = None
        """`commit_key` of the last commit reported."""
        self._succeeded_at: float | None = None
        self.zygote: Zygote | None = None
        self.memory_server: Any = None
        """The memory tier's snapshot server process, when the pod has a memory tier."""
        pathlib.Path(cfg.control_dir).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self._terminate.set())
        signal.signal(signal.SIGINT, lambda *_: self._terminate.set())
        if self.cfg.metrics_port:
            self.metrics.serve(self.cfg.pod_ip, self.cfg.metrics_port)
        self.link.start()
        self.memory_server = start_memory_server(os.environ, self.cfg.pod_ip)
        self._start_zygote()
        self._report(force=True)
        try:
            while True:
                self._drain_inbox()
                if self._terminate.is_set():
                    return self._shutdown()
                self._watch_workers()
                action = decide(self.membership, self.cfg.pod, self._local())
                if action.kind is Kind.EXIT:
                    log.info("%s: exiting with %s", action.why, action.exit_code)
                    self._stop_workers(signal.SIGINT, SWITCH_STOP_S)
                    self._report(force=True)
                    return action.exit_code or 0
                if action.kind is Kind.STOP:
                    log.info("stopping workers: %s", action.why)
                    self._stop_workers(signal.SIGKILL, 0.0)
                    self._set_state(AgentState.STOPPED)
                elif action.kind is Kind.START:
                    log.info("starting %s", action.why)
                    self._start(action.generation or 0)
                self._sync_control()
                self._read_statuses()
                self._report()
                if self._succeeded_at is not None and time.monotonic() - self._succeeded_at > DONE_WAIT_S:
                    log.warning("workers succeeded %.0fs ago and no Done came; exiting", DONE_WAIT_S)
                    return 0
                time.sleep(TICK_S)
        finally:
            if self.workers is not None and self.workers.running:
                self.workers.stop(signal.SIGKILL, 1.0)
            if self.zygote is not None:
                self.zygote.close()
            if self.memory_server is not None:
                stop_memory_server(self.memory_server)
            self.link.stop()

    def _start_zygote(self) -> None:
        """Start the warm launcher now, so it imports while the pod waits for its first generation."""
        target = zygote_target(self.command)
        if not self.cfg.zygote or target is None or not sys.platform.startswith("linux"):
            return
        try:
            self.zygote = Zygote(target, os.environ)
        except OSError as exc:
            log.warning("no warm launcher (%s): workers start as new processes", exc)
            return
        # The first report says "this pod can start workers now": the operator waits for it before a
        # planned grow, so the running generation is not stopped while this pod still imports.
        started = time.monotonic()
        while not self.zygote.wait_ready(0.2) and not self.zygote.broken and not self._terminate.is_set():
            if time.monotonic() - started > ZYGOTE_READY_S:
                log.warning("warm launcher not ready after %.0fs: reporting anyway", ZYGOTE_READY_S)
                return
        if self.zygote.ready_seconds is not None:
            log.info("warm launcher ready: imports took %.2fs", self.zygote.ready_seconds)

    def _drain_inbox(self) -> None:
        while True:
            try:
                record = self.inbox.get_nowait()
            except queue.Empty:
                return
            if record is None or self.membership is None or record.generation >= self.membership.generation:
                self.membership = record

    def _local(self) -> Local:
        if self.workers is None:
            return Local(generation=None, running=False, outcome=None)
        return Local(
            generation=self.workers.generation, running=self.workers.running, outcome=self.workers.outcome()
        )

    # ------------------------------------------------------------------ workers
    def _start(self, generation: int) -> None:
        membership = self.membership
        assert membership is not None
        member = membership.member(self.cfg.pod)
        assert member is not None
        # The new generation's restore point is chosen: nothing the old workers still do is kept.
        self._stop_workers(signal.SIGKILL, 0.0)
        clear_status_files(self.cfg.control_dir)
        self._readers = {}
        self._control = None
        self.generation = generation
        self.exit_code = self.reason = self.step = self.ack = None
        self.restore = None
        self.restored = None
        self._succeeded_at = None
        self._sync_control()
        launched = {"ELASTRA_LAUNCHED_AT": f"{time.time():.3f}"}  # the session logs its start from here
        envs = [
            {**worker_env(os.environ, membership, member, local_rank, self.cfg.control_dir), **launched}
            for local_rank in range(member.nprocs)
        ]
        self.workers = WorkerGroup(generation, self.command, envs, self.zygote)
        if self.zygote is not None and self.zygote.broken is not None:
            self.zygote.close()
            self.zygote = None
        self._readers = {
            member.rank_start + i: FileReader(
                pathlib.Path(self.cfg.control_dir) / status_file(member.rank_start + i), WorkerStatus
            )
            for i in range(member.nprocs)
        }
        self._set_state(AgentState.RESTORING)

    def _stop_workers(self, sig: int, timeout: float) -> None:
        if self.workers is not None and self.workers.running:
            self.workers.stop(sig, timeout)

    def _watch_workers(self) -> None:
        """Report a failure as soon as one worker exits non-zero; success once all exited 0."""
        if self.workers is None or self.state in (
            AgentState.FAILED,
            AgentState.SUCCEEDED,
            AgentState.STOPPED,
        ):
            return
        failure = self.workers.first_failure()
        if failure is not None:
            local_rank, code = failure
            rank = min(self._readers, default=0) + local_rank
            self._read_statuses()
            statuses = self._statuses()
            why = next((s.failure for s in statuses if s.failure), None)
            self.exit_code = code
            self.reason = failure_reason(rank, code, why)
            self._set_state(AgentState.FAILED)
            log.error("generation %d: %s", self.generation, self.reason)
            if not self.workers.wait(FAILURE_GRACE_S):
                self.workers.stop(signal.SIGKILL, 1.0)
            return
        outcome = self.workers.outcome()
        if outcome == 0:
            self._read_statuses()
            self.exit_code = 0
            self._set_state(AgentState.SUCCEEDED)
            self._succeeded_at = time.monotonic()

    # ------------------------------------------------------------------ files
    def _sync_control(self) -> None:
        if self.workers is None and self._control is not None:
            return
        message = control_message(self.membership, self.generation, stop=self._terminate.is_set())
        if message != self._control:
            write_atomic(pathlib.Path(self.cfg.control_dir) / CONTROL_FILE, message)
            self._control = message

    def _statuses(self) -> list[WorkerStatus]:
        return [s for s in (r.poll() for r in self._readers.values()) if s is not None]

    def _read_statuses(self) -> None:
        statuses = [s for s in self._statuses() if s.generation == self.generation]
        if not statuses:
            return
        self.metrics.update(statuses)
        steps = [s.step for s in statuses if s.step is not None]
        self.step = max(steps) if steps else self.step
        acks = {s.ack_request for s in statuses}
        if len(acks) == 1:
            self.ack = acks.pop()
        for s in statuses:  # the report carries the slowest local restore
            seconds = s.restore_seconds
            if seconds is not None and (self.restore is None or seconds > self.restore[0]):
                self.restore = (seconds, s.restore_tier or "unknown")
            if s.restored_step is not None or s.restore_skipped:  # every rank restored the same step
                self.restored = (s.restored_step, tuple(s.restore_skipped))
        if (
            self.state is AgentState.RESTORING
            and len(statuses) == len(self._readers)
            and all(s.step is not None for s in statuses)
        ):
            self._set_state(AgentState.RUNNING)
        for status in statuses:
            commit = status.last_commit
            if commit is not None and commit_key(commit) != self._commit:
                self._commit = commit_key(commit)
                self.link.report({COMMIT_ANNOTATION: json.dumps(commit, separators=(",", ":"))})

    # ------------------------------------------------------------------ reports
    def _set_state(self, state: AgentState) -> None:
        if state is not self.state:
            log.info("generation %d: %s -> %s", self.generation, self.state.value, state.value)
        self.state = state
        self._report(force=True)

    def _report(self, *, force: bool = False) -> None:
        key = (
            self.generation,
            self.state,
            self.exit_code,
            self.reason,
            self.ack,
            self.restore,
            self.restored,
        )
        now = time.monotonic()
        changed = key != self._reported
        if not report_due(
            changed=changed, since_last_s=now - self._reported_at, interval_s=self.cfg.report_interval_s,
            force=force,
        ):  # fmt: skip
            return
        report = AgentReport(
            generation=self.generation,
            state=self.state,
            step=self.step,
            exit_code=self.exit_code,
            reason=self.reason,
            ack_request=self.ack,
            restore_seconds=self.restore[0] if self.restore else None,
            restore_tier=self.restore[1] if self.restore else None,
            restored_step=self.restored[0] if self.restored else None,
            restore_skipped=self.restored[1] if self.restored else (),
            time=dt.datetime.now(dt.UTC),
        )
        self.link.report({AGENT_ANNOTATION: report.to_json()})
        self._reported, self._reported_at = key, now

    # ------------------------------------------------------------------ SIGTERM
    def _shutdown(self) -> int:
        """The pod is going away: emergency checkpoint within the grace period, then exit."""
        budget = max(1.0, self.cfg.grace_seconds - 2.0)
        log.warning("SIGTERM: asking workers for an emergency checkpoint (up to %.0fs)", budget)
        if self.workers is not None and self.workers.running:
            self._sync_control()  # stop=True
            self.workers.signal(signal.SIGTERM)
            if not self.workers.wait(budget):
                log.warning("workers did not finish the emergency checkpoint in %.0fs; killing", budget)
                self.workers.stop(signal.SIGKILL, 1.0)
            self._read_statuses()
        if self.state is not AgentState.SUCCEEDED:  # a finished pod being deleted stays Succeeded
            self._set_state(AgentState.STOPPED)
        return 0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m elastra.agent",
        description="Elastra pod agent: runs the training command as this pod's workers.",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the training command")
    args = parser.parse_args(list(argv))
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no training command: use `python -m elastra.agent -- python train.py …`")
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s elastra-agent %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        cfg = agent_config_from_env(os.environ)
    except ValueError as exc:
        print(f"elastra agent: {exc}", file=sys.stderr)
        return 2
    return Agent(cfg, command).run()
