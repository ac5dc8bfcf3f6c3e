"""Pure helpers of the checkpoint benchmark: summaries, targets, the markdown table, the doc section.

Nothing here does I/O or imports torch: every function takes plain numbers and dicts and returns new
ones, so `tests/unit/test_bench_report.py` checks them directly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

METHODS = ("torch_save", "dcp_save", "dcp_async_save", "torch_checkpointing", "elastra", "elastra_lazy")
"""The methods compared, in table order; `elastra` (eager staging, the default) and `elastra_lazy`
(`save(..., staging="lazy")` + `fence()` before the mutation) are the engine under test."""

ELASTRA_MODES = {"elastra": "", "elastra_lazy": "lazy staging: "}
"""Elastra's entries with a stall target, and the prefix of their target names."""

PEERS = ("torch_save", "dcp_save", "dcp_async_save", "torch_checkpointing")
"""The methods that are not Elastra: "the best peer" is the best of these."""

RSS_GROWTH_TOLERANCE = 0.05
"""RSS after the last save may exceed RSS after the first save by this fraction of the per-rank state
(allocator noise) and still count as "does not grow"."""

MIB = 1024 * 1024


def median(values: Sequence[float]) -> float:
    """The median of `values`; a clear error for an empty list (a benchmark that measured nothing)."""
    if not values:
        raise ValueError("median of no measurements: the benchmark recorded no samples")
    return float(statistics.median(values))


def slowest_rank_per_round(per_rank: Sequence[Sequence[float]]) -> list[float]:
    """Per round (save i), the time of the slowest rank: a step of a collective job waits for all ranks.

    `per_rank[r][i]` is rank r's time in round i; all ranks must report the same number of rounds.
    """
    if not per_rank:
        raise ValueError("no ranks reported")
    rounds = {len(times) for times in per_rank}
    if len(rounds) != 1:
        raise ValueError(f"ranks reported different numbers of rounds: {sorted(rounds)}")
    return [max(times) for times in zip(*per_rank, strict=True)]


def rss_growth(rss_after_each_save: Sequence[int]) -> int:
    """Bytes RSS grew from after the first save to after the last one (negative when it shrank)."""
    if len(rss_after_each_save) < 2:
        raise ValueError("RSS growth needs at least two samples")
    return int(rss_after_each_save[-1] - rss_after_each_save[0])


def ratio(value: float | None, reference: float | None) -> float | None:
    """value / reference, or None when either is missing or the reference is not positive."""
    if value is None or reference is None or reference <= 0 or math.isnan(value):
        return None
    return value / reference


@dataclass(frozen=True, slots=True)
class Target:
    """One target of the issue, evaluated against the recorded numbers."""

    name: str
    """What the target says, in words."""
    value: float | None
    """Elastra's figure (seconds, or bytes for RSS growth); None when Elastra was not measured."""
    reference: float | None
    """The figure it is compared with (a peer, a floor, or the allowed growth in bytes)."""
    limit: float
    """The allowed ratio value / reference (for "faster than": strictly below this)."""
    strict: bool
    """True when the ratio must be strictly below `limit`, False when at most `limit`."""

    @property
    def ratio(self) -> float | None:
        """value / reference, None when unknown."""
        return ratio(self.value, self.reference)

    @property
    def met(self) -> bool | None:
        """Whether the target is met; None when it cannot be decided (a figure is missing)."""
        r = self.ratio
        if r is None:
            return None
        return r < self.limit if self.strict else r <= self.limit


def _figure(methods: Mapping[str, Mapping[str, object]], method: str, key: str) -> float | None:
    entry = methods.get(method)
    if not entry:
        return None
    value = entry.get(key)
    return float(value) if isinstance(value, int | float) else None


