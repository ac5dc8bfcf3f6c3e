"""A small checkpoint-guided search on localcluster: the real operator, pod agents and gpt_tiny.

Four trials of four steps each, two at a time, each a TrainingJob forked from a shared warm-start
Checkpoint; their losses come back on their Checkpoint objects and their weights are read and embedded;
the cleanup policy leaves only the best trial, whose final Checkpoint is labelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import optuna
import pytest
from test_operator_checkpoint_fallback import finished, trainer
from test_operator_harness import GROUP, NS, VERSION, Harness, make_harness  # noqa: F401 (fixture)

from elastra.hpo.kube import KubeTrialRunner
from elastra.hpo.sampler import trial_embeddings
from elastra.hpo.search import run_method
from elastra.hpo.spec import HpoSpec, Method
from elastra.hpo.trial import BEST_LABEL, TrialRequest

pytestmark = pytest.mark.timeout(280)


def test_four_trials_as_trainingjobs_warm_started_pruned_and_cleaned_up(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    checkpoint = {"everySteps": 2, "directory": {"path": str(h.workdir / "ckpt"), "keep": 5}}
    h.create_job("base", replicas={"min": 1, "max": 1}, template=trainer(4, 0.0), checkpoint=checkpoint)
    assert h.wait(finished(h, "base"), 120, "the warm-start job")["phase"] == "Succeeded"
    base = h.checkpoints("base")
    assert base[-1]["spec"]["step"] == 4
    assert all(math.isfinite(c["spec"]["loss"]) for c in base), "each commit carries the step's loss"

    template: dict[str, Any] = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": "template"},
        "spec": {
            "replicas": {"min": 1, "max": 1},
            "template": trainer(100, 0.5),  # commits 1 s apart: each one is reported
            "checkpoint": checkpoint,
            "elastic": {"nodeLossTimeoutSeconds": 1, "checkpointDeadlineSeconds": 30},
        },
    }
    spec = HpoSpec.model_validate(
        {
            "study": "lrwd",
            "namespace": NS,
            "template": template,
            "params": {
                "lr": {"low": 1e-4, "high": 3e-2, "log": True, "arg": "--lr"},
                "weight_decay": {"low": 1e-4, "high": 0.3, "log": True, "arg": "--weight-decay"},
            },
            "budget": {"steps": 4},
            "trials": 4,
            "parallel": 2,
            "warmStart": {"checkpoint": "base-step-4"},
            "methods": ["weight-guided"],
            "trialTimeoutSeconds": 150,
        }
    )
    lines: list[str] = []
    runner = KubeTrialRunner(spec, h.custom.api_client, poll_seconds=0.5)
    result = run_method(spec, Method.WEIGHT_GUIDED, runner, say=lines.append)

    assert len(lines) == 4 and all(line.startswith("[weight-guided] trial") for line in lines), lines
    assert result.best_trial is not None and math.isfinite(result.best), lines
    assert len(result.best_so_far) == 4
    # Every trial forked at step 4 and trained 4 steps: its embeddings are of the warm start (0) and
    # of its own checkpoints 2 and 4 steps later (the pruner may have stopped one after step 2).
    trials = result.trials
    finished_trials = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished_trials) >= 3, lines
    values = {t.value for t in finished_trials}
    assert len(values) == len(finished_trials), f"each trial trained with its own hyperparameters: {lines}"
    for t in trials:
        steps = sorted(trial_embeddings(t))
        assert steps[0] == 0 and len(steps) >= 2 and set(steps) <= {0, 2, 4}, (t.number, steps)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert steps[-1] == 4, (t.number, steps)
    # keep-best: only the best trial's TrainingJob is left, with its final Checkpoint, labelled.
    jobs = h.custom.list_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs")["items"]
    names = sorted(j["metadata"]["name"] for j in jobs if j["metadata"].get("deletionTimestamp") is None)
    assert names == sorted(["base", result.best_trial]), names
    best = h.wait(lambda: (c := h.checkpoints(result.best_trial)) and len(c) == 1 and c, 30, "cleanup")
    assert best[0]["spec"]["step"] == 8 and best[0]["metadata"]["labels"][BEST_LABEL] == "lrwd"
    assert best[0]["spec"]["loss"] == pytest.approx(result.best)
    assert [c["spec"] for c in h.checkpoints("base")] == [c["spec"] for c in base], "the warm start stays"
    job = h.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", result.best_trial)
    pod_cmd = " ".join(job["spec"]["template"]["spec"]["containers"][0]["command"])
    assert "--steps 8" in pod_cmd and "--lr" in pod_cmd and "--weight-decay" in pod_cmd

    # A trial the pruner stops at its first checkpoint: its TrainingJob, pods and Checkpoints go.
    request = TrialRequest(
        name="lrwd-pruned", number=9, params={"lr": 0.03, "weight_decay": 0.3}, budget_steps=4
    )
    seen: list[int] = []
    outcome = runner.run(request, lambda obs: seen.append(obs.step) or obs.step > 0)
    assert outcome.pruned and outcome.steps == 2 and seen == [0, 2], (outcome, seen)

    def gone() -> bool:
        jobs = h.custom.list_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs")["items"]
        alive = [p for p in h.pods("lrwd-pruned") if p.status.phase in ("Pending", "Running")]
        return (
            not alive
            and not h.checkpoints("lrwd-pruned")
            and "lrwd-pruned" not in {j["metadata"]["name"] for j in jobs}
        )

    h.wait(gone, 60, "the pruned trial's job, pods and checkpoints to be deleted")
