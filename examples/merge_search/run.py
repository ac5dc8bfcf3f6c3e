"""Merge-weight search, end to end: a parent, two forked children, and the Pareto front of merges.

1. The parent trains gpt_tiny on the whole corpus (both halves' training text).
2. Two children fork from the parent's newest checkpoint (`--init-from`, what `restoreFrom` does on a
   cluster) and fine-tune, child A on the first half of the corpus, child B on the second.
3. `merge_search` tries weight vectors `(w_a, w_b)`, `w_a + w_b = 1`, for a linear merge of the two
   children (the children themselves first), evaluating each merge on both halves' validation text,
   and returns the Pareto front of (loss on A, loss on B).
4. The merge with the lowest summed loss is written as a checkpoint with `merge`, re-evaluated from
   disk, and the script says plainly whether it beats both children on the summed loss.

Writes `front.png` and `summary.json` into the work directory. `--small` is the size `make test` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from tasks import make_evaluate, split_corpus  # noqa: E402

from elastra.checkpoint import SearchResult, merge, merge_search  # noqa: E402
from elastra.checkpoint.merge_plan import MergeOptions  # noqa: E402
from elastra.checkpoint.search import merged_state_dict, open_sources  # noqa: E402


def train(
    runs: list[tuple[str, int, pathlib.Path, int, pathlib.Path | None, float]], in_process: bool
) -> None:
    """Run `(part, steps, root, nproc, init_from, lr)` trainings: side by side as processes (torchrun
    when nproc > 1), or one after the other in this process (`--small`: no interpreter start-ups)."""
    procs = []
    for part, steps, root, nproc, init_from, lr in runs:
        args = ["--part", part, "--steps", str(steps), "--checkpoint-uri", str(root), "--lr", str(lr)]
        args += ["--init-from", str(init_from)] if init_from is not None else []
        if in_process:
            import finetune

            finetune.main(args)
            continue
        launcher = [sys.executable] if nproc == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([*launcher, str(HERE / "finetune.py"), *args], env=env))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"training failed: {proc.args}")


def plot(result: SearchResult, parent: dict[str, float], best: Any, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.0), dpi=110)
    merges = [c for c in result.candidates if c.source is None]
    ax.scatter([c.metrics["loss_a"] for c in merges], [c.metrics["loss_b"] for c in merges],
               s=18, c="#9aa5b1", label="merge candidates")  # fmt: skip
    front = sorted(result.front, key=lambda c: c.metrics["loss_a"])
    ax.plot([c.metrics["loss_a"] for c in front], [c.metrics["loss_b"] for c in front], "-o",
            c="#d1495b", ms=5, label="Pareto front")  # fmt: skip
    for c in result.sources():
        ax.scatter([c.metrics["loss_a"]], [c.metrics["loss_b"]], marker="s", s=60, c="#00798c", zorder=3)
        ax.annotate(f"child {'AB'[c.source or 0]}", (c.metrics["loss_a"], c.metrics["loss_b"]),
                    textcoords="offset points", xytext=(6, 4))  # fmt: skip
    ax.scatter(
        [parent["loss_a"]], [parent["loss_b"]], marker="^", s=60, c="#edae49", zorder=3, label="parent"
    )
    ax.scatter([best.metrics["loss_a"]], [best.metrics["loss_b"]], marker="*", s=160, c="#30638e", zorder=4,
               label=f"best sum: w = ({best.weights[0]:.2f}, {best.weights[1]:.2f})")  # fmt: skip
    ax.set_xlabel("validation loss, half A")
    ax.set_ylabel("validation loss, half B")
    ax.set_title("Linear merges of two fine-tuned children")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="emptied, then holds the checkpoints and the outputs")
    p.add_argument("--parent-steps", type=int, default=100)
    p.add_argument("--child-steps", type=int, default=30)
    p.add_argument("--parent-lr", type=float, default=3e-3)
    p.add_argument("--child-lr", type=float, default=3e-3)
    p.add_argument("--trials", type=int, default=40)
    p.add_argument("--nproc", default="2,2,1", help="world sizes of parent, child A, child B")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--small", action="store_true", help="make-test size: few steps and trials, world 1, in process"
    )
    args = p.parse_args(argv)
    if args.small:
        args.parent_steps, args.child_steps, args.trials, args.nproc = 30, 10, 6, "1,1,1"
    worlds = [int(n) for n in args.nproc.split(",")]
    work = pathlib.Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    parent, child_a, child_b = work / "parent", work / "child-a", work / "child-b"
    started = time.perf_counter()
    train([("all", args.parent_steps, parent, worlds[0], None, args.parent_lr)], args.small)
    children = [
        ("a", args.child_steps, child_a, worlds[1], parent, args.child_lr),
        ("b", args.child_steps, child_b, worlds[2], parent, args.child_lr),
    ]
    train(children, args.small)
    print(f"trained parent and children in {time.perf_counter() - started:.0f}s", flush=True)

    parts = split_corpus()
    evaluate = make_evaluate(parts)
    parent_loss = evaluate(merged_state_dict(open_sources([str(parent)], base=None, include=["model/"]),
                                             MergeOptions(weights=(1.0,)), strip="model/"))  # fmt: skip

    def show(c: Any) -> None:
        kind = f"child {'AB'[c.source]}" if c.source is not None else "merge"
        print(f"  trial {c.number:>3} {kind:<8} w=({c.weights[0]:.3f}, {c.weights[1]:.3f})  "
              f"loss A {c.metrics['loss_a']:.4f}  loss B {c.metrics['loss_b']:.4f}", flush=True)  # fmt: skip

    result = merge_search([str(child_a), str(child_b)], evaluate, objectives=["loss_a", "loss_b"],
                          n_trials=args.trials, seed=args.seed, normalize=True, progress=show)  # fmt: skip
    print("Pareto front (loss on half A, loss on half B):")
    for c in sorted(result.front, key=lambda c: c.metrics["loss_a"]):
        show(c)

    def total(c: Any) -> float:
        return float(c.metrics["loss_a"] + c.metrics["loss_b"])

    children = {f"child {'AB'[c.source]}": total(c) for c in result.sources() if c.source is not None}
    merges = [c for c in result.candidates if c.source is None]
    best = min(merges, key=total)
    beats = all(total(best) < v for v in children.values())
    print(f"parent: loss A {parent_loss['loss_a']:.4f}, loss B {parent_loss['loss_b']:.4f}")
    sums = ", ".join(f"{k} {v:.4f}" for k, v in children.items())
    w = f"({best.weights[0]:.3f}, {best.weights[1]:.3f})"
    print(f"summed loss: {sums}, best merge {total(best):.4f} at w={w}")
    print(
        "RESULT: the best merge beats both children on the summed loss"
        if beats
        else "RESULT: no merge tried beats both children on the summed loss"
    )
    written = merge(str(work / "merged"), [str(child_a), str(child_b)], weights=list(best.weights))
    reloaded = evaluate(merged_state_dict(open_sources([written.uri], base=None, include=["model/"]),
                                          MergeOptions(weights=(1.0,)), strip="model/"))  # fmt: skip
    print(f"wrote {written.uri} ({written.bytes} bytes); from disk: loss A {reloaded['loss_a']:.4f}, "
          f"loss B {reloaded['loss_b']:.4f}")  # fmt: skip
    print(f"  same merge by command: elastra ckpt merge {work / 'merged'} {child_a} {child_b} "
          f"--weights {best.weights[0]},{best.weights[1]}")  # fmt: skip
    plot(result, parent_loss, best, work / "front.png")
    summary = {
        "parent": parent_loss,
        "children": {f"child {'AB'[c.source]}": c.metrics for c in result.sources() if c.source is not None},
        "front": [{"weights": list(c.weights), **c.metrics} for c in result.front],
        "trials": len(result.candidates),
        "best_merge": {"weights": list(best.weights), **best.metrics, "sum": total(best)},
        "best_merge_from_disk": reloaded,
        "beats_both_children_on_sum": beats,
        "merged_uri": written.uri,
        "worlds": {"parent": worlds[0], "child A": worlds[1], "child B": worlds[2]},
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {work / 'front.png'} and {work / 'summary.json'} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