def evaluate_targets(results: Mapping[str, object]) -> list[Target]:
    """The issue's targets, from a results dict shaped like `benchmarks/results/checkpoint.json`."""
    methods = results.get("methods")
    floors = results.get("floors")
    if not isinstance(methods, Mapping) or not isinstance(floors, Mapping):
        raise ValueError("results need 'methods' and 'floors' mappings")
    growth = _figure(methods, "elastra", "rss_growth_bytes")
    state_bytes = results.get("state_bytes_per_rank")
    allowed_growth = (
        RSS_GROWTH_TOLERANCE * float(state_bytes) if isinstance(state_bytes, int | float) else None
    )
    stall_targets = [
        Target(
            name=f"{prefix}{name}",
            value=_figure(methods, mode, "stall_s"),
            reference=reference,
            limit=limit,
            strict=False,
        )
        for mode, prefix in ELASTRA_MODES.items()
        for name, reference, limit in (
            ("stall ≤ 1/4 of DCP async_save's", _figure(methods, "dcp_async_save", "stall_s"), 0.25),
            ("stall ≤ 1/10 of torch.save's", _figure(methods, "torch_save", "stall_s"), 0.10),
            ("stall ≤ 2x the memcpy floor", _number(floors.get("memcpy_s")), 2.0),
        )
    ]
    # RSS growth is compared as growth / allowed <= 1; a shrink (negative growth) is trivially met.
    return [
        *stall_targets,
        *_background_targets(methods, floors, results.get("s3")),
        Target(
            name="durable ≤ 1.5x the raw write of the same bytes",
            value=_figure(methods, "elastra", "durable_s"),
            reference=_number(floors.get("disk_write_s")),
            limit=1.5,
            strict=False,
        ),
        Target(
            name="N→M restore (2→1) faster than DCP's load",
            value=_figure(methods, "elastra", "restore_s"),
            reference=_figure(methods, "dcp_save", "restore_s"),
            limit=1.0,
            strict=True,
        ),
        Target(
            name="N→M restore (2→2 resharded) faster than DCP's load",
            value=_figure(methods, "elastra", "restore_resharded_s"),
            reference=_figure(methods, "dcp_save", "restore_resharded_s"),
            limit=1.0,
            strict=True,
        ),
        Target(
            name="N→M restore (2→1) ≤ 1.3x the raw read of the bytes needed",
            value=_figure(methods, "elastra", "restore_s"),
            reference=_number(floors.get("disk_read_s")),
            limit=1.3,
            strict=False,
        ),
        Target(
            name=f"RSS does not grow across 20 saves (≤ {RSS_GROWTH_TOLERANCE:.0%} of the state)",
            value=None if growth is None else max(growth, 0.0),
            reference=allowed_growth,
            limit=1.0,
            strict=False,
        ),
    ]


def best_peer(methods: Mapping[str, Mapping[str, object]], key: str) -> tuple[str, float] | None:
    """The peer with the lowest `key` figure, and that figure; None when no peer has it."""
    figures = [(name, f) for name in PEERS if (f := _figure(methods, name, key)) is not None]
    return min(figures, key=lambda pair: pair[1]) if figures else None


