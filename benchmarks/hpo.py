"""Checkpoint-guided hyperparameter search on gpt_tiny: random, TPE, TPE + median pruning and the
weight-guided sampler (FMS) with its forecast pruner, the same budget of trials, several seeds.

Tunes AdamW's learning rate and weight decay. Every trial forks from one shared warm-start state
(gpt_tiny trained `WARM_STEPS` steps at the default learning rate) and trains `BUDGET` more steps;
every `EVERY` steps it "commits a checkpoint": the validation loss and the permutation-invariant
embedding of its weights go to the sampler/pruner exactly as `KubeTrialRunner` hands them over. The
objective is the validation loss (held-out last 10% of the corpus) at the end of the budget.

Trials run in-process through the same `TrialRunner` interface as TrainingJobs do: 4 methods x 5 seeds
x N trials as TrainingJobs on localcluster would take hours on this 2-core box (each pod starts Python,
torch and the agent). The search code (`elastra.hpo.search.run_method`) is the one `elastra hpo run`
uses. Warm-start savings are measured by also training, once per seed, the same hyperparameters cold
(from the random init, `WARM_STEPS + BUDGET` steps) and comparing wall time and validation loss.

Writes benchmarks/results/hpo.json and hpo.png; prints the markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
DOCS = REPO / "docs" / "benchmarks.md"
sys.path.insert(0, str(REPO / "examples" / "gpt_tiny"))

import optuna  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from model import GPT, GPTConfig, load_corpus  # noqa: E402

from elastra.hpo.embedding import weight_embedding  # noqa: E402
from elastra.hpo.search import MethodResult, plot, run_method  # noqa: E402
from elastra.hpo.spec import HpoSpec, Method  # noqa: E402
from elastra.hpo.trial import Observation, Observe, TrialOutcome, TrialRequest  # noqa: E402

SEEDS = tuple(range(int(os.environ.get("HPO_BENCH_SEEDS", "5"))))
TRIALS = int(os.environ.get("HPO_BENCH_TRIALS", "10"))
TIMING_REPEATS = 3
WARM_STEPS, BUDGET, EVERY = 30, 30, 10
BATCH, BLOCK = 16, 32
METHODS = (Method.RANDOM, Method.TPE, Method.TPE_MEDIAN, Method.WEIGHT_GUIDED)


class Data:
    """The corpus as token ids, split 90/10 into train and validation."""

    def __init__(self) -> None:
        text = load_corpus()
        self.vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(self.vocab)}
        ids = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        cut = int(len(ids) * 0.9)
        self.train, self.val = ids[:cut], ids[cut:]

    def batch(
        self, ids: torch.Tensor, g: torch.Generator, n: int = BATCH
    ) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(ids) - BLOCK - 1, (n,), generator=g)
        x = torch.stack([ids[s : s + BLOCK] for s in starts.tolist()])
        y = torch.stack([ids[s + 1 : s + BLOCK + 1] for s in starts.tolist()])
        return x, y


class InProcessRunner:
    """Trains gpt_tiny in this process: the `TrialRunner` protocol, as `KubeTrialRunner` offers it."""

    def __init__(self, data: Data, seed: int, warm: dict[str, Any] | None, warm_step: int) -> None:
        self.data, self.seed, self.warm, self.warm_step = data, seed, warm, warm_step
        g = torch.Generator().manual_seed(10_000 + seed)
        self.val_batches = [data.batch(data.val, g, 32) for _ in range(4)]

    def model(self) -> GPT:
        torch.manual_seed(1234)
        m = GPT(GPTConfig(vocab_size=len(self.data.vocab), block_size=BLOCK))
        if self.warm is not None:
            m.load_state_dict(self.warm)
        return m

    @torch.no_grad()
    def val_loss(self, m: GPT) -> float:
        m.eval()
        losses = [float(F.cross_entropy(m(x).flatten(0, 1), y.flatten())) for x, y in self.val_batches]
        m.train()
        return sum(losses) / len(losses)

    def train(self, m: GPT, lr: float, wd: float, steps: int, observe: Observe | None = None) -> bool:
        opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=wd)
        g = torch.Generator().manual_seed(self.seed * 1_000 + self.warm_step)  # same data for every trial
        for step in range(1, steps + 1):
            x, y = self.data.batch(self.data.train, g)
            loss = F.cross_entropy(m(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if observe is not None and step % EVERY == 0:
                emb = tuple(weight_embedding(dict(m.state_dict())))
                if observe(Observation(step=step, loss=self.val_loss(m), embedding=emb)):
                    return True
        return False

    def run(self, request: TrialRequest, observe: Observe) -> TrialOutcome:
        t0 = time.perf_counter()
        m = self.model()
        observe(Observation(step=0, loss=None, embedding=tuple(weight_embedding(dict(m.state_dict())))))
        pruned = self.train(
            m, request.params["lr"], request.params["weight_decay"], request.budget_steps, observe
        )
        loss = self.val_loss(m)
        return TrialOutcome(
            loss=loss, pruned=pruned, steps=request.budget_steps, seconds=time.perf_counter() - t0
        )

    def finish(self, *, best: str | None, trials: list[str]) -> None:
        """Nothing to clean up in-process."""


def spec(seed: int) -> HpoSpec:
    template = {"apiVersion": "elastra.dev/v1alpha1", "kind": "TrainingJob", "spec": {"template": {}}}
    return HpoSpec.model_validate(
        {
            "study": f"bench-{seed}",
            "template": template,
            "params": {
                "lr": {"low": 1e-4, "high": 3e-2, "log": True, "arg": "--lr"},
                "weight_decay": {"low": 1e-4, "high": 0.5, "log": True, "arg": "--weight-decay"},
            },
            "budget": {"steps": BUDGET},
            "trials": TRIALS,
            "seed": seed,
            "methods": [str(m) for m in METHODS],
        }
    )


def machine() -> dict[str, Any]:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
    }


def section(results: dict[str, Any]) -> str:
    """The docs/benchmarks.md section of one run: setup, machine, the table, the warm-start figures."""
    trials, seeds = results["trials"], results["seeds"]
    start, end = results["machine_start"], results["machine_end"]
    lines = [
        f"Measured {results['date']} on {start['cpu']}, {start['cores']} cores, Python {start['python']}, "
        f"torch {start['torch']}, optuna {start['optuna']}. The box was shared with other work: 1/5/15-min "
        f"load average {' / '.join(map(str, start['loadavg']))} at the start and "
        f"{' / '.join(map(str, end['loadavg']))} at the end, so wall times are noisy.",
        "",
        f"gpt_tiny, AdamW learning rate in [1e-4, 3e-2] and weight decay in [1e-4, 0.5] (both log), "
        f"{trials} trials per method and seed, each {results['budget']} steps from a shared "
        f"{results['warm_steps']}-step warm start, checkpoint (loss + weight embedding) every "
        f"{results['every']} steps; objective: validation loss at the end of the budget. Trials run "
        "in-process through the `TrialRunner` interface (see benchmarks/hpo.py and docs/hpo.md).",
        "",
        f"| method | best val loss after {trials} trials, mean ± sd over {len(seeds)} seeds | per seed "
        "| trials pruned (all seeds) | search wall s (all seeds) |",
        "|---|---|---|---|---|",
    ]
    means = {}
    for method, r in results["methods"].items():
        bests = r["best"]
        sd = statistics.stdev(bests) if len(bests) > 1 else 0.0
        means[method] = (statistics.mean(bests), sd)
        lines.append(
            f"| {method} | {means[method][0]:.4f} ± {sd:.4f} | {' / '.join(f'{b:.4f}' for b in bests)} "
            f"| {sum(r['pruned'])} | {sum(r['seconds']):.0f} |"
        )
    ranked = sorted(means.items(), key=lambda kv: kv[1][0])
    fastest = min(results["methods"], key=lambda m: sum(results["methods"][m]["seconds"]))
    (win, (wm, wsd)), (second, (sm, ssd)) = ranked[0], ranked[1]
    clear = sm - wm > max(wsd, ssd)
    lines += [
        "",
        f"Lowest mean: **{win}** ({wm:.4f}), then {second} ({sm:.4f}); the gap is "
        + ("larger" if clear else "smaller")
        + f" than one standard deviation, so with {len(seeds)} seeds x {trials} trials this is "
        + ("a clear" if clear else "no clear")
        + f" win. Least search wall time: {fastest} (pruned trials stop early); weight-guided's includes "
        "fitting its GP before each trial and at each checkpoint the pruner judges.",
    ]
    w = results["warm_start"]
    cold_steps, warm_steps = results["warm_steps"] + results["budget"], results["budget"]
    lines += [
        "",
        f"Warm start (default hyperparameters; per seed the median of {TIMING_REPEATS} alternated runs, "
        f"then the mean over seeds): a cold trial ({cold_steps} steps from the "
        f"random init) took {w['cold_seconds']:.2f} s, a warm trial ({warm_steps} steps from the shared "
        f"checkpoint) {w['warm_seconds']:.2f} s: **{w['saved_per_trial']:.2f} s saved per trial** "
        f"({1 - warm_steps / cold_steps:.0%} of its steps). Paying the {results['warm_steps']}-step base run "
        f"({w['base_seconds']:.2f} s) once, a {trials}-trial study trains for "
        f"{w['study_fraction']:.0%} of the cold study's time. Final validation loss at the same "
        f"hyperparameters: cold {w['cold_val']:.4f}, warm {w['warm_val']:.4f}.",
        "",
        "![best validation loss so far against trials](../benchmarks/results/hpo.png)",
    ]
    return "\n".join(lines) + "\n"


def write_docs(results: dict[str, Any]) -> None:
    """Rewrite the `hpo` section of docs/benchmarks.md (only between its markers)."""
    import _report

    DOCS.write_text(_report.replace_section(DOCS.read_text(), "hpo", section(results)))


def main() -> int:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = Data()
    out: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine_start": machine(),
    }
    out.update(
        {"trials": TRIALS, "warm_steps": WARM_STEPS, "budget": BUDGET, "every": EVERY, "seeds": list(SEEDS)}
    )
    methods: dict[str, dict[str, list[Any]]] = {
        str(m): {"best": [], "pruned": [], "seconds": [], "curve": []} for m in METHODS
    }
    warm: dict[str, list[float]] = {k: [] for k in ("base", "cold", "warm", "cold_val", "warm_val")}
    per_seed_results: list[MethodResult] = []
    for seed in SEEDS:
        base = InProcessRunner(data, seed, None, 0)
        m = base.model()
        base.train(m, 3e-3, 0.01, WARM_STEPS)
        state = copy.deepcopy(m.state_dict())
        runner = InProcessRunner(data, seed, state, WARM_STEPS)
        for method in METHODS:
            r = run_method(spec(seed), method, runner, seed=seed, say=lambda line: print(line, flush=True))
            methods[str(method)]["best"].append(r.best)
            methods[str(method)]["pruned"].append(r.pruned)
            methods[str(method)]["seconds"].append(r.seconds)
            methods[str(method)]["curve"].append(r.best_so_far)
            if seed == SEEDS[0]:
                per_seed_results.append(r)
        # Warm vs cold at the default hyperparameters: same steps reached, wall time and val loss.
        # Alternated and repeated (median) so that a load spike hits both alike; the base run is
        # timed the same way (WARM_STEPS steps from the random init).
        cold_runner = InProcessRunner(data, seed, None, 0)
        times: dict[str, list[float]] = {"base": [], "cold": [], "warm": []}
        for _ in range(TIMING_REPEATS):
            for kind, r, steps in (
                ("base", cold_runner, WARM_STEPS),
                ("cold", cold_runner, WARM_STEPS + BUDGET),
                ("warm", runner, BUDGET),
            ):
                model = r.model()
                t0 = time.perf_counter()
                r.train(model, 3e-3, 0.01, steps)
                times[kind].append(time.perf_counter() - t0)
                if kind != "base":
                    warm[f"{kind}_val"].append(runner.val_loss(model))
        for kind, values in times.items():
            warm[kind].append(statistics.median(values))
    mean = {k: statistics.mean(v) for k, v in warm.items()}
    out["warm_start"] = {
        "base_seconds": mean["base"],
        "cold_seconds": mean["cold"],
        "warm_seconds": mean["warm"],
        "saved_per_trial": mean["cold"] - mean["warm"],
        "study_fraction": (mean["base"] + TRIALS * mean["warm"]) / (TRIALS * mean["cold"]),
        "cold_val": mean["cold_val"],
        "warm_val": mean["warm_val"],
    }
    out["methods"] = methods
    out["machine_end"] = machine()
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "hpo.json").write_text(json.dumps(out, indent=2) + "\n")
    avg = []
    for method in METHODS:
        curves = methods[str(method)]["curve"]
        mean_curve = [statistics.mean(c[i] for c in curves) for i in range(min(len(c) for c in curves))]
        avg.append(
            MethodResult(
                method=method, best_so_far=mean_curve, best=min(mean_curve) if mean_curve else math.inf
            )
        )
    plot(
        avg,
        results_dir / "hpo.png",
        title=f"gpt_tiny lr/wd: best val loss vs trials (mean of {len(SEEDS)} seeds)",
    )
    write_docs(out)
    print(section(out))
    print(f"machine at start {out['machine_start']}, at end {out['machine_end']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
