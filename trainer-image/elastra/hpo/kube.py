"""`KubeTrialRunner`: each trial is a TrainingJob on a cluster (localcluster or a real one).

A trial's progress is read from what the operator already records: one Checkpoint object per commit,
carrying the step, the URI and the trainer's loss (`spec.loss`). Each new Checkpoint's weights are read
with the Elastra reader and embedded; a pruned trial's TrainingJob is deleted (its pods and, through
ownership, its Checkpoints and their storage go with it). Everything read from the API is checked: a
Checkpoint of another job, a malformed spec or unreadable weights is skipped and logged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydantic import ValidationError

from elastra.api.checkpoint import CheckpointSpec
from elastra.hpo.embedding import read_weights, weight_embedding
from elastra.hpo.spec import CleanupPolicy, HpoSpec
from elastra.hpo.trial import (
    BEST_LABEL,
    Observation,
    Observe,
    TrialOutcome,
    TrialRequest,
    base_job,
    trial_job,
)
from elastra.storage import S3Options

log = logging.getLogger(__name__)
GROUP, VERSION = "elastra.dev", "v1alpha1"
JOB_LABEL = "elastra.dev/job"
FINAL_GRACE_SECONDS = 30.0
"""How long after a trial Succeeded its final step's Checkpoint may still appear."""


class TrialFailed(RuntimeError):
    """The trial's TrainingJob Failed, timed out, or finished without reporting a loss."""


