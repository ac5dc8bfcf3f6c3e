"""`make bench`: run every benchmark module, one fresh process each, and fail if any failed.

    .venv/bin/python benchmarks/run_all.py               # all of them
    .venv/bin/python benchmarks/run_all.py checkpoint    # a subset, by module name

A benchmark module is `benchmarks/<name>.py` with a `main()` that returns an exit code (or None for
success), or 77 when it cannot run on this machine (`benchmarks/gpu.py` without a CUDA device): that
is reported as skipped, not failed. Files starting with `_` are helpers, not benchmarks. Known
benchmarks run first, in the order below, then any others alphabetically. Each runs in its own
process (so one's memory and process groups cannot disturb the next) with `benchmarks/` on
`sys.path`, and prints its own progress.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
SKIPPED = 77
"""Exit status of a benchmark that cannot run here (automake's convention): reported, not a failure."""
KNOWN_ORDER = ("checkpoint", "localcluster")
"""Benchmarks this runner knows, in the order they run."""

# Loads the module under a private name: `benchmarks/localcluster.py` must not shadow the
# `localcluster` package it benchmarks.
BOOTSTRAP = """
import importlib.util, sys
directory, name, path = sys.argv[1:4]
sys.argv = [path]  # the benchmark parses its own (empty) command line
sys.path.insert(0, directory)
spec = importlib.util.spec_from_file_location("_bench_" + name, path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
code = module.main()
sys.exit(0 if code is None else int(code))
"""


def discover(directory: pathlib.Path) -> list[str]:
    """Benchmark module names in `directory`: known ones first in KNOWN_ORDER, then the rest sorted."""
    names = {
        path.stem
        for path in directory.glob("*.py")
        if not path.stem.startswith("_") and path.name != pathlib.Path(__file__).name
    }
    return [n for n in KNOWN_ORDER if n in names] + sorted(names - set(KNOWN_ORDER))


def main(argv: list[str] | None = None) -> int:
    wanted = sys.argv[1:] if argv is None else argv
    available = discover(HERE)
    unknown = [name for name in wanted if name not in available]
    if unknown:
        print(f"[bench] no such benchmark: {', '.join(unknown)} (available: {', '.join(available)})")
        return 2
    names = wanted or available
    outcomes: list[tuple[str, int, float]] = []
    for index, name in enumerate(names, start=1):
        print(f"[bench] ({index}/{len(names)}) {name} ...", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-c", BOOTSTRAP, str(HERE), name, str(HERE / f"{name}.py")])
        elapsed = time.monotonic() - started
        outcomes.append((name, code, elapsed))
        print(f"[bench] ({index}/{len(names)}) {name}: {verdict(code)} in {elapsed:.0f} s", flush=True)
    print("[bench] summary:", flush=True)
    for name, code, elapsed in outcomes:
        print(f"[bench]   {name:<16} {verdict(code):<18} {elapsed:6.0f} s")
    return 1 if any(code not in (0, SKIPPED) for _, code, _ in outcomes) else 0


def verdict(code: int) -> str:
    """How one benchmark's exit status is reported."""
    if code == SKIPPED:
        return "skipped"
    return "ok" if code == 0 else f"FAILED (exit {code})"


if __name__ == "__main__":
    sys.exit(main())
