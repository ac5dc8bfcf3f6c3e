"""`plan(job, pods, nodes, checkpoints, now) -> actions`: every decision the operator takes. Pure.

One pass reads the membership record (generation, members, checkpoint request) and the operator record
stored beside it, looks at pods, nodes and Checkpoints, and returns the writes that move the job one step
on. Nothing is remembered between passes, so a restarted operator picks up exactly where the last left.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from elastra.api.membership import (
    AgentState,
    CheckpointRequest,
    Membership,
    MembershipPhase,
)
from elastra.api.trainingjob import Phase, TrainingJobStatus

from . import commits, failures, manifests
from .actions import (
    Action,
    ApplyObject,
    CreateObject,
    DeletePod,
    Event,
    Observe,
    PatchStatus,
    WriteMembership,
)
from .checks import spec_problems
from .facts import Facts, Failure
from .generations import next_membership, restore_point
from .outcomes import after_finish, invalid
from .reasons import Metric, Reason
from .status import build_status, changed, set_condition, status_body
from .views import CheckpointView, JobView, NodeView, OperatorRecord, PodView


def plan(
    job: JobView,
    pods: Sequence[PodView],
    nodes: Sequence[NodeView],
    checkpoints: Sequence[CheckpointView],
    now: dt.datetime,
) -> tuple[Action, ...]:
    """Pure: the actions that move `job` on from what the API shows at `now`."""
    if job.deleting:
        return ()
    problems = spec_problems(job)
    if problems:
        return invalid(job, problems, now)
    if job.status.phase.finished:
        return after_finish(job, pods, now)
    return _Pass(job, pods, nodes, checkpoints, now).run()


class _Pass:
    """One planning pass over one job. Collects writes; `run()` returns them in a safe order."""

    def __init__(
        self,
        job: JobView,
        pods: Sequence[PodView],
        nodes: Sequence[NodeView],
        checkpoints: Sequence[CheckpointView],
        now: dt.datetime,
    ) -> None:
        assert job.spec is not None
        self.job, self.spec, self.now = job, job.spec, now
        self.pods = {p.name: p for p in pods}
        self.nodes = {n.name: n for n in nodes}
        status = job.status
        # No (readable) membership record: start over from what the status last showed, so that generations
        # only grow and failures already counted stay counted.
        self.m = job.membership or Membership(
            generation=status.generation,
            phase=MembershipPhase.HOLD,
            world_size=0,
            nproc_per_pod=self.spec.nproc_per_pod,
        )
        self.r = (
            job.record
            if job.membership is not None
            else OperatorRecord(
                failures=status.failures, restarts=status.restarts, started_at=status.start_time
            )
        )
        self.new_m, self.new_r = self.m, self.r
        self.ckpts = sorted((c for c in checkpoints if c.job == job.name), key=lambda c: c.step)
        self.creates: list[Action] = []
        self.deletes: list[Action] = []
        self.events: list[Action] = []
        self.observations: list[Action] = []
        self.phase = job.status.phase
        self.conditions = set_condition(
            job.status.conditions, type_="Valid", status=True, reason=Reason.SPEC_VALID, message="", now=now
        )
        self.completion: dt.datetime | None = job.status.completion_time
        self.creating = 0
        self.suspects: frozenset[str] = frozenset()
        """Silent members left out of the next generation (`failures.silent_suspects`)."""
        self.facts = Facts(nodes=self.nodes, membership=self.m, spec=self.spec, now=now)
        self.keep: list[PodView] = []
        self.leaving: list[PodView] = []

    # ------------------------------------------------------------------ the pass
    def run(self) -> tuple[Action, ...]:
        self.record_commits()
        members = [self.pods.get(m.pod) for m in self.m.members]
        usable = sorted((p for p in self.pods.values() if self.facts.usable(p)), key=self._order)
        suspend = self.spec.run_policy.suspend
        leaving = [p for p in usable if suspend or self.facts.cordoned(p)]
        keep = [p for p in usable if p not in leaving]
        leaving += keep[self.spec.replicas.max :]
        keep = keep[: self.spec.replicas.max]
        self.keep, self.leaving = keep, leaving
        if not suspend:
            self.create_pods(usable)
        for pod in self.pods.values():
            gone = not self.facts.usable(pod) and pod.phase != "Succeeded"
            if gone and (not pod.deleting or self.facts.node_lost(pod)):
                why = self.facts.loss(pod) or pod.phase
                self.deletes.append(DeletePod(name=pod.name, reason=why, force=self.facts.node_lost(pod)))
        if not self.check_deadline():
            if self.m.phase is MembershipPhase.RUN and self.m.members:
                self.run_generation(members)
            elif self.m.phase is MembershipPhase.HOLD:
                self.hold_generation()
            elif self.m.phase is MembershipPhase.DONE:
                self.finish(
                    self.r.outcome or "Failed", self.r.outcome_reason or "Done", self.r.outcome_message or ""
                )
        return self.collect()

    def _order(self, pod: PodView) -> tuple[int, int, str]:
        member = self.m.member(pod.name)
        if member is not None:
            return (0, member.rank_start, pod.name)
        return (1, manifests.pod_index(self.job.name, pod.name) or 0, pod.name)

    def create_pods(self, usable: list[PodView]) -> None:
        if self.job.membership is None:
            self.creates.append(CreateObject(manifest=manifests.headless_service(self.job)))
        occupied = {p.node for p in usable if p.node}
        free = manifests.free_nodes(self.spec.template, self.nodes.values(), occupied)
        unscheduled = sum(1 for p in self.keep if p.node is None)
        want = min(self.spec.replicas.max - len(self.keep), len(free) - unscheduled)
        # A name of the current generation is never reused: a new pod must not pass for a member.
        names = [*self.pods, *(m.pod for m in self.m.members)]
        taken = {manifests.pod_index(self.job.name, name) for name in names}
        index = 0
        self.creating = max(want, 0)
        pods: list[Action] = []
        for _ in range(self.creating):
            while index in taken:
                index += 1
            pods.append(CreateObject(manifest=manifests.worker_pod(self.job, index)))
            taken.add(index)
        if pods or self.job.membership is None:
            # The identity first: a pod naming a missing ServiceAccount is refused.
            highest = max((i for i in taken if i is not None), default=0)
            names = manifests.identity_names(self.job.name, highest, self.spec.replicas.max)
            account, role, binding = manifests.worker_identity(self.job, names)
            self.creates += [CreateObject(manifest=account), ApplyObject(manifest=role)]
            self.creates.append(CreateObject(manifest=binding))
        self.creates.extend(pods)
        if len(self.keep) + self.creating < self.spec.replicas.min:
            self.conditions = set_condition(
                self.conditions,
                type_="Capacity",
                status=False,
                reason=Reason.INSUFFICIENT_CAPACITY,
                message=f"{len(self.keep) + self.creating} schedulable worker(s), replicas.min is "
                f"{self.spec.replicas.min}: waiting for capacity",
                now=self.now,
            )
        else:
            self.conditions = set_condition(
                self.conditions,
                type_="Capacity",
                status=True,
                reason=Reason.SUFFICIENT,
                message="",
                now=self.now,
            )

    def check_deadline(self) -> bool:
        deadline = self.spec.run_policy.active_deadline_seconds
        started = self.r.started_at
        if deadline is None or started is None or (self.now - started).total_seconds() < deadline:
            return False
        self.finish(
            "Failed", "DeadlineExceeded", f"the job ran longer than activeDeadlineSeconds ({deadline}s)"
        )
        return True

    # ------------------------------------------------------------------ a running generation
    def run_generation(self, members: list[PodView | None]) -> None:
        if all(
            p is not None and (p.phase == "Succeeded" or self.facts.in_generation(p, AgentState.SUCCEEDED))
            for p in members
        ):
            self.finish("Succeeded", "AllRanksSucceeded", f"all {self.m.world_size} ranks exited 0")
            return
        failed = self.facts.failed_members(members)
        if failed and self.facts.any_node_unsure(members):
            self.phase = Phase.RESCALING  # wait: the NotReady node is either back or lost within the timeout
        elif failed and all(f.permanent for f in failed):
            detail = ", ".join(f"{f.pod} ({f.reason})" for f in failed)
            self.finish("Failed", "WorkerFailed", f"permanent failure in user code: {detail}")
        elif unplanned := failures.unplanned(failed):
            wait, self.suspects = failures.silent_suspects(members, failed, self.now)
            if wait:
                self.phase = Phase.RESCALING
            elif not self.count_failure(failed, unplanned):
                self.transition("Failure")
        elif failed:
            self.drain(members)
        else:
            self.planned_changes(members)

    def drain(self, members: list[PodView | None]) -> None:
        """A member is being evicted (drain): its agent has the grace period for an emergency checkpoint.
        Wait until it is gone or its grace period is over, then rescale from the newest commit."""
        if failures.draining(members, self.now):
            self.phase = Phase.RESCALING
            return
        self.transition("Drain")

    def candidate(self, pod: PodView) -> bool:
        """May join the next generation: runs, and is not suspected dead."""
        return self.facts.running(pod) and not self.facts.stale(pod) and pod.name not in self.suspects

    def planned_changes(self, members: list[PodView | None]) -> None:
        """No failure: suspend, shrink or grow when asked to, else keep running."""
        names = {m.pod for m in self.m.members}
        # A pod joins once its agent has reported: it reports after its warm launcher imported, so the
        # running generation is stopped only when the new pod can start its workers at once.
        joining = [p for p in self.keep if p.name not in names and self.candidate(p) and p.agent is not None]
        if self.spec.run_policy.suspend:
            self.planned("Suspend")
        elif any(p.name in names for p in self.leaving):
            self.planned("ScaleDown")
        elif joining and self.gang_ready() and self.cooled_down():
            self.planned("ScaleUp")
        else:
            self.steady(members)

    def count_failure(self, failed: list[Failure], unplanned: list[tuple[str, str]]) -> bool:
        """Count this generation's failure once; True when the backoff limit is now exceeded. It was
        detected at its earliest evidence (`failures.detected_at`), not when this pass counted it: the
        recovery time runs from there (an unrecovered earlier failure keeps its own, earlier time)."""
        if self.r.failure_generation == self.m.generation:
            return self.new_r.failures > self.spec.run_policy.backoff_limit
        steps = [p.agent.step for p in self.pods.values() if p.agent is not None and p.agent.step is not None]
        count = self.r.failures + 1
        self.new_r = self.new_r.model_copy(
            update={
                "failures": count,
                "failure_generation": self.m.generation,
                "failure_detected_at": self.r.failure_detected_at
                or failures.detected_at(failed, unplanned, now=self.now, not_before=self.r.last_rescale_at),
                "failure_step": max(steps, default=None),
            }
        )
        detail = ", ".join(f"{pod} ({why})" for pod, why in unplanned)
        if self.suspects:
            detail += f"; left out, silent since: {', '.join(sorted(self.suspects))}"
        limit = self.spec.run_policy.backoff_limit
        self.events.append(
            Event(
                reason=Reason.FAILURE,
                message=f"generation {self.m.generation}: lost {detail}; "
                f"failure {count}, backoffLimit {limit}",
                warning=True,
            )
        )
        label = failures.failure_label(unplanned, self.suspects)
        self.observations.append(Observe(metric=Metric.FAILURES, labels={"reason": label}))
        if count > limit:
            self.finish("Failed", "BackoffLimitExceeded", f"{count} failures, backoffLimit is {limit}")
            return True
        return False

    def gang_ready(self) -> bool:
        """Every kept pod runs, or the ones that do not have had startTimeoutSeconds to do so."""
        if self.creating:
            return False
        timeout = self.spec.elastic.start_timeout_seconds
        return all(
            self.facts.running(p) or (self.now - p.created_at).total_seconds() >= timeout for p in self.keep
        )

    def cooled_down(self) -> bool:
        last = self.r.last_rescale_at
        cooldown = self.spec.elastic.scale_up_cooldown_seconds
        return last is None or (self.now - last).total_seconds() >= cooldown

    def planned(self, reason: str) -> None:
        """A rescale nobody forced: checkpoint first (up to the deadline), then the new generation."""
        self.phase = Phase.RESCALING
        request = self.m.checkpoint_request
        if request is None:
            request = CheckpointRequest(
                id=f"g{self.m.generation}-{reason.lower()}-{int(self.now.timestamp())}",
                reason=reason,
                requested_at=self.now,
            )
            self.new_m = self.m.model_copy(update={"checkpoint_request": request})
            self.events.append(
                Event(
                    reason=Reason.CHECKPOINT_REQUESTED,
                    message=f"checkpoint requested before {reason} (request {request.id})",
                )
            )
            return
        if self.answered(request):
            self.transition(reason)
            return
        waited = (self.now - request.requested_at).total_seconds()
        if waited >= self.spec.elastic.checkpoint_deadline_seconds:
            self.events.append(
                Event(
                    reason=Reason.CHECKPOINT_LATE,
                    message=f"no commit for request {request.id} after {int(waited)}s: "
                    f"{reason} from the newest committed checkpoint",
                    warning=True,
                )
            )
            self.transition(reason)

    def answered(self, request: CheckpointRequest) -> bool:
        return any(c.committed_at >= request.requested_at for c in self.ckpts) or any(
            p.commit is not None and p.commit.request_id == request.id for p in self.pods.values()
        )

    def steady(self, members: list[PodView | None]) -> None:
        request = self.m.checkpoint_request
        if request is not None and (
            self.answered(request)
            or (self.now - request.requested_at).total_seconds()
            >= self.spec.elastic.checkpoint_deadline_seconds
        ):
            self.new_m = self.new_m.model_copy(update={"checkpoint_request": None})
        if all(p is not None and self.facts.in_generation(p, AgentState.RUNNING) for p in members):
            self.phase = Phase.RUNNING
            self.resumed(members)
        elif self.m.restore is not None:
            self.phase = Phase.RESTORING
        else:
            self.phase = Phase.STARTING

    def resumed(self, members: list[PodView | None]) -> None:
        """Training runs in this generation: close the books on the failure that led here."""
        if self.job.status.phase is Phase.RUNNING and self.job.status.generation == self.m.generation:
            return
        for pod in members:
            if pod is not None and pod.agent is not None and pod.agent.restore_seconds is not None:
                tier = pod.agent.restore_tier or "unknown"
                self.observations.append(
                    Observe(
                        metric=Metric.RESTORE_SECONDS, value=pod.agent.restore_seconds, labels={"tier": tier}
                    )
                )
        detected = self.r.failure_detected_at
        if detected is None:
            return
        self.observations.append(
            Observe(metric=Metric.RECOVERY_SECONDS, value=(self.now - detected).total_seconds())
        )
        restored = self.m.restore.step if self.m.restore is not None else 0
        if self.r.failure_step is not None:
            self.observations.append(
                Observe(metric=Metric.STEPS_LOST, value=max(self.r.failure_step - restored, 0))
            )
        self.new_r = self.new_r.model_copy(update={"failure_detected_at": None, "failure_step": None})
        self.events.append(
            Event(
                reason=Reason.RECOVERED,
                message=f"training resumed in generation {self.m.generation} "
                f"after {(self.now - detected).total_seconds():.1f}s",
            )
        )

    # ------------------------------------------------------------------ generation changes
    def hold_generation(self) -> None:
        """Nobody trains: pods that leave go now; start when enough run."""
        running = [p for p in self.keep if self.candidate(p)]
        why = "suspended" if self.spec.run_policy.suspend else "leaves the job (held)"
        self.deletes.extend(DeletePod(name=p.name, reason=why) for p in self.leaving)
        if self.spec.run_policy.suspend:
            self.phase = Phase.SUSPENDED
            return
        if len(running) >= self.spec.replicas.min and self.gang_ready():
            if self.r.started_at is None:
                reason = "Start"
            else:
                reason = "Resume" if self.r.rescale_reason == "Suspend" else "CapacityRestored"
            self.transition(reason)
            return
        enough = len(self.keep) + self.creating >= self.spec.replicas.min
        self.phase = Phase.STARTING if enough else Phase.PENDING

    def transition(self, reason: str) -> None:
        """Write the next generation from the pods that run now, or Hold when they are too few."""
        running = [p for p in self.keep if self.candidate(p)]
        pending = [p for p in self.keep if not self.facts.running(p)]
        minimum = self.spec.replicas.min
        if self.spec.run_policy.suspend:
            self.write_generation(MembershipPhase.HOLD, [], reason="Suspend")
            self.phase = Phase.SUSPENDED
            self.deletes.extend(DeletePod(name=p.name, reason="suspended") for p in self.leaving)
            return
        if len(running) >= minimum and self.gang_ready():
            self.write_generation(MembershipPhase.RUN, running, reason=reason)
            self.deletes.extend(
                DeletePod(name=p.name, reason=f"leaves the job ({reason})") for p in self.leaving
            )
            self.phase = Phase.RESTORING if self.new_m.restore is not None else Phase.STARTING
            return
        if len(running) + len(pending) + self.creating < minimum:
            self.deletes.extend(
                DeletePod(name=p.name, reason=f"leaves the job ({reason})") for p in self.leaving
            )
            if self.m.phase is not MembershipPhase.HOLD or self.m.members:
                self.write_generation(MembershipPhase.HOLD, [], reason=reason)
                self.events.append(
                    Event(
                        reason=Reason.INSUFFICIENT_CAPACITY,
                        message=f"{len(running)} worker(s) left, replicas.min is {minimum}: "
                        "holding until capacity returns",
                        warning=True,
                    )
                )
            self.phase = Phase.PENDING
            return
        self.phase = Phase.RESCALING

    def write_generation(self, phase: MembershipPhase, pods: list[PodView], *, reason: str) -> None:
        restore = restore_point(self.ckpts, self.job.restore_from)
        self.new_m = next_membership(
            self.m, phase, pods, job_uid=self.job.uid, nproc=self.spec.nproc_per_pod, restore=restore
        )
        generation = self.new_m.generation
        first = self.r.started_at is None
        self.new_r = self.new_r.model_copy(
            update={
                "restarts": self.new_r.restarts + (0 if first else 1),
                "rescale_reason": reason,
                "last_rescale_at": self.now,
                "started_at": self.r.started_at or (self.now if phase is MembershipPhase.RUN else None),
            }
        )
        self.observations.append(Observe(metric=Metric.RESCALES, labels={"reason": reason}))
        source = f", restoring {restore.checkpoint}" if restore is not None else ""
        self.events.append(
            Event(
                reason=Reason.RESCALED if phase is MembershipPhase.RUN else "Held",
                message=f"generation {generation} ({phase}): world size {self.m.world_size} -> "
                f"{self.new_m.world_size} ({reason}){source}",
            )
        )

    def finish(self, outcome: str, reason: str, message: str) -> None:
        self.new_m = self.m.model_copy(update={"phase": MembershipPhase.DONE, "checkpoint_request": None})
        self.new_r = self.new_r.model_copy(
            update={"outcome": outcome, "outcome_reason": reason, "outcome_message": message}
        )
        self.phase = Phase(outcome)
        self.completion = self.now
        self.conditions = set_condition(
            self.conditions, type_=outcome, status=True, reason=reason, message=message, now=self.now
        )
        self.events.append(
            Event(reason=reason, message=f"job {outcome.lower()}: {message}", warning=outcome != "Succeeded")
        )

    # ------------------------------------------------------------------ checkpoints
    def record_commits(self) -> None:
        found = commits.record(self.job, list(self.pods.values()), self.ckpts)
        self.ckpts = list(found.checkpoints)
        self.creates.extend(found.creates)
        self.creates.extend(found.marks)
        self.deletes.extend(found.deletes)
        self.events.extend(found.events)
        self.observations.extend(found.observations)

    # ------------------------------------------------------------------ output
    def collect(self) -> tuple[Action, ...]:
        actions: list[Action] = list(self.creates)
        if self.new_m != self.m or self.new_r != self.r or self.job.membership is None:
            actions.append(
                WriteMembership(
                    membership=self.new_m, record=self.new_r, expected_version=self.job.membership_version
                )
            )
        actions.extend(self.deletes)
        status = self.status()
        if changed(self.job.status, status):
            actions.append(PatchStatus(status=status_body(status)))
        return (*actions, *self.events, *self.observations)

    def status(self) -> TrainingJobStatus:
        return build_status(
            previous=self.job.status,
            membership=self.new_m,
            record=self.new_r,
            phase=self.phase,
            conditions=self.conditions,
            pods=list(self.pods.values()),
            checkpoints=self.ckpts,
            completion=self.completion,
            now=self.now,
            create_failure=self.job.create_failure,
        )


__all__ = ["OperatorRecord", "plan"]
