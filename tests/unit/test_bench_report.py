"""The checkpoint benchmark's pure helpers: medians, per-round maxima, targets, table, doc sections."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_test_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


report = _load("_report")
run_all = _load("run_all")

MIB = 1024 * 1024


def results(lazy: dict[str, Any] | None = None, **elastra: Any) -> dict[str, Any]:
    """A results dict like checkpoint.json: peers and floors fixed, Elastra's figures as given (lazy
    staging's too, by default inside every limit)."""
    return {
        "methods": {
            "torch_save": {"stall_s": 2.0, "durable_s": 2.5, "restore_s": 1.5, "peak_rss_bytes": 900 * MIB},
            "dcp_save": {
                "stall_s": 2.2,
                "durable_s": 2.2,
                "restore_s": 1.2,
                "restore_resharded_s": 0.9,
                "peak_rss_bytes": 800 * MIB,
            },
            "dcp_async_save": {
                "stall_s": 0.8,
                "loop_overhead_s": 0.8,
                "durable_s": 2.4,
                "restore_s": 1.2,
                "peak_rss_bytes": 1000 * MIB,
            },
            "torch_checkpointing": {
                "stall_s": 0.05,
                "loop_overhead_s": 0.6,
                "cpu_s_per_save": 0.9,
                "durable_s": 2.0,
                "restore_s": 1.3,
                "restore_resharded_s": 1.0,
                "peak_rss_bytes": 900 * MIB,
            },
            "elastra": elastra,
            "elastra_lazy": GOOD_LAZY if lazy is None else lazy,
        },
        "floors": {"memcpy_s": 0.1, "disk_write_s": 1.0, "disk_read_s": 1.0},
        "s3": {
            "durable_s": 2.0,
            "raw_upload_s": 2.0,
            "restore_s": 1.0,
            "raw_download_s": 1.0,
            "state_bytes_per_rank": 64 * MIB,
            "cpu_s_per_save": 0.5,
        },
        "state_bytes_per_rank": 256 * MIB,
        "ranks": 2,
        "machine": {
            "cpu": "cpu",
            "cores": 2,
            "memory_bytes": 24 * 1024 * MIB,
            "python": "3.11",
            "torch": "2",
        },
        "date": "2026-01-01T00:00:00+00:00",
    }


GOOD_LAZY = {"stall_s": 0.01, "loop_overhead_s": 0.3, "durable_s": 1.4, "restore_s": 1.1}

GOOD_ELASTRA: dict[str, Any] = {
    "restore_resharded_s": 0.6,
    "raw_read_needed_resharded_s": 0.6,
    "stall_s": 0.15,
    "cpu_s_per_save": 0.4,
    "durable_s": 1.3,
    "restore_s": 1.1,
    "peak_rss_bytes": 700 * MIB,
    "rss_growth_bytes": 1 * MIB,
}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param([3.0, 1.0, 2.0], 2.0, id="odd-count-middle-value"),
        pytest.param([4.0, 1.0, 2.0, 3.0], 2.5, id="even-count-mean-of-middle-two"),
        pytest.param([0.5], 0.5, id="single-sample"),
    ],
)
def test_median(values: list[float], expected: float) -> None:
    assert report.median(values) == expected


def test_median_of_nothing_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no measurements"):
        report.median([])


@pytest.mark.parametrize(
    ("per_rank", "expected"),
    [
        pytest.param([[1.0, 5.0], [2.0, 3.0]], [2.0, 5.0], id="slowest-rank-each-round"),
        pytest.param([[1.0, 2.0, 3.0]], [1.0, 2.0, 3.0], id="one-rank-is-itself"),
    ],
)
def test_slowest_rank_per_round(per_rank: list[list[float]], expected: list[float]) -> None:
    assert report.slowest_rank_per_round(per_rank) == expected


def test_ranks_with_different_round_counts_are_rejected() -> None:
    with pytest.raises(ValueError, match="different numbers of rounds"):
        report.slowest_rank_per_round([[1.0, 2.0], [1.0]])


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        pytest.param([100, 150, 130], 30, id="last-minus-first"),
        pytest.param([200, 100], -100, id="shrink-is-negative"),
    ],
)
def test_rss_growth(series: list[int], expected: int) -> None:
    assert report.rss_growth(series) == expected


