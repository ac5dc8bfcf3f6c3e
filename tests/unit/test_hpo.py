"""elastra.hpo: the weight embedding, the trial manifest, the spec's edge checks, the FMS sampler and
the forecast pruner (on synthetic studies whose answers are known)."""

from __future__ import annotations

import copy
import math
from typing import Any

import optuna
import pytest
import torch
from pydantic import ValidationError

from elastra.hpo.embedding import DIM, weight_embedding
from elastra.hpo.sampler import (
    BUDGET_KEY,
    ForecastPruner,
    WeightGuidedSampler,
    rows_of,
    trial_embeddings,
    weights_key,
)
from elastra.hpo.spec import HpoSpec
from elastra.hpo.trial import TrialRequest, trial_job

optuna.logging.set_verbosity(optuna.logging.WARNING)


def mlp(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model.fc1.weight": torch.randn(16, 8, generator=g),
        "model.fc1.bias": torch.randn(16, generator=g),
        "model.fc2.weight": torch.randn(4, 16, generator=g),
        "model.fc2.bias": torch.randn(4, generator=g),
    }


def forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ w["model.fc1.weight"].T + w["model.fc1.bias"])
    return h @ w["model.fc2.weight"].T + w["model.fc2.bias"]


def test_embedding_is_invariant_to_hidden_neuron_permutations() -> None:
    w = mlp(0)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(1))
    p = dict(w)
    p["model.fc1.weight"], p["model.fc1.bias"] = w["model.fc1.weight"][perm], w["model.fc1.bias"][perm]
    p["model.fc2.weight"] = w["model.fc2.weight"][:, perm]
    x = torch.randn(5, 8)
    assert torch.allclose(forward(w, x), forward(p, x), atol=1e-5), "the same function"
    assert weight_embedding(p) == pytest.approx(weight_embedding(w), rel=1e-9, abs=1e-12)
    assert len(weight_embedding(w)) == DIM


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda w: {k: v * 2 for k, v in w.items()}, id="scaled"),
        pytest.param(lambda w: mlp(7), id="other-weights"),
        pytest.param(
            lambda w: {**w, "model.fc1.weight": w["model.fc1.weight"] * (torch.arange(8) + 1.0)},
            id="col-skew",
        ),
    ],
)
def test_embedding_tells_different_weights_apart(change: Any) -> None:
    assert weight_embedding(change(mlp(0))) != pytest.approx(weight_embedding(mlp(0)), rel=1e-3)


@pytest.mark.parametrize(
    "tensors",
    [
        pytest.param({}, id="empty"),
        pytest.param({"b": torch.zeros(3)}, id="no-matrix"),
        pytest.param({"w": torch.full((2, 2), float("nan"))}, id="nan"),
    ],
)
def test_embedding_rejects_what_it_cannot_summarise(tensors: dict[str, torch.Tensor]) -> None:
    with pytest.raises(ValueError):
        weight_embedding(tensors)


TEMPLATE: dict[str, Any] = {
    "apiVersion": "elastra.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "gpt-tiny", "namespace": "x", "labels": {"team": "a"}},
    "spec": {
        "replicas": {"min": 1, "max": 1},
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "trainer",
                        "command": ["python", "train.py", "--steps", "400", "--lr=0.1"],
                        "env": [{"name": "WD", "value": "9"}, {"name": "KEEP", "value": "1"}],
                    }
                ]
            }
        },
        "checkpoint": {"everySteps": 5, "directory": {"path": "/ck"}, "restoreFrom": "old"},
    },
}


def spec(**over: Any) -> HpoSpec:
    raw: dict[str, Any] = {
        "study": "s",
        "template": copy.deepcopy(TEMPLATE),
        "params": {
            "lr": {"low": 1e-4, "high": 1e-1, "log": True, "arg": "--lr"},
            "wd": {"low": 0.0, "high": 0.5, "env": "WD"},
            "beta": {"low": 0.8, "high": 0.99, "arg": "--beta"},
        },
        "budget": {"steps": 20},
    }
    raw.update(over)
    return HpoSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("warm", "start", "restore", "steps"),
    [
        pytest.param(None, 0, None, "20", id="fresh"),
        pytest.param({"checkpoint": "base-step-10"}, 10, "base-step-10", "30", id="warm-start"),
    ],
)
def test_trial_job_sets_hyperparameters_budget_and_warm_start(
    warm: dict[str, str] | None, start: int, restore: str | None, steps: str
) -> None:
    s = spec(warmStart=warm)
    req = TrialRequest(
        name="s-tpe-3", number=3, params={"lr": 0.01, "wd": 0.25, "beta": 0.9}, budget_steps=20
    )
    job = trial_job(s, req, start_step=start)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "train.py", "--steps", steps, "--lr=0.01", "--beta", "0.9"]
    assert c["env"] == [{"name": "KEEP", "value": "1"}, {"name": "WD", "value": "0.25"}]
    assert job["spec"]["checkpoint"].get("restoreFrom") == restore
    assert job["metadata"]["name"] == "s-tpe-3" and job["metadata"]["labels"]["team"] == "a"
    assert job["metadata"]["labels"]["elastra.dev/hpo-trial"] == "3"
    assert s.template == TEMPLATE, "the template is not modified"


