"""A stand-in trainer for the operator's integration tests: one process per pod that speaks the pod-agent
side of docs/protocol.md directly with the Kubernetes client.

It polls its job's membership ConfigMap, "trains" by counting steps while its generation is `Run`,
reports `AgentReport` on its own pod, and — on the pod holding rank 0 — "commits" checkpoints as
`<ELASTRA_CHECKPOINT_URI>/step-N/manifest.json` and reports `CommitReport`, on the interval and for each
checkpoint request. Knobs (env): STUB_STEP_SECONDS (default 0.1), STUB_TOTAL_STEPS (0: forever),
STUB_FAIL_AT_STEP with STUB_FAIL_EXIT_CODE and STUB_FAIL_POD (once, at that step, a "worker" fails with
that code: STUB_FAIL_MODE=report, the default, reports Failed and waits like an agent to restart in place;
STUB_FAIL_MODE=exit kills the whole container with that code, unreported),
STUB_REQUEST_DELAY_STEPS (answer a checkpoint request only after this many more steps).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pathlib
import sys
import time
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from elastra import kubeclient
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    MEMBERSHIP_KEY,
    AgentReport,
    AgentState,
    CommitReport,
    Membership,
    MembershipPhase,
    membership_configmap_name,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Stub:
    def __init__(self) -> None:
        self.core = kubernetes.client.CoreV1Api(kubeclient.api_client())
        self.pod = os.environ["POD_NAME"]
        self.ns = os.environ["POD_NAMESPACE"]
        self.job = os.environ["ELASTRA_JOB"]
        self.root = pathlib.Path(os.environ["ELASTRA_CHECKPOINT_URI"])
        self.every = int(os.environ.get("ELASTRA_CHECKPOINT_EVERY_STEPS", "0") or 0)
        self.step_seconds = float(os.environ.get("STUB_STEP_SECONDS", "0.1"))
        self.total = int(os.environ.get("STUB_TOTAL_STEPS", "0"))
        self.fail_at = int(os.environ.get("STUB_FAIL_AT_STEP", "0"))
        self.fail_code = int(os.environ.get("STUB_FAIL_EXIT_CODE", "1"))
        self.fail_pod = os.environ.get("STUB_FAIL_POD", "")
        self.fail_mode = os.environ.get("STUB_FAIL_MODE", "report")
        self.failed_once = False
        self.exit_code: int | None = None
        self.reason: str | None = None
        self.request_delay = int(os.environ.get("STUB_REQUEST_DELAY_STEPS", "0"))
        self.request_seen: dict[str, int] = {}
        self.generation = -1
        self.state = AgentState.WAITING
        self.step = 0
        self.rank0 = False
        self.handled_request: str | None = None
        self.last_report = 0.0
        self.reported: tuple[Any, ...] = ()

    # ------------------------------------------------------------------ API
    def membership(self) -> Membership | None:
        try:
            cm = self.core.read_namespaced_config_map(membership_configmap_name(self.job), self.ns)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        raw = (cm.data or {}).get(MEMBERSHIP_KEY)
        return Membership.model_validate_json(raw) if raw else None

    def annotate(self, key: str, value: str) -> None:
        self.core.patch_namespaced_pod(self.pod, self.ns, {"metadata": {"annotations": {key: value}}})

    def report(self, *, force: bool = False) -> None:
        exit_code, reason = self.exit_code, self.reason
        key = (self.generation, self.state, exit_code)
        if not force and key == self.reported and time.monotonic() - self.last_report < 1.0:
            return
        restored = self.state is AgentState.RUNNING and self.generation > 0
        report = AgentReport(
            generation=max(self.generation, 0),
            state=self.state,
            step=self.step,
            exit_code=exit_code,
            reason=reason,
            ack_request=self.handled_request,
            restore_seconds=0.01 if restored else None,
            restore_tier="directory" if restored else None,
            time=_now(),
        )
        self.annotate(AGENT_ANNOTATION, report.to_json())
        self.reported, self.last_report = key, time.monotonic()

    def commit(self, m: Membership, request_id: str | None) -> None:
        directory = self.root / f"step-{self.step}"
        directory.mkdir(parents=True, exist_ok=True)
        manifest = json.dumps({"step": self.step, "worldSize": m.world_size, "generation": m.generation})
        (directory / "shard-0.bin").write_bytes(b"\0" * 1024)
        (directory / "manifest.json").write_text(manifest)
        report = CommitReport(
            step=self.step,
            uri=str(directory),
            tiers=("directory",),
            bytes=1024,
            manifest_digest="sha256:" + hashlib.sha256(manifest.encode()).hexdigest(),
            world_size=m.world_size,
            format_version=1,
            generation=m.generation,
            commit_seconds=0.01,
            request_id=request_id,
            time=_now(),
        )
        self.annotate(COMMIT_ANNOTATION, report.to_json())

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        self.report(force=True)
        while True:
            m = self.membership()
            if m is not None and m.phase is MembershipPhase.DONE:
                return 0 if self.state is AgentState.SUCCEEDED else 1
            me = m.member(self.pod) if m is not None else None
            if m is None or me is None or m.phase is not MembershipPhase.RUN:
                if self.state not in (AgentState.WAITING, AgentState.STOPPED, AgentState.SUCCEEDED):
                    self.state = AgentState.STOPPED
                if m is not None:
                    self.generation = m.generation
                self.report()
                time.sleep(0.2)
                continue
            if m.generation != self.generation:  # a new generation: restart the "workers" in place
                self.generation, self.rank0 = m.generation, me.rank_start == 0
                self.step = m.restore.step if m.restore is not None else 0
                self.state, self.exit_code, self.reason = AgentState.RESTORING, None, None
                self.report(force=True)
                self.state = AgentState.RUNNING
                self.report(force=True)
            if self.state in (AgentState.SUCCEEDED, AgentState.FAILED):
                self.report()
                time.sleep(0.2)
                continue
            time.sleep(self.step_seconds)
            self.step += 1
            if (
                self.fail_at
                and self.step >= self.fail_at
                and self.pod == self.fail_pod
                and not self.failed_once
            ):
                self.failed_once = True
                if self.fail_mode == "exit":
                    return self.fail_code
                self.state = AgentState.FAILED
                self.exit_code, self.reason = self.fail_code, f"injected exit {self.fail_code}"
                self.report(force=True)
                continue
            request = m.checkpoint_request
            due = request is not None and self.step >= self.request_seen.setdefault(
                request.id, self.step + self.request_delay
            )
            if request is not None and due and request.id != self.handled_request:
                self.handled_request = request.id
                if self.rank0:
                    self.commit(m, request.id)
            elif self.rank0 and self.every and self.step % self.every == 0:
                self.commit(m, None)
            if self.total and self.step >= self.total:
                self.state, self.exit_code = AgentState.SUCCEEDED, 0
                self.report(force=True)
                continue
            self.report()


if __name__ == "__main__":
    sys.exit(Stub().run())
