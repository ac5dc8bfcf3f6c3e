"""Checkpoint benchmark: Elastra side by side with torch.save, DCP save and DCP async_save, plus floors.

    .venv/bin/python benchmarks/checkpoint.py                 # the recorded run (256 MiB per rank)
    .venv/bin/python benchmarks/checkpoint.py --state-mb 32   # a quick run; records nothing

One run measures, on the same synthetic state (4 layers x weight + 2 AdamW moments, as DTensors
sharded by rows over 2 gloo ranks) and the same disk:

- per method, in a fresh 2-rank process group: saves alone (the time until each is durable, fsynced;
  median; and the RSS after each; 20 saves for Elastra), then rounds of a training loop (a fixed
  compute phase, then the mutation) with and without a save: the stall is the time the loop is
  blocked (the save call plus, for Elastra's lazy staging, the fence before the mutation), and the
  loop overhead is how much longer the iteration with a save took; medians; the peak RSS of the ranks;
- per method, in a fresh 1-rank process: the restore of the newest checkpoint onto 1 rank (2→1),
  with the page cache of the checkpoint files evicted first, checked value for value; and for the
  methods that can reshard, in a fresh 2-rank group sharded by columns instead of rows (2→2);
- the floors: memcpy into preallocated buffers, raw sequential write + fsync, raw read.

A full-size run writes benchmarks/results/checkpoint.json and its section of docs/benchmarks.md.
Exits non-zero when a method failed or Elastra's engine is missing; unmet targets are reported, not
hidden, and do not fail the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pathlib
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import _report

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "_checkpoint_worker.py"
RESULTS = HERE / "results" / "checkpoint.json"
DOCS = HERE.parent / "docs" / "benchmarks.md"
FULL_STATE_MB = 256
"""The issue asks for at least 256 MB per rank; smaller runs are for development and record nothing."""
RANKS = 2
S3_STATE_MB = 64
"""State per rank for the S3 comparison: moto keeps every object in its own process's memory and
serves it from Python, so the S3 rounds use a smaller state than the disk rounds."""
ELASTRA_SAVES = 20
WORKER_TIMEOUT_S = 1800
"""A safety net against a hung rank, not a measure: torch_checkpointing's resharded restore takes minutes
per round on a loaded 2-core machine."""


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which and why."""