@pytest.mark.parametrize(
    ("value", "reference", "expected"),
    [
        pytest.param(1.0, 4.0, 0.25, id="plain-ratio"),
        pytest.param(None, 4.0, None, id="missing-value"),
        pytest.param(1.0, None, None, id="missing-reference"),
        pytest.param(1.0, 0.0, None, id="zero-reference-is-undecidable"),
    ],
)
def test_ratio(value: float | None, reference: float | None, expected: float | None) -> None:
    assert report.ratio(value, reference) == expected


def verdicts(elastra: dict[str, Any]) -> dict[str, bool | None]:
    return {t.name: t.met for t in report.evaluate_targets(results(**elastra))}


def test_all_targets_met_when_elastra_is_inside_every_limit() -> None:
    assert set(verdicts(GOOD_ELASTRA).values()) == {True}


@pytest.mark.parametrize(
    ("change", "failing"),
    [
        pytest.param(
            {"stall_s": 0.21},
            {
                "stall ≤ 1/4 of DCP async_save's",
                "stall ≤ 1/10 of torch.save's",
                "stall ≤ 2x the memcpy floor",
            },
            id="stall-over-all-three-limits",
        ),
        pytest.param({"stall_s": 0.2}, set(), id="stall-exactly-at-limits-is-met"),
        pytest.param(
            {"durable_s": 1.51},
            {
                "durable ≤ 1.5x the raw write of the same bytes",
                "durable ≤ 1.3x the raw write of the same bytes",
            },
            id="durable-too-slow",
        ),
        pytest.param(
            {"durable_s": 1.31}, {"durable ≤ 1.3x the raw write of the same bytes"}, id="durable-over-1.3x"
        ),
        pytest.param(
            {"restore_resharded_s": 0.85},
            {"restore (2→2 resharded) ≤ 1.3x the raw read of the bytes needed"},
            id="resharded-restore-over-its-read-floor",
        ),
        pytest.param(
            {"restore_s": 1.2}, {"N→M restore (2→1) faster than DCP's load"}, id="restore-tie-is-not-faster"
        ),
        pytest.param(
            {"restore_resharded_s": 0.95},
            {
                "N→M restore (2→2 resharded) faster than DCP's load",
                "restore (2→2 resharded) ≤ 1.3x the raw read of the bytes needed",
            },
            id="resharded-restore-slower-than-dcp",
        ),
        pytest.param(
            {"restore_s": 1.31},
            {
                "N→M restore (2→1) faster than DCP's load",
                "N→M restore (2→1) ≤ 1.3x the raw read of the bytes needed",
                "restore (2→1) ≤ torch_checkpointing's",
            },
            id="restore-over-read-floor-and-torch-checkpointing",
        ),
        pytest.param(
            {"rss_growth_bytes": 13 * MIB},
            {"RSS does not grow across 20 saves (≤ 5% of the state)"},
            id="rss-growth-over-5-percent",
        ),
        pytest.param({"rss_growth_bytes": -50 * MIB}, set(), id="rss-shrink-is-met"),
    ],
)
def test_each_target_fails_on_its_own_figure(change: dict[str, float], failing: set[str]) -> None:
    got = verdicts({**GOOD_ELASTRA, **change})
    assert {name for name, met in got.items() if met is False} == failing
    assert None not in got.values()


@pytest.mark.parametrize(
    ("lazy", "s3", "failing"),
    [
        pytest.param(
            {"loop_overhead_s": 0.31},
            {},
            {"lazy staging: loop overhead ≤ 0.5x the best peer's (torch_checkpointing)"},
            id="lazy-overhead-over-half-the-best-peer",
        ),
        pytest.param(
            {"loop_overhead_s": 0.7},
            {},
            {
                "lazy staging: loop overhead ≤ 0.5x the best peer's (torch_checkpointing)",
                "lazy staging: loop overhead ≤ torch_checkpointing's",
            },
            id="lazy-overhead-over-torch-checkpointing",
        ),
        pytest.param(
            {"stall_s": 0.06}, {}, {"lazy staging: stall ≤ torch_checkpointing's"}, id="lazy-stall-over-tc"
        ),
        pytest.param(
            {}, {"durable_s": 2.61}, {"S3 durable ≤ 1.3x raw boto3 upload of the same bytes"}, id="s3-durable"
        ),
        pytest.param(
            {},
            {"restore_s": 1.31},
            {"S3 restore (2→1) ≤ 1.3x raw boto3 download of the same bytes"},
            id="s3-restore",
        ),
    ],
)
def test_background_and_s3_targets(lazy: dict[str, float], s3: dict[str, float], failing: set[str]) -> None:
    figures = results({**GOOD_LAZY, **lazy}, **GOOD_ELASTRA)
    figures["s3"] = {**figures["s3"], **s3}
    got = {t.name: t.met for t in report.evaluate_targets(figures)}
    assert {name for name, met in got.items() if met is False} == failing
    assert None not in got.values()


