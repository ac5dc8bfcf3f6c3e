"""The merge-search example at its small size: parent, two forked children, Optuna's Pareto front, the
PNG, the merged checkpoint re-evaluated from disk, and a verdict that agrees with its own numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]
RUN = Path(__file__).resolve().parents[2] / "examples" / "merge_search" / "run.py"


def test_merge_search_example_small(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(RUN), "--small", "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=380,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["trials"] == 6 and set(summary["children"]) == {"child A", "child B"}
    assert (tmp_path / "work" / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    front = summary["front"]
    assert front
    for point in front:  # nothing on the front is dominated by another front point
        assert not any(
            o["loss_a"] <= point["loss_a"] and o["loss_b"] <= point["loss_b"] and o != point for o in front
        )
    best = summary["best_merge"]
    sums = [c["loss_a"] + c["loss_b"] for c in summary["children"].values()]
    assert summary["beats_both_children_on_sum"] == (best["sum"] < min(sums))
    verdict = "beats both children" if summary["beats_both_children_on_sum"] else "no merge tried beats"
    assert f"RESULT: {'the best merge ' if 'beats both' in verdict else ''}{verdict}" in done.stdout
    disk = summary["best_merge_from_disk"]
    assert disk["loss_a"] == pytest.approx(best["loss_a"], abs=1e-5)
    assert disk["loss_b"] == pytest.approx(best["loss_b"], abs=1e-5)
    assert "Pareto front" in done.stdout and "forked from" in done.stdout
