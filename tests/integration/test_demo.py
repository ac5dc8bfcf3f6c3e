"""`elastra demo`: the summary it computes, the shortened run end to end, and Ctrl-C cleanup."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid

import pytest

from elastra.demo.report import Event, Generation, Observed, Sample, summarize

ELASTRA = pathlib.Path(sys.executable).parent / "elastra"


def _observed() -> Observed:
    o = Observed()
    o.generations = {
        1: Generation(generation=1, t=1.0, world=4, restore_step=None),
        2: Generation(generation=2, t=12.0, world=3, restore_step=20),
        3: Generation(generation=3, t=30.0, world=4, restore_step=50),
    }
    o.events = [
        Event(t=10.0, kind="kill", node="node-4", step=27),
        Event(t=25.0, kind="add", node="node-5", step=52),
    ]
    o.samples = [
        Sample(t=5.0, phase="Running", generation=1, world=4, step=20, loss=2.9),
        Sample(t=9.5, phase="Running", generation=1, world=4, step=27, loss=2.7),
        Sample(t=13.0, phase="Restoring", generation=2, world=3, step=20, loss=2.9),
        Sample(t=16.0, phase="Running", generation=2, world=3, step=22, loss=2.8),
        Sample(t=29.0, phase="Running", generation=2, world=3, step=52, loss=2.5),
        Sample(t=33.0, phase="Running", generation=3, world=4, step=51, loss=2.5),
        Sample(t=40.0, phase="Succeeded", generation=3, world=4, step=60, loss=2.4),
    ]
    o.commits = {20: {"stallSeconds": 0.02, "bytes": 100}, 50: {"stallSeconds": 0.04, "bytes": 120}}
    return o


def test_summary_from_observations() -> None:
    summary = summarize(_observed(), phase="Succeeded")
    assert summary["phase"] == "Succeeded"
    assert (summary["final_step"], summary["final_loss"]) == (60, 2.4)
    assert summary["world_sizes"] == [[5.0, 4], [13.0, 3], [33.0, 4]]
    assert summary["rescales"] == [
        {"from": 4, "to": 3, "reason": "NodeLost", "generation": 2, "recovery_s": 6.0, "steps_lost": 7},
        {"from": 3, "to": 4, "reason": "ScaleUp", "generation": 3, "recovery_s": 8.0, "steps_lost": 2},
    ]
    assert summary["checkpoints"] == {"count": 2, "median_stall_s": 0.03, "bytes": 120}


def _tagged_processes(tag: str) -> list[int]:
    """Processes whose environment carries `tag` (every process the demo started inherits it)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"ELASTRA_DEMO_TEST_TAG={tag}".encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _no_leftovers(tag: str, timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := _tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _start(out: pathlib.Path, tag: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "ELASTRA_DEMO_TEST_TAG": tag}
    return subprocess.Popen(
        [str(ELASTRA), "demo", "--out", str(out), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.timeout(300)
def test_quick_demo_shrinks_grows_and_reports(tmp_path: pathlib.Path) -> None:
    tag = uuid.uuid4().hex
    out = tmp_path / "demo-out"
    proc = _start(out, tag, "--quick")
    try:
        output, _ = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    assert proc.returncode == 0, output[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == "Succeeded"
    assert summary["final_step"] == 150
    assert summary["final_loss"] is not None and summary["final_loss"] < 3.0
    sizes = [size for _, size in summary["world_sizes"]]
    assert sizes == [4, 3, 4], summary["world_sizes"]
    assert [(r["from"], r["to"], r["reason"]) for r in summary["rescales"]] == [
        (4, 3, "NodeLost"),
        (3, 4, "ScaleUp"),
    ]
    assert all(r["recovery_s"] is not None and r["steps_lost"] >= 0 for r in summary["rescales"])
    assert summary["checkpoints"]["count"] >= 3 and summary["checkpoints"]["median_stall_s"] > 0
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report.png" in output
    assert _no_leftovers(tag) == []


@pytest.mark.timeout(120)
def test_ctrl_c_leaves_no_processes_behind(tmp_path: pathlib.Path) -> None:
    tag = uuid.uuid4().hex
    proc = _start(tmp_path / "demo-out", tag, "--quick")
    assert proc.stdout is not None
    try:
        for line in proc.stdout:  # wait until the job is applied
            if "applied TrainingJob" in line:
                break
        deadline = time.monotonic() + 30
        while len(_tagged_processes(tag)) < 10 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(_tagged_processes(tag)) >= 10, "the operator, agents and workers did not start"
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, rest[-3000:]
    assert "interrupted" in rest
    assert _no_leftovers(tag) == []