class KubeTrialRunner:
    """Runs trials as TrainingJobs through a kubernetes `ApiClient`."""

    def __init__(self, spec: HpoSpec, api_client: Any, *, poll_seconds: float = 1.0) -> None:
        from kubernetes import client

        self.spec = spec
        self.custom = client.CustomObjectsApi(api_client)
        self.poll_seconds = poll_seconds
        self._start: tuple[int, tuple[float, ...] | None] | None = None
        self._lock = threading.Lock()
        self.warm_checkpoint: str | None = None
        """The Checkpoint trials fork from, once known."""

    # ------------------------------------------------------------------ reads
    def _checkpoint(self, name: str) -> CheckpointSpec:
        raw = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.spec.namespace, "checkpoints", name
        )
        return CheckpointSpec.model_validate(raw.get("spec") or {})

    def _checkpoints(self, job: str) -> list[tuple[str, CheckpointSpec]]:
        raw = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.spec.namespace, "checkpoints", label_selector=f"{JOB_LABEL}={job}"
        )
        out = []
        for item in raw.get("items") or []:
            try:
                spec = CheckpointSpec.model_validate(item.get("spec") or {})
            except ValidationError as exc:
                log.warning("skipping malformed Checkpoint %s: %s", item.get("metadata", {}).get("name"), exc)
                continue
            if spec.job != job or item.get("metadata", {}).get("deletionTimestamp"):
                continue
            out.append((str(item["metadata"]["name"]), spec))
        return sorted(out, key=lambda c: c[1].step)

    def _embed(self, spec: CheckpointSpec) -> tuple[float, ...] | None:
        if spec.uri.startswith("s3://"):
            return None if spec.storage is None else self._embed_uri(spec.uri, spec.storage.endpoint)
        return self._embed_uri(spec.uri, None)

    def _embed_uri(self, uri: str, endpoint: str | None) -> tuple[float, ...] | None:
        try:
            from elastra.hpo.embedding import read_weights_with

            weights = (
                read_weights_with(uri, S3Options(endpoint_url=endpoint)) if endpoint else read_weights(uri)
            )
            return tuple(weight_embedding(weights))
        except Exception as exc:  # unreadable weights: the trial goes on without this embedding
            log.warning("could not embed the weights at %s: %s", uri, exc)
            return None

    def start(self) -> tuple[int, tuple[float, ...] | None]:
        """The step trials start at and the embedding of the weights they start from (warm start);
        with `warmStart.steps`, runs the base job first (once per runner, under a lock)."""
        with self._lock:
            if self._start is None:
                warm = self.spec.warm_start
                if warm is None:
                    self._start = (0, None)
                else:
                    name = warm.checkpoint if warm.checkpoint is not None else self._run_base(warm.steps or 1)
                    self.warm_checkpoint = name
                    ck = self._checkpoint(name)
                    self._start = (ck.step, self._embed(ck))
            return self._start

    def _run_base(self, steps: int) -> str:
        """Run `<study>-base` for `steps` steps (reused if it exists); the name of its final Checkpoint."""
        from kubernetes.client.exceptions import ApiException

        body = base_job(self.spec, steps)
        name = body["metadata"]["name"]
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, self.spec.namespace, "trainingjobs", body
            )
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + self.spec.trial_timeout_seconds
        while (phase := self._phase(name)) != "Succeeded":
            if phase == "Failed" or time.monotonic() > deadline:
                raise TrialFailed(f"the warm-start job {name} did not succeed ({phase})")
            time.sleep(self.poll_seconds)
        checkpoints = self._checkpoints(name)
        if not checkpoints or checkpoints[-1][1].step != steps:
            raise TrialFailed(f"the warm-start job {name} left no Checkpoint at step {steps}")
        return checkpoints[-1][0]

    # ------------------------------------------------------------------ a trial
    def run(self, request: TrialRequest, observe: Observe) -> TrialOutcome:
        start_step, start_embedding = self.start()
        body = trial_job(self.spec, request, start_step=start_step, warm_checkpoint=self.warm_checkpoint)
        t0 = time.monotonic()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.spec.namespace, "trainingjobs", body)
        if start_embedding is not None:
            observe(Observation(step=0, loss=None, embedding=start_embedding))
        seen: set[int] = set()
        last: tuple[str, CheckpointSpec] | None = None
        deadline = t0 + self.spec.trial_timeout_seconds
        succeeded_at: float | None = None
        while True:
            phase = self._phase(request.name)
            for name, ck in self._checkpoints(request.name):
                if ck.step in seen or ck.step <= start_step:
                    continue
                seen.add(ck.step)
                last = (name, ck)
                obs = Observation(step=ck.step - start_step, loss=ck.loss, embedding=self._embed(ck))
                if observe(obs) and phase != "Succeeded":
                    self.delete(request.name)
                    return TrialOutcome(
                        loss=ck.loss,
                        pruned=True,
                        steps=obs.step,
                        seconds=time.monotonic() - t0,
                        checkpoint=name,
                    )
            final_seen = last is not None and last[1].step >= start_step + request.budget_steps
            if phase == "Succeeded" and not final_seen:
                succeeded_at = succeeded_at or time.monotonic()
                if time.monotonic() < succeeded_at + FINAL_GRACE_SECONDS:
                    time.sleep(self.poll_seconds)  # the final commit's Checkpoint may be on its way
                    continue
            if phase == "Succeeded":
                if last is None or last[1].loss is None:
                    raise TrialFailed(f"{request.name} Succeeded without a Checkpoint carrying a loss")
                return TrialOutcome(
                    loss=last[1].loss,
                    pruned=False,
                    steps=last[1].step - start_step,
                    seconds=time.monotonic() - t0,
                    checkpoint=last[0],
                )
            if phase == "Failed":
                raise TrialFailed(f"{request.name} Failed")
            if time.monotonic() > deadline:
                self.delete(request.name)
                raise TrialFailed(f"{request.name} did not finish in {self.spec.trial_timeout_seconds:g} s")
            time.sleep(self.poll_seconds)

    def _phase(self, name: str) -> str | None:
        job = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.spec.namespace, "trainingjobs", name
        )
        phase = (job.get("status") or {}).get("phase")
        return phase if isinstance(phase, str) else None

    def delete(self, name: str) -> None:
        """Delete a trial's TrainingJob (pods, Checkpoints and their storage follow by ownership)."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, self.spec.namespace, "trainingjobs", name, propagation_policy="Background"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ------------------------------------------------------------------ cleanup
    def finish(self, *, best: str | None, trials: list[str]) -> None:
        """`keep-best`: delete every other trial, and the best's older Checkpoints; always label the
        best trial's newest Checkpoint (and its TrainingJob) `elastra.dev/hpo-best=<study>`."""
        if self.spec.cleanup.policy is CleanupPolicy.KEEP_BEST:
            for name in trials:
                if name != best:
                    self.delete(name)
        if best is None:
            return
        checkpoints = self._checkpoints(best)
        if not checkpoints:
            return
        label = {"metadata": {"labels": {BEST_LABEL: self.spec.study}}}
        ns = self.spec.namespace
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, "checkpoints", checkpoints[-1][0], label
        )
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", best, label)
        if self.spec.cleanup.policy is CleanupPolicy.KEEP_BEST:
            for name, _ in checkpoints[:-1]:
                self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "checkpoints", name)