def test_best_peer_is_the_lowest_measured_peer() -> None:
    methods = results(**GOOD_ELASTRA)["methods"]
    assert report.best_peer(methods, "loop_overhead_s") == ("torch_checkpointing", 0.6)
    assert report.best_peer({"elastra": {"loop_overhead_s": 0.1}}, "loop_overhead_s") is None


def test_s3_table_shows_both_ratios() -> None:
    table = report.render_markdown(results(**GOOD_ELASTRA))
    assert "| durable (save → committed) | 2.000 | 2.000 (upload_fileobj) | 1.00x |" in table
    assert "| restore 2→1 | 1.000 | 1.000 (download_fileobj) | 1.00x |" in table
    without = results(**GOOD_ELASTRA)
    del without["s3"]
    assert "S3: not measured." in report.render_markdown(without)


def test_missing_elastra_is_not_measured_never_met() -> None:
    missing = {"missing": "engine not importable"}
    figures = results(lazy=missing, **missing)
    del figures["s3"]  # Elastra's own S3 run is missing with it
    targets = report.evaluate_targets(figures)
    assert {t.met for t in targets} == {None}


@pytest.mark.parametrize(
    ("lazy_stall", "failing"),
    [
        pytest.param(0.2, {"lazy staging: stall ≤ torch_checkpointing's"}, id="lazy-stall-at-every-limit"),
        pytest.param(
            0.21,
            {
                "lazy staging: stall ≤ torch_checkpointing's",
                "lazy staging: stall ≤ 1/4 of DCP async_save's",
                "lazy staging: stall ≤ 1/10 of torch.save's",
                "lazy staging: stall ≤ 2x the memcpy floor",
            },
            id="lazy-stall-judged-on-its-own-figure",
        ),
    ],
)
def test_lazy_staging_has_its_own_stall_targets(lazy_stall: float, failing: set[str]) -> None:
    figures = results({**GOOD_LAZY, "stall_s": lazy_stall}, **GOOD_ELASTRA)
    got = {t.name: t.met for t in report.evaluate_targets(figures)}
    assert {name for name, met in got.items() if met is False} == failing


def test_markdown_shows_ratios_and_verdicts() -> None:
    table = report.render_markdown(results(**{**GOOD_ELASTRA, "durable_s": 2.0}))
    elastra_row = next(line for line in table.splitlines() if line.startswith("| elastra |"))
    assert (
        elastra_row
        == "| elastra | 0.150 | missing | 0.400 | 2.000 | 1.100 | 0.600 | 700 | 1.50x | 2.00x | 1.10x |"
    )
    lazy_row = next(line for line in table.splitlines() if line.startswith("| elastra_lazy |"))
    assert lazy_row.startswith("| elastra_lazy | 0.010 | 0.300 | missing | 1.400 | 1.100 |")
    assert (
        "| durable ≤ 1.5x the raw write of the same bytes | 2.000 s | 1.000 s | 2.00x "
        "| ≤ 1.5x | **not met** |" in table
    )
    assert "256 MiB of state per rank" in table


def test_markdown_marks_missing_elastra() -> None:
    figures = results(lazy={"missing": "x"}, missing="not importable")
    del figures["s3"]
    table = report.render_markdown(figures)
    assert (
        "| elastra | missing | missing | missing | missing | missing | missing | missing | - | - | - |"
        in table
    )
    assert "**not measured**" in table and "| met |" not in table