def log(message: str) -> None:
    print(f"[checkpoint] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(
    role: str,
    method: str,
    world: int,
    work: pathlib.Path,
    extra: list[str],
    *,
    env_extra: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run `world` fresh worker processes of `role` as one gloo group; their JSON results, by rank."""
    port = free_port()
    procs, result_paths = [], []
    for rank in range(world):
        result = work / f"result-{role}-{method}-{rank}.json"
        result.unlink(missing_ok=True)
        env = {**os.environ, **(env_extra or {}), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        argv = [
            sys.executable,
            str(WORKER),
            f"--role={role}",
            f"--method={method}",
            f"--rank={rank}",
            f"--world={world}",
            f"--result={result}",
            f"--threads={max(1, (os.cpu_count() or 1) // RANKS)}",
            *extra,
        ]
        procs.append(subprocess.Popen(argv, env=env, start_new_session=True))
        result_paths.append(result)
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            raise BenchError(f"{role} {method}: ranks did not finish in {WORKER_TIMEOUT_S} s") from None
    if any(codes):
        for other in procs:
            if other.poll() is None:
                other.kill()
        raise BenchError(f"{role} {method}: ranks exited with {codes} (their stderr is above)")
    return [json.loads(path.read_text()) for path in result_paths]


def measure_floors(work: pathlib.Path, state_bytes: int, saves: int) -> dict[str, Any]:
    ranks = launch(
        "floors",
        "floors",
        RANKS,
        work,
        [f"--state-bytes={state_bytes}", f"--saves={saves}", f"--dir={work / 'floors'}"],
    )
    shutil.rmtree(work / "floors", ignore_errors=True)
    memcpy = _report.slowest_rank_per_round([r["memcpy_s"] for r in ranks])
    write = _report.slowest_rank_per_round([r["disk_write_s"] for r in ranks])
    return {
        "memcpy_s": _report.median(memcpy),
        "disk_write_s": _report.median(write),
        "disk_read_s": _report.median(ranks[0]["disk_read_s"]),
        "memcpy_samples_s": memcpy,
        "disk_write_samples_s": write,
        "disk_read_samples_s": ranks[0]["disk_read_s"],
        "how": (
            "memcpy: Tensor.copy_ of each rank's state into prefaulted buffers, both ranks at once; "
            "write: each rank writes its state bytes to one file and fsyncs, both at once; "
            "read: one process reads both ranks' files into a prefaulted buffer after fsync + "
            "posix_fadvise(DONTNEED) evicted them from the page cache"
        ),
    }


def measure_method(
    method: str, work: pathlib.Path, state_bytes: int, saves: int, loop_rounds: int
) -> dict[str, Any]:
    root = work / method
    root.mkdir(parents=True, exist_ok=True)
    common = [f"--state-bytes={state_bytes}", f"--dir={root}"]
    ranks = launch("save", method, RANKS, work, [*common, f"--saves={saves}", f"--loop-rounds={loop_rounds}"])
    stalls = _report.slowest_rank_per_round([r["stall_s"] for r in ranks])
    overheads = _report.slowest_rank_per_round([r["loop_overhead_s"] for r in ranks])
    iterations = _report.slowest_rank_per_round([r["loop_iteration_s"] for r in ranks])
    calls = _report.slowest_rank_per_round([r["save_call_alone_s"] for r in ranks])
    durables = _report.slowest_rank_per_round([r["durable_s"] for r in ranks])
    # CPU seconds per save: both ranks' processes (and their children) together, per save.
    cpu = [sum(values) / len(ranks) for values in zip(*(r["cpu_s_per_save"] for r in ranks), strict=True)]
    log(
        f"  {method}: loop stall median {_report.median(stalls):.3f} s, loop overhead median "
        f"{_report.median(overheads):.3f} s (iteration {_report.median(iterations):.3f} s), durable "
        f"median {_report.median(durables):.3f} s; restoring 2→1"
    )
    restore_args = [
        *common,
        f"--saved-world={RANKS}",
        f"--last-step={ranks[0]['last_step']}",
        f"--last-increments={ranks[0]['last_increments']}",
    ]
    restore = launch("restore", method, 1, work, restore_args)[0]
    resharded: list[float] | None = None
    raw_needed: list[float] | None = None
    if method != "torch_save":  # torch.save files cannot be resharded
        log(f"  {method}: restoring 2→2 sharded by columns instead of rows")
        floor = ["--raw-read-needed"] if method == "elastra" else []
        by_rank = launch("restore", method, RANKS, work, [*restore_args, *floor])
        resharded = _report.slowest_rank_per_round([r["restore_s"] for r in by_rank])
        if floor:
            raw_needed = _report.slowest_rank_per_round([r["raw_read_needed_s"] for r in by_rank])
    shutil.rmtree(root, ignore_errors=True)
    rss_series = [
        max(values) for values in zip(*(r["rss_after_each_save_bytes"] for r in ranks), strict=True)
    ]
    entry: dict[str, Any] = {
        "stall_s": _report.median(stalls),
        "loop_overhead_s": _report.median(overheads),
        "loop_iteration_s": _report.median(iterations),
        "durable_s": _report.median(durables),
        "cpu_s_per_save": _report.median(cpu),
        "cpu_s_per_save_samples": cpu,
        "save_call_alone_s": _report.median(calls),
        "restore_s": _report.median(restore["restore_s"]),
        "restore_samples_s": restore["restore_s"],
        "restore_resharded_s": None if resharded is None else _report.median(resharded),
        "restore_resharded_samples_s": resharded,
        "raw_read_needed_resharded_s": None if raw_needed is None else _report.median(raw_needed),
        "raw_read_needed_resharded_samples_s": raw_needed,
        "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
        "restore_peak_rss_bytes": restore["peak_rss_bytes"],
        "checkpoint_dir_bytes": restore["checkpoint_dir_bytes"],
        "rss_before_saves_bytes": max(r["rss_before_saves_bytes"] for r in ranks),
        "saves": saves,
        "loop_rounds": loop_rounds,
        "stall_samples_s": stalls,
        "loop_overhead_samples_s": overheads,
        "loop_iteration_samples_s": iterations,
        "save_call_alone_samples_s": calls,
        "durable_samples_s": durables,
    }
    if method.startswith("elastra"):
        entry["rss_after_each_save_bytes"] = rss_series
        entry["rss_growth_bytes"] = _report.rss_growth(rss_series)
    return entry


@contextlib.contextmanager
def moto_server(work: pathlib.Path) -> Iterator[dict[str, str]]:
    """A moto S3 server over HTTP on 127.0.0.1, as its own process; yields the AWS_* environment."""
    port = free_port()
    moto = pathlib.Path(sys.executable).with_name("moto_server")
    log_file = (work / "moto.log").open("wb")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log_file, stderr=log_file)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"moto_server did not start on {url}") from None
                time.sleep(0.2)
        yield {
            "AWS_ENDPOINT_URL_S3": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log_file.close()


def measure_s3(work: pathlib.Path, state_bytes: int, rounds: int) -> dict[str, Any]:
    """Elastra on S3 (moto over HTTP) beside raw boto3 on the same bytes: durable, and restore 2→1."""
    import boto3

    with moto_server(work) as env:
        bucket = "elastra-bench"
        boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL_S3"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        ).create_bucket(Bucket=bucket)
        common = [f"--state-bytes={state_bytes}", f"--dir={work / 's3'}", f"--bucket={bucket}"]
        saved = launch("s3save", "elastra", RANKS, work, [*common, f"--saves={rounds}"], env_extra=env)
        durable = _report.slowest_rank_per_round([r["durable_s"] for r in saved])
        upload = _report.slowest_rank_per_round([r["raw_upload_s"] for r in saved])
        cpu = [sum(v) / len(saved) for v in zip(*(r["cpu_s_per_save"] for r in saved), strict=True)]
        log(
            f"  S3 durable median {_report.median(durable):.3f} s, raw boto3 upload "
            f"{_report.median(upload):.3f} s; restoring 2→1 from S3"
        )
        restore_args = [
            *common,
            f"--saved-world={RANKS}",
            f"--last-step={saved[0]['last_step']}",
            f"--last-increments={saved[0]['last_step']}",
        ]
        restored = launch("s3restore", "elastra", 1, work, restore_args, env_extra=env)[0]
    return {
        "state_bytes_per_rank": state_bytes,
        "checkpoint_bytes": saved[0]["checkpoint_bytes"],
        "raw_bytes_per_rank": saved[0]["raw_bytes"],
        "durable_s": _report.median(durable),
        "raw_upload_s": _report.median(upload),
        "restore_s": _report.median(restored["restore_s"]),
        "raw_download_s": _report.median(restored["raw_download_s"]),
        "cpu_s_per_save": _report.median(cpu),
        "durable_samples_s": durable,
        "raw_upload_samples_s": upload,
        "restore_samples_s": restored["restore_s"],
        "raw_download_samples_s": restored["raw_download_s"],
        "how": (
            "moto_server over HTTP on 127.0.0.1; durable: Elastra save (eager) until the manifest is "
            "committed, both ranks; raw: each rank's state bytes with boto3 upload_fileobj (default "
            "TransferConfig), both ranks at once, slowest rank; restore: Elastra 2→1 load vs boto3 "
            "download_fileobj (defaults) of both ranks' raw objects, in one process"
        ),
    }


def elastra_problem() -> str | None:
    """Why Elastra's engine cannot be benchmarked, or None when its public API is importable."""
    try:
        from elastra.checkpoint import Checkpointer  # noqa: F401
    except ImportError as exc:
        return f"elastra.checkpoint.Checkpointer is not importable: {exc}"
    return None


def machine() -> dict[str, Any]:
    import psutil
    import torch

    cpu = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        models = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = models[0] if models else cpu
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "os": platform.platform(),
        "load_average_at_start": list(os.getloadavg()),
        "accelerator": "none (CPU only; the CUDA staging path was not measured)",
        "elastra_engine": engine_version(),
    }


