"""The CUDA path on one GPU: Elastra (eager and lazy staging) against DCP async_save and torch.save.

    python benchmarks/gpu.py                      # 8.5 GiB of CUDA state; meant to finish within 5 minutes
    python benchmarks/gpu.py --state-gib 1        # a quick look
    python benchmarks/run_all.py gpu              # the same through `make bench`

One process, one GPU, a world of one (process group `cpu:gloo,cuda:nccl`, as a multi-GPU job would
have). The state is float32 CUDA tensors (`--state-gib`, default 8.5: at least 8 GiB) with values
that encode their position, so every restore is checked exactly. Per method:

- **stall**: how long a save blocks the training loop: the `save()` call (torch.save: all of it;
  DCP async_save: its synchronous copy to host; Elastra eager: the copy into its pinned buffer on a
  side stream; Elastra lazy: the call plus the `fence()` before the next in-place update).
- **loop overhead**: a loop of `--steps` steps (a fixed CUDA compute phase, then an in-place update of
  the whole state, as an optimizer step) saving every `--every` steps, against the same loop without
  saves; the last save is waited for (durable) outside the timed loop.
- **durable**: from the save call to the checkpoint being on disk (Elastra: manifest committed).
- **restore**: the newest checkpoint into zeroed CUDA tensors, with the page cache dropped first
  (`posix_fadvise(DONTNEED)`), then checked bit for bit.

Without a CUDA device it prints why and exits 77, which `benchmarks/run_all.py` reports as skipped.
Results: `benchmarks/results/gpu.json` (`--out`), with the device, CUDA, torch and the load average; a
GPU run also rewrites the `gpu` section of docs/benchmarks.md (a smoke run on CPU never does).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pathlib
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

SKIPPED = 77
"""Exit status of a benchmark that cannot run here (no CUDA device): `run_all.py` reports it skipped."""
HERE = pathlib.Path(__file__).resolve().parent
METHODS = ("torch_save", "dcp_async_save", "elastra", "elastra_lazy")
TENSOR_MIB = 512
"""Each state tensor is 512 MiB of float32 (a large layer's weight or Adam moment)."""
PRIME = 65521
"""Values are (element index mod PRIME) + tensor index + updates applied: exact in float32."""
COMPUTE = 8192
"""The compute phase: matmuls of [COMPUTE]^2 bfloat16 (a fixed forward/backward stand-in)."""


def log(text: str) -> None:
    print(f"[gpu] {text}", flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="benchmarks/gpu.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--state-gib", type=float, default=8.5, help="CUDA state size (default 8.5 GiB)")
    p.add_argument("--steps", type=int, default=9, help="loop steps per method (default 9)")
    p.add_argument("--every", type=int, default=3, help="save every N steps of the loop (default 3)")
    p.add_argument(
        "--matmuls",
        type=int,
        default=300,
        help="bf16 8192^2 matmuls per step (default 300, ~0.5 s on an H200)",
    )
    p.add_argument("--dir", type=pathlib.Path, default=None, help="where checkpoints go (default a temp dir)")
    p.add_argument("--out", type=pathlib.Path, default=HERE / "results" / "gpu.json", help="results JSON")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument(
        "--smoke-on-cpu",
        action="store_true",
        help="run the whole script on CPU tensors to check it works (the figures mean nothing; used by "
        "tests/unit/test_bench_report.py with a tiny state)",
    )
    p.add_argument("--compute-size", type=int, default=COMPUTE, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- state
def expected(index: int, numel: int, updates: int, device: torch.device) -> torch.Tensor:
    """Tensor `index` after `updates` in-place updates."""
    values = torch.arange(numel, device=device, dtype=torch.int64).remainder_(PRIME)
    return values.to(torch.float32).add_(index + updates)


def build_state(gib: float, device: torch.device) -> dict[str, torch.Tensor]:
    mib = min(TENSOR_MIB, max(1, round(gib * 1024 / 4)))  # tiny states (the CPU smoke run): 4 tensors
    count = max(1, round(gib * 1024 / mib))
    numel = mib * 1024 * 1024 // 4
    return {f"layers.{i}.weight": expected(i, numel, 0, device) for i in range(count)}


def update(state: dict[str, torch.Tensor]) -> None:
    """The optimizer step: every tensor changes in place."""
    with torch.no_grad():
        for tensor in state.values():
            tensor.add_(1.0)


def check(state: dict[str, torch.Tensor], updates: int) -> None:
    for index, tensor in enumerate(state.values()):
        if not torch.equal(tensor, expected(index, tensor.numel(), updates, tensor.device)):
            raise AssertionError(
                f"restored tensor {index} differs from the state saved after {updates} updates"
            )


class Compute:
    """A fixed amount of GPU work per step, on the current stream."""

    def __init__(self, matmuls: int, device: torch.device, size: int = COMPUTE) -> None:
        gen = torch.Generator(device=device).manual_seed(0)
        self.a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=gen)
        self.b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=gen)
        self.matmuls = matmuls

    def run(self) -> None:
        for _ in range(self.matmuls):
            torch.mm(self.a, self.b)