DOC = "# Benchmarks\n\n## localcluster\n<!-- BEGIN localcluster -->\nL\n<!-- END localcluster -->\n"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        pytest.param(
            "# B\n<!-- BEGIN checkpoint -->\nold\n<!-- END checkpoint -->\ntail\n",
            "# B\n<!-- BEGIN checkpoint -->\nnew\n<!-- END checkpoint -->\ntail\n",
            id="replaces-only-between-markers",
        ),
        pytest.param(
            DOC,
            DOC + "\n## checkpoint\n\n<!-- BEGIN checkpoint -->\nnew\n<!-- END checkpoint -->\n",
            id="appends-a-section-when-markers-missing",
        ),
        pytest.param(
            "<!-- BEGIN checkpoint -->\nold\n<!-- END checkpoint -->\n" + DOC,
            "<!-- BEGIN checkpoint -->\nnew\n<!-- END checkpoint -->\n" + DOC,
            id="leaves-other-sections-alone",
        ),
    ],
)
def test_replace_section(document: str, expected: str) -> None:
    assert report.replace_section(document, "checkpoint", "new\n") == expected


@pytest.mark.parametrize(
    "document",
    [
        pytest.param("<!-- BEGIN checkpoint -->\nonly the start\n", id="lone-begin"),
        pytest.param("<!-- END checkpoint -->\n<!-- BEGIN checkpoint -->\n", id="markers-reversed"),
        pytest.param("<!-- BEGIN checkpoint -->\n<!-- END checkpoint -->\n" * 2, id="duplicate-markers"),
    ],
)
def test_replace_section_refuses_damaged_markers(document: str) -> None:
    with pytest.raises(ValueError, match="checkpoint"):
        report.replace_section(document, "checkpoint", "new\n")


def test_run_all_discovers_known_benchmarks_first_and_skips_helpers(tmp_path: pathlib.Path) -> None:
    for name in (
        "_report.py",
        "_checkpoint_worker.py",
        "zeta.py",
        "localcluster.py",
        "checkpoint.py",
        "run_all.py",
        "alpha.py",
        "notes.md",
    ):
        (tmp_path / name).write_text("")
    assert run_all.discover(tmp_path) == ["checkpoint", "localcluster", "alpha", "zeta"]


def test_torch_save_row_says_it_cannot_reshard() -> None:
    table = report.render_markdown(results(**GOOD_ELASTRA))
    torch_row = next(line for line in table.splitlines() if line.startswith("| torch_save |"))
    assert torch_row.startswith(
        "| torch_save | 2.000 | missing | missing | 2.500 | 1.500 | cannot reshard | 900 |"
    )


def test_run_all_reports_a_skipped_benchmark_without_failing(tmp_path: pathlib.Path) -> None:
    """A benchmark that cannot run here (gpu.py without CUDA) exits 77: skipped, and `make bench` passes;
    any other non-zero status still fails it."""
    import subprocess

    for name, body in (
        ("skips", "def main():\n    return 77\n"),
        ("works", "def main():\n    return None\n"),
    ):
        (tmp_path / f"{name}.py").write_text(body)
    (tmp_path / "run_all.py").write_text((BENCHMARKS / "run_all.py").read_text())
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run_all.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout
    assert "skips            skipped" in done.stdout and "works            ok" in done.stdout
    (tmp_path / "fails.py").write_text("def main():\n    return 3\n")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run_all.py")], capture_output=True, text=True, check=False
    )
    assert done.returncode == 1 and "FAILED (exit 3)" in done.stdout


def test_gpu_benchmark_skips_cleanly_without_cuda() -> None:
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the benchmark would run")
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py")], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 77, done.stderr
    assert "skipped: no CUDA device" in done.stdout


def test_gpu_benchmark_runs_end_to_end_on_cpu_tensors(tmp_path: pathlib.Path) -> None:
    """The GPU benchmark's own logic (every method saves, restores and is checked bit for bit) on a tiny
    CPU state; its figures come only from a GPU run."""
    import json
    import subprocess

    out = tmp_path / "gpu.json"
    args = [
        "--smoke-on-cpu",
        "--state-gib",
        "0.004",
        "--matmuls",
        "1",
        "--compute-size",
        "16",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu.py"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["smoke_on_cpu"] is True
    assert set(result["methods"]) == {"torch_save", "dcp_async_save", "elastra", "elastra_lazy"}
    assert all(len(m["stall_s"]) == 3 and m["restore_s"] > 0 for m in result["methods"].values())