def engine_version() -> str:
    """The git commit of the checkout, and whether the engine's files differ from it (measured as is)."""
    engine = ["trainer-image/elastra/checkpoint", "trainer-image/elastra/storage"]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *engine],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"unknown ({exc})"
    return f"git {commit}" + (" plus uncommitted engine changes" if dirty else "")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--state-mb",
        type=int,
        default=int(os.environ.get("ELASTRA_BENCH_STATE_MB", FULL_STATE_MB)),
        help=f"MiB of state per rank (default {FULL_STATE_MB}; env ELASTRA_BENCH_STATE_MB)",
    )
    parser.add_argument(
        "--saves", type=int, default=5, help="saves per peer method, and loop rounds per method (medians)"
    )
    parser.add_argument("--methods", default=",".join(_report.METHODS), help="comma-separated subset")
    parser.add_argument(
        "--s3-mb",
        type=int,
        default=S3_STATE_MB,
        help=f"MiB of state per rank for the S3 comparison (default {S3_STATE_MB}; 0 skips it)",
    )
    parser.add_argument("--work-dir", default=None, help="scratch directory (default: a temp dir in /tmp)")
    parser.add_argument("--out", default=None, help="also write the results JSON here (any run)")
    args = parser.parse_args(argv)
    if args.saves < 5:
        parser.error("--saves must be at least 5 (the stall is a median of at least 5 saves)")
    unknown = set(args.methods.split(",")) - set(_report.METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {_report.METHODS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    state_bytes = args.state_mb * _report.MIB
    full = args.state_mb >= FULL_STATE_MB and args.methods == ",".join(_report.METHODS)
    work = pathlib.Path(tempfile.mkdtemp(prefix="elastra-bench-", dir=args.work_dir))
    started = time.monotonic()
    log(
        f"{RANKS} ranks x {args.state_mb} MiB of state, scratch {work} "
        f"({'recorded run' if full else 'development run: records nothing'})"
    )
    results: dict[str, Any] = {
        "methods": {},
        "floors": {},
        "state_bytes_per_rank": state_bytes,
        "ranks": RANKS,
        "restore": (
            f"restore_s: {RANKS} ranks (rows) -> 1 rank; restore_resharded_s: {RANKS} ranks (rows) -> "
            f"{RANKS} ranks (columns); page cache of the checkpoint evicted before each"
        ),
        "machine": machine(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    failures: list[str] = []
    try:
        log("floors: memcpy, raw write + fsync, raw read")
        results["floors"] = measure_floors(work, state_bytes, args.saves)
        floors = results["floors"]
        log(
            f"  memcpy {floors['memcpy_s']:.3f} s, write {floors['disk_write_s']:.3f} s, "
            f"read {floors['disk_read_s']:.3f} s"
        )
        for method in args.methods.split(","):
            if method.startswith("elastra") and (problem := elastra_problem()) is not None:
                log(f"{method}: MISSING — {problem}")
                results["methods"][method] = {"missing": problem}
                failures.append(f"{method}: {problem}")
                continue
            saves = ELASTRA_SAVES if method.startswith("elastra") else args.saves
            log(f"{method}: saving ({saves} saves, then {args.saves} rounds of the training loop)")
            try:
                results["methods"][method] = measure_method(method, work, state_bytes, saves, args.saves)
            except (BenchError, KeyError, ValueError) as exc:
                log(f"{method}: FAILED — {exc}")
                results["methods"][method] = {"failed": str(exc)}
                failures.append(f"{method}: {exc}")
                continue
            entry = results["methods"][method]
            log(
                f"  {method}: restore {entry['restore_s']:.3f} s, peak RSS "
                f"{entry['peak_rss_bytes'] / _report.MIB:.0f} MiB"
            )
        if args.s3_mb > 0 and "elastra" in args.methods.split(","):
            log(f"S3 (moto over HTTP): {RANKS} ranks x {args.s3_mb} MiB, Elastra vs raw boto3")
            try:
                results["s3"] = measure_s3(work, args.s3_mb * _report.MIB, args.saves)
            except (BenchError, KeyError, ValueError) as exc:
                log(f"S3: FAILED — {exc}")
                results["s3"] = {"failed": str(exc)}
                failures.append(f"s3: {exc}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    table = _report.render_markdown(results)
    print(table, flush=True)
    if full:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        document = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
        DOCS.write_text(_report.replace_section(document, "checkpoint", table))
        log(f"wrote {RESULTS.relative_to(HERE.parent)} and the checkpoint section of docs/benchmarks.md")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    for failure in failures:
        log(f"FAILED {failure}")
    log(f"done in {results['elapsed_s']} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