# ---------------------------------------------------------------------------------------------- savers
class Saver:
    """One method: `save(step, state)` returns (stall seconds, a wait-durable callable)."""

    fence: Callable[[], None] = staticmethod(lambda: None)

    def save(self, step: int, state: dict[str, torch.Tensor]) -> tuple[float, Callable[[], float]]:
        raise NotImplementedError

    def restore(self, step: int, target: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work."""


class TorchSave(Saver):
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def path(self, step: int) -> pathlib.Path:
        return self.root / f"step-{step}.pt"

    def save(self, step: int, state: dict[str, torch.Tensor]) -> tuple[float, Callable[[], float]]:
        from _checkpoint_worker import fsync_path

        start = time.perf_counter()
        torch.save(state, self.path(step))
        stall = time.perf_counter() - start

        def durable() -> float:
            fsync_path(self.path(step))  # torch.save does not fsync: a careful caller does
            return time.perf_counter() - start

        for old in self.root.glob("step-*.pt"):
            if old != self.path(step):
                old.unlink()
        return stall, durable

    def restore(self, step: int, target: dict[str, torch.Tensor]) -> None:
        loaded = torch.load(
            self.path(step), map_location=next(iter(target.values())).device, weights_only=True
        )
        with torch.no_grad():
            for key, tensor in target.items():
                tensor.copy_(loaded[key])


class DcpAsync(Saver):
    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    def save(self, step: int, state: dict[str, torch.Tensor]) -> tuple[float, Callable[[], float]]:
        import torch.distributed.checkpoint as dcp

        start = time.perf_counter()
        response = dcp.async_save(state, checkpoint_id=str(self.root / f"step-{step}"))
        stall = time.perf_counter() - start
        future = getattr(response, "upload_completion", response)

        def durable() -> float:
            future.result()
            for old in self.root.glob("step-*"):
                if old.name != f"step-{step}":
                    shutil.rmtree(old, ignore_errors=True)
            return time.perf_counter() - start

        return stall, durable

    def restore(self, step: int, target: dict[str, torch.Tensor]) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.load(target, checkpoint_id=str(self.root / f"step-{step}"))


class Elastra(Saver):
    def __init__(self, root: pathlib.Path, *, lazy: bool) -> None:
        from elastra.checkpoint import Checkpointer

        self.checkpointer = Checkpointer(str(root), local_dir=None, keep=1)
        self.staging = "lazy" if lazy else "eager"
        self.fence = self.checkpointer.fence

    def save(self, step: int, state: dict[str, torch.Tensor]) -> tuple[float, Callable[[], float]]:
        start = time.perf_counter()
        handle = self.checkpointer.save(step, state, staging=self.staging)
        self.fence()  # eager: a no-op; lazy: the wait the next optimizer step would see
        stall = time.perf_counter() - start

        def durable() -> float:
            info = handle.wait()
            assert info is not None, "the save was skipped"
            return info.commit_seconds

        return stall, durable

    def restore(self, step: int, target: dict[str, torch.Tensor]) -> None:
        loaded = self.checkpointer.load(target, step=step)
        assert loaded == step, f"loaded step {loaded}, wanted {step}"

    def close(self) -> None:
        self.checkpointer.wait()
        self.checkpointer.close()


def make(method: str, root: pathlib.Path) -> Saver:
    root.mkdir(parents=True, exist_ok=True)
    if method == "torch_save":
        return TorchSave(root)
    if method == "dcp_async_save":
        return DcpAsync(root)
    return Elastra(root, lazy=method == "elastra_lazy")


# ---------------------------------------------------------------------------------------------- runs
def sync() -> None:
    """Wait for the GPU (a no-op on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        sync()


def timed_loop(
    args: argparse.Namespace, state: dict[str, torch.Tensor], compute: Compute, saver: Saver | None
) -> dict[str, Any]:
    """`args.steps` steps of compute + update; with a saver, a save every `args.every` steps."""
    stalls: list[float] = []
    durables: list[float] = []
    pending: Callable[[], float] | None = None
    sync()
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        compute.run()
        if saver is not None:
            saver.fence()
        update(state)
        if saver is not None and step % args.every == 0:
            if pending is not None:
                durables.append(pending())  # the previous save must be done before the next
            stall, pending = saver.save(step, state)
            stalls.append(stall)
        sync()
    loop = time.perf_counter() - start
    if pending is not None:
        durables.append(pending())
    return {"loop_s": loop, "stall_s": stalls, "durable_s": durables}


def run_method(
    method: str,
    args: argparse.Namespace,
    state: dict[str, torch.Tensor],
    compute: Compute,
    root: pathlib.Path,
) -> dict[str, Any]:
    from _checkpoint_worker import evict_from_page_cache

    saver = make(method, root / method)
    try:
        updates_before = args.applied
        result = timed_loop(args, state, compute, saver)
        args.applied += args.steps
        last_save = args.steps - args.steps % args.every
        saved_updates = updates_before + last_save
        evicted = evict_from_page_cache(root / method)
        target = {k: torch.zeros_like(v) for k, v in state.items()}
        sync()
        began = time.perf_counter()
        saver.restore(last_save, target)
        sync()
        result["restore_s"] = time.perf_counter() - began
        result["page_cache_evicted_bytes"] = evicted
        check(target, saved_updates)
        del target
    finally:
        saver.close()
        shutil.rmtree(root / method, ignore_errors=True)
    return result


def markdown(document: dict[str, Any]) -> str:
    """The docs section: one row per method, ratios against DCP async_save. Pure."""
    m = document["machine"]
    lines = [
        f"Measured {m['date'][:10]} on {m['gpu']} ({m['gpu_memory_gib']} GiB), CUDA {m['cuda']}, torch "
        f"{m['torch']}, {m['cpu_count']} CPUs, load average {m['load_average'][0]}; "
        f"{document['state_bytes'] / 2**30:.2f} GiB of CUDA state, {document['steps']} steps saving every "
        f"{document['every']} (loop without saves: {document['baseline_loop_s']:.2f} s). One run.",
        "",
        "| method | stall (s) | vs DCP async | loop overhead (s) | durable (s) | restore (s) "
        "| vs DCP async |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in document["methods"].items():
        stall_ratio = r.get("stall_vs_dcp_async")
        restore_ratio = r.get("restore_vs_dcp_async")
        lines.append(
            f"| {name} | {r['stall_median_s']:.3f} | "
            f"{'' if stall_ratio is None else f'{stall_ratio:.2f}x'} | {r['loop_overhead_s']:+.2f} | "
            f"{r['durable_median_s']:.2f} | {r['restore_s']:.2f} | "
            f"{'' if restore_ratio is None else f'{restore_ratio:.2f}x'} |"
        )
    return "\n".join(lines) + "\n"


def machine() -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else "none (CPU smoke run)",
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else 0,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    if not torch.cuda.is_available() and not args.smoke_on_cpu:
        print(
            "[gpu] skipped: no CUDA device here (torch "
            f"{torch.__version__}, cuda build {torch.version.cuda}); run it on a GPU machine",
            flush=True,
        )
        return SKIPPED
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS)
    if unknown:
        print(f"[gpu] unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    init = f"tcp://127.0.0.1:{port}"
    if args.smoke_on_cpu:
        device = torch.device("cpu")
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=1)
    else:
        device = torch.device("cuda:0")
        torch.cuda.set_device(device)
        dist.init_process_group(
            "cpu:gloo,cuda:nccl", init_method=init, rank=0, world_size=1, device_id=device
        )
    root = args.dir or pathlib.Path(tempfile.mkdtemp(prefix="elastra-gpu-bench-"))
    started = time.monotonic()
    try:
        state = build_state(args.state_gib, device)
        nbytes = sum(t.numel() * t.element_size() for t in state.values())
        compute = Compute(args.matmuls, device, args.compute_size)
        kind = device.type.upper()
        log(f"{machine()['gpu']}: {nbytes / 2**30:.2f} GiB of {kind} state, {len(state)} tensors; in {root}")
        args.applied = 0
        baseline = timed_loop(args, state, compute, None)
        args.applied += args.steps
        log(f"loop without saves: {baseline['loop_s']:.2f} s for {args.steps} steps")
        results: dict[str, Any] = {}
        for method in methods:
            r = run_method(method, args, state, compute, root)
            r["loop_overhead_s"] = r["loop_s"] - baseline["loop_s"]
            r["stall_median_s"] = statistics.median(r["stall_s"])
            r["durable_median_s"] = statistics.median(r["durable_s"])
            results[method] = r
            log(
                f"{method:>15}: stall {r['stall_median_s']:.3f} s, loop overhead "
                f"{r['loop_overhead_s']:+.2f} s, durable {r['durable_median_s']:.2f} s, "
                f"restore {r['restore_s']:.2f} s (checked)"
            )
        reference = results.get("dcp_async_save")
        if reference is not None:
            for r in results.values():
                r["stall_vs_dcp_async"] = r["stall_median_s"] / reference["stall_median_s"]
                r["restore_vs_dcp_async"] = r["restore_s"] / reference["restore_s"]
        document = {
            "benchmark": "gpu",
            "smoke_on_cpu": bool(args.smoke_on_cpu),
            "machine": machine(),
            "state_bytes": nbytes,
            "steps": args.steps,
            "every": args.every,
            "baseline_loop_s": baseline["loop_s"],
            "methods": results,
            "wall_s": time.monotonic() - started,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.out} in {document['wall_s']:.0f} s")
        if not args.smoke_on_cpu:
            from _report import replace_section

            docs = HERE.parent / "docs" / "benchmarks.md"
            docs.write_text(replace_section(docs.read_text(), "gpu", markdown(document)))
            log("wrote the gpu section of docs/benchmarks.md")
    finally:
        dist.destroy_process_group()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