def _background_targets(
    methods: Mapping[str, Mapping[str, object]], floors: Mapping[str, object], s3: object
) -> list[Target]:
    """Issue 15's targets: the background cost against the best peer and torch_checkpointing, the
    durable and resharded-restore floors, and S3 against raw boto3 on the same bytes."""
    best = best_peer(methods, "loop_overhead_s")
    s3_figures = s3 if isinstance(s3, Mapping) else {}

    def tc(key: str) -> float | None:
        return _figure(methods, "torch_checkpointing", key)

    def target(name: str, value: float | None, reference: float | None, limit: float) -> Target:
        return Target(name=name, value=value, reference=reference, limit=limit, strict=False)

    lazy = "elastra_lazy"
    return [
        target(
            f"lazy staging: loop overhead ≤ 0.5x the best peer's ({best[0] if best else 'none measured'})",
            _figure(methods, lazy, "loop_overhead_s"),
            best[1] if best else None,
            0.5,
        ),
        target(
            "lazy staging: stall ≤ torch_checkpointing's",
            _figure(methods, lazy, "stall_s"),
            tc("stall_s"),
            1.0,
        ),
        target(
            "lazy staging: loop overhead ≤ torch_checkpointing's",
            _figure(methods, lazy, "loop_overhead_s"),
            tc("loop_overhead_s"),
            1.0,
        ),
        target(
            "restore (2→1) ≤ torch_checkpointing's",
            _figure(methods, "elastra", "restore_s"),
            tc("restore_s"),
            1.0,
        ),
        target(
            "restore (2→2 resharded) ≤ torch_checkpointing's",
            _figure(methods, "elastra", "restore_resharded_s"),
            tc("restore_resharded_s"),
            1.0,
        ),
        target(
            "durable ≤ 1.3x the raw write of the same bytes",
            _figure(methods, "elastra", "durable_s"),
            _number(floors.get("disk_write_s")),
            1.3,
        ),
        target(
            "restore (2→2 resharded) ≤ 1.3x the raw read of the bytes needed",
            _figure(methods, "elastra", "restore_resharded_s"),
            _figure(methods, "elastra", "raw_read_needed_resharded_s"),
            1.3,
        ),
        target(
            "S3 durable ≤ 1.3x raw boto3 upload of the same bytes",
            _number(s3_figures.get("durable_s")),
            _number(s3_figures.get("raw_upload_s")),
            1.3,
        ),
        target(
            "S3 restore (2→1) ≤ 1.3x raw boto3 download of the same bytes",
            _number(s3_figures.get("restore_s")),
            _number(s3_figures.get("raw_download_s")),
            1.3,
        ),
    ]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _seconds(value: float | None) -> str:
    return "missing" if value is None else f"{value:.3f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "**not measured**"}[met]