def test_base_job_runs_the_template_as_written_for_the_warm_start() -> None:
    from elastra.hpo.trial import base_job

    job = base_job(spec(warmStart={"steps": 7}), 7)
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert job["metadata"]["name"] == "s-base"
    assert c["command"] == ["python", "train.py", "--steps", "7", "--lr=0.1"], "the template's own lr"
    assert "restoreFrom" not in job["spec"]["checkpoint"]
    warm = trial_job(
        spec(warmStart={"steps": 7}),
        TrialRequest(name="t", number=0, params={"lr": 0.01, "wd": 0.1, "beta": 0.9}, budget_steps=3),
        start_step=7,
        warm_checkpoint="s-base-step-7",
    )
    assert warm["spec"]["checkpoint"]["restoreFrom"] == "s-base-step-7"


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"params": {"lr": {"low": 1.0, "high": 0.1, "arg": "--lr"}}}, id="low-above-high"),
        pytest.param(
            {"params": {"lr": {"low": 0.0, "high": 1.0, "log": True, "arg": "--lr"}}}, id="log-of-zero"
        ),
        pytest.param({"params": {"lr": {"low": 0, "high": 1, "arg": "--lr", "env": "LR"}}}, id="arg-and-env"),
        pytest.param({"params": {"lr": {"low": 0, "high": 1, "arg": "; rm -rf /"}}}, id="not-a-flag"),
        pytest.param({"params": {"lr": {"low": 0, "high": float("inf"), "arg": "--lr"}}}, id="infinite"),
        pytest.param({"template": {"kind": "Pod", "spec": {}}}, id="not-a-trainingjob"),
        pytest.param({"study": "Bad_Name"}, id="bad-study-name"),
        pytest.param({"budget": {"steps": 0}}, id="no-budget"),
        pytest.param({"warmStart": {"checkpoint": "../x"}}, id="bad-checkpoint-name"),
        pytest.param({"warmStart": {"checkpoint": "a", "steps": 3}}, id="warm-start-twice"),
        pytest.param({"warmStart": {}}, id="warm-start-from-nothing"),
        pytest.param({"methods": ["tpe", "tpe"]}, id="duplicate-method"),
        pytest.param({"surprise": 1}, id="unknown-field"),
    ],
)
def test_spec_rejects_hostile_input(over: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(**over)


# ---------------------------------------------------------------- sampler and pruner on known answers
OPT = 0.3


def synthetic_loss(u: float) -> float:
    return (u - OPT) ** 2


def embedding_after(u: float, frac: float) -> list[float]:
    """Weights whose statistics drift towards the final loss as training goes on (as real ones do)."""
    return [1.0 + frac * synthetic_loss(u) * 10, 0.5 - frac * u, 0.1 * frac]


def add_trial(study: optuna.Study, u: float, *, steps: tuple[int, ...] = (0, 5, 10)) -> None:
    lr = 10 ** (-4 + 3 * u)
    attrs: dict[str, Any] = {BUDGET_KEY: 10}
    attrs.update({weights_key(s): embedding_after(u, s / 10) for s in steps})
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": lr},
            distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
            value=synthetic_loss(u),
            user_attrs=attrs,
        )
    )