def render_markdown(results: Mapping[str, object]) -> str:
    """The checkpoint section of docs/benchmarks.md: setup line, methods table, floors, targets."""
    methods = results.get("methods")
    floors = results.get("floors")
    if not isinstance(methods, Mapping) or not isinstance(floors, Mapping):
        raise ValueError("results need 'methods' and 'floors' mappings")
    memcpy = _number(floors.get("memcpy_s"))
    write = _number(floors.get("disk_write_s"))
    read = _number(floors.get("disk_read_s"))
    needed = _figure(methods, "elastra", "raw_read_needed_resharded_s")
    lines = [
        f"Recorded {results.get('date', '?')} on {_machine_line(results.get('machine'))}; "
        f"{results.get('ranks', '?')} gloo ranks, "
        f"{_mib(results.get('state_bytes_per_rank'))} MiB of state per rank.",
        "",
        "| method | stall (s, median) | loop overhead (s, median) | CPU s per save (user+sys, per rank) "
        "| durable (s, median) | restore 2→1 (s) "
        "| restore 2→2 resharded (s) | peak RSS (MiB) | stall / memcpy | durable / raw write "
        "| restore / raw read |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in METHODS:
        stall = _figure(methods, method, "stall_s")
        overhead = _figure(methods, method, "loop_overhead_s")
        cpu = _figure(methods, method, "cpu_s_per_save")
        durable = _figure(methods, method, "durable_s")
        restore = _figure(methods, method, "restore_s")
        rss = _figure(methods, method, "peak_rss_bytes")
        resharded = _figure(methods, method, "restore_resharded_s")
        cannot = method == "torch_save" and restore is not None
        lines.append(
            f"| {method} | {_seconds(stall)} | {_seconds(overhead)} | {_seconds(cpu)} | {_seconds(durable)} "
            f"| {_seconds(restore)} "
            f"| {'cannot reshard' if cannot else _seconds(resharded)} "
            f"| {'missing' if rss is None else f'{rss / MIB:.0f}'} | {_times(ratio(stall, memcpy))} "
            f"| {_times(ratio(durable, write))} | {_times(ratio(restore, read))} |"
        )
    lines += [
        "",
        f"Floors: memcpy {_seconds(memcpy)} s, raw write + fsync {_seconds(write)} s, "
        f"raw read (page cache evicted) {_seconds(read)} s; raw read of the bytes a 2→2 column restore "
        f"needs (every rank at once) {_seconds(needed)} s.",
        "",
        *_s3_lines(results.get("s3")),
        "| target | Elastra | compared with | ratio | limit | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for target in evaluate_targets(results):
        is_rss = target.name.startswith("RSS")
        value = _bytes_or_seconds(target.value, is_rss)
        reference = _bytes_or_seconds(target.reference, is_rss)
        op = "<" if target.strict else "≤"
        lines.append(
            f"| {target.name} | {value} | {reference} | {_times(target.ratio)} "
            f"| {op} {target.limit:g}x | {_verdict(target.met)} |"
        )
    return "\n".join(lines) + "\n"


def _s3_lines(s3: object) -> list[str]:
    """The S3 comparison table (Elastra vs raw boto3 on the same bytes), or a line saying why not."""
    if not isinstance(s3, Mapping):
        return ["S3: not measured.", ""]
    if "failed" in s3:
        return [f"S3: failed ({s3['failed']}).", ""]
    rows = (
        ("durable (save → committed)", "durable_s", "raw_upload_s", "upload_fileobj"),
        ("restore 2→1", "restore_s", "raw_download_s", "download_fileobj"),
    )
    lines = [
        f"S3 (moto over HTTP on this machine), {_mib(s3.get('state_bytes_per_rank'))} MiB of state per "
        f"rank, CPU {_seconds(_number(s3.get('cpu_s_per_save')))} s per save (per rank):",
        "",
        "| figure | Elastra (s, median) | raw boto3, same bytes (s, median) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, ours, raw, call in rows:
        value, reference = _number(s3.get(ours)), _number(s3.get(raw))
        times = _times(ratio(value, reference))
        lines.append(f"| {name} | {_seconds(value)} | {_seconds(reference)} ({call}) | {times} |")
    return [*lines, ""]


def _bytes_or_seconds(value: float | None, as_bytes: bool) -> str:
    if value is None:
        return "missing"
    return f"{value / MIB:.1f} MiB" if as_bytes else f"{value:.3f} s"


def _mib(value: object) -> str:
    return f"{float(value) / MIB:.0f}" if isinstance(value, int | float) else "?"


def _machine_line(machine: object) -> str:
    if not isinstance(machine, Mapping):
        return "an unrecorded machine"
    load = machine.get("load_average_at_start")
    shared = (
        f" (shared: 1-minute load average {float(load[0]):.1f} when the run started)"
        if isinstance(load, list) and load
        else ""
    )
    return (
        f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
        f"{_gib(machine.get('memory_bytes'))} GiB, Python {machine.get('python', '?')}, "
        f"torch {machine.get('torch', '?')}{shared}; Elastra engine at {machine.get('elastra_engine', '?')}"
    )


def _gib(value: object) -> str:
    return f"{float(value) / (1024 * MIB):.0f}" if isinstance(value, int | float) else "?"


def replace_section(document: str, name: str, body: str) -> str:
    """`document` with the text between `<!-- BEGIN name -->` and `<!-- END name -->` set to `body`.

    Other sections are left byte for byte. When the markers are missing, a new `## name` section
    with them is appended. A document with only one of the two markers, or with them out of order,
    is an error: rewriting it could destroy someone else's section.
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    has_begin, has_end = begin in document, end in document
    if not has_begin and not has_end:
        tail = "" if document.endswith("\n") or not document else "\n"
        return f"{document}{tail}\n## {name}\n\n{begin}\n{body}{end}\n"
    if has_begin != has_end or document.count(begin) != 1 or document.count(end) != 1:
        raise ValueError(f"docs section {name!r}: expected exactly one {begin} and one {end}")
    start = document.index(begin) + len(begin)
    stop = document.index(end)
    if stop < start:
        raise ValueError(f"docs section {name!r}: {end} comes before {begin}")
    return f"{document[:start]}\n{body}{document[stop:]}"