def test_weight_guided_sampler_moves_towards_the_optimum() -> None:
    study = optuna.create_study(sampler=WeightGuidedSampler(seed=0, n_startup_trials=4))
    for u in (0.05, 0.5, 0.8, 0.95):
        add_trial(study, u)
    picks = []
    for _ in range(4):
        trial = study.ask()
        u = (math.log10(trial.suggest_float("lr", 1e-4, 1e-1, log=True)) + 4) / 3
        picks.append(u)
        trial.set_user_attr(BUDGET_KEY, 10)
        for s in (0, 5, 10):  # what a runner records while the trial trains
            trial.set_user_attr(weights_key(s), embedding_after(u, s / 10))
        study.tell(trial, synthetic_loss(u))
    assert all(0.0 <= u <= 1.0 for u in picks)
    assert min(abs(u - OPT) for u in picks) < 0.1, picks


def test_rows_ignore_hostile_user_attributes() -> None:
    study = optuna.create_study()
    add_trial(study, 0.2)
    t = study.trials[0]
    t.user_attrs[weights_key(3)] = [float("nan"), 1.0, 2.0]
    t.user_attrs[weights_key(4)] = "not a list"
    t.user_attrs[WEIGHTS := "elastra.w.x"] = [1.0]
    assert sorted(trial_embeddings(t)) == [0, 5, 10], WEIGHTS
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    assert len(rows_of([t], dist)) == 3


@pytest.mark.parametrize(
    ("u", "pruned"),
    [
        pytest.param(0.95, True, id="far-from-optimum-pruned"),
        pytest.param(0.3, False, id="near-optimum-kept"),
    ],
)
def test_forecast_pruner_stops_trials_whose_forecast_is_poor(u: float, pruned: bool) -> None:
    study = optuna.create_study(pruner=ForecastPruner(n_min_trials=3, z=1.0))
    for v in (0.0, 0.25, 0.35, 0.6, 0.7, 1.0):
        add_trial(study, v)
    study.enqueue_trial({"lr": 10 ** (-4 + 3 * u)})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr(BUDGET_KEY, 10)
    trial.set_user_attr(weights_key(5), embedding_after(u, 0.5))  # its weights at half its budget
    trial.report(synthetic_loss(u) + 0.01, 5)
    assert trial.should_prune() is pruned


# ---------------------------------------------------------------- the CLI's edges
def test_spec_file_loads_its_template_relative_to_itself(tmp_path: Any) -> None:
    import yaml

    from elastra.hpo.spec import load

    (tmp_path / "job.yaml").write_text(yaml.safe_dump(TEMPLATE))
    (tmp_path / "hpo.yaml").write_text(
        "study: s\ntemplate: job.yaml\nparams: {lr: {low: 0.001, high: 0.1, log: true, arg: --lr}}\n"
        "budget: {steps: 5}\n"
    )
    assert load(tmp_path / "hpo.yaml").template == TEMPLATE


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("- a list\n", id="not-a-mapping"),
        pytest.param(
            "study: s\ntemplate: missing.yaml\nparams: {}\nbudget: {steps: 1}\n", id="missing-template"
        ),
        pytest.param("study: s\ntemplate: {kind: Pod}\nparams: {}\nbudget: {steps: 1}\n", id="invalid"),
        pytest.param("study: [unclosed\n", id="not-yaml"),
    ],
)
def test_hpo_run_rejects_a_bad_spec_before_starting_anything(tmp_path: Any, text: str, capsys: Any) -> None:
    from elastra.cli import main

    (tmp_path / "hpo.yaml").write_text(text)
    assert main(["hpo", "run", str(tmp_path / "hpo.yaml"), "--out", str(tmp_path / "out")]) == 2
    assert "invalid spec" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_best_so_far_plot_is_a_png(tmp_path: Any) -> None:
    from elastra.hpo.search import MethodResult, plot

    results = [
        MethodResult(method=m, best_so_far=[math.inf, 2.0, 1.5], best=1.5) for m in ("tpe", "weight-guided")
    ]
    out = plot(results, tmp_path / "p.png", title="t")  # type: ignore[arg-type]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forecast_pruner_waits_for_enough_finished_trials_with_weights() -> None:
    study = optuna.create_study(pruner=ForecastPruner(n_min_trials=6))
    for u in (0.0, 0.25, 0.35, 0.7, 1.0):  # five with weights: enough to forecast, one short of 6
        add_trial(study, u)
    add_trial(study, 0.6, steps=())  # finished without any checkpointed weights: does not count
    study.enqueue_trial({"lr": 10 ** (-4 + 3 * 0.95)})
    trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    trial.set_user_attr(BUDGET_KEY, 10)
    trial.set_user_attr(weights_key(5), embedding_after(0.95, 0.5))
    trial.report(5.0, 5)
    assert trial.should_prune() is False
