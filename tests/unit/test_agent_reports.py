"""The agent's report pieces: failure reasons, exit-code contract with the session, metrics, file reads."""

from __future__ import annotations

import pathlib

import pytest
from prometheus_client import generate_latest

from elastra.agent import agent as agent_module
from elastra.agent.metrics import TrainerMetrics
from elastra.control import ControlMessage, FileReader, SaveRecord, WorkerStatus, write_atomic


@pytest.mark.parametrize(
    ("code", "detail", "expected"),
    [
        pytest.param(
            75,
            "RuntimeError: gloo",
            "PeerLost: worker rank 3 exited with code 75: RuntimeError: gloo",
            id="peer-lost-is-marked",
        ),
        pytest.param(76, None, "PeerLost: worker rank 3 exited with code 76", id="peer-stopped-is-marked"),
        pytest.param(
            1, "ValueError: bad", "worker rank 3 exited with code 1: ValueError: bad", id="user-error"
        ),
        pytest.param(137, None, "worker rank 3 exited with code 137", id="killed"),
    ],
)
def test_failure_reason(code: int, detail: str | None, expected: str) -> None:
    assert agent_module.failure_reason(3, code, detail) == expected


def test_exit_codes_match_the_session() -> None:
    """The agent cannot import the session (independent layers): the numbers must agree."""
    from elastra.session import EXIT_PEER_LOST, EXIT_PEER_STOPPED

    assert (agent_module.EXIT_PEER_LOST, agent_module.EXIT_PEER_STOPPED) == (
        EXIT_PEER_LOST,
        EXIT_PEER_STOPPED,
    )


def _series(metrics: TrainerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def _value(text: str, prefix: str) -> float:
    line = next(ln for ln in text.splitlines() if ln.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


def test_metrics_fold_cumulative_statuses_once() -> None:
    metrics = TrainerMetrics(job="tj", pod="p0")
    first = WorkerStatus(
        rank=0,
        generation=2,
        step=10,
        loss=2.5,
        step_seconds=0.1,
        steps_total=10,
        tokens_per_second=100.0,
        saves=(SaveRecord(step=10, stall_seconds=0.02),),
        bytes_by_tier={"local": 500, "durable": 500},
        skipped_by_policy={"skip": 0, "wait": 1},
        restore_seconds=1.5,
        restore_tier="local",
    )
    other_rank = WorkerStatus(
        rank=1, generation=2, step=9, tokens_per_second=50.0, bytes_by_tier={"durable": 300}
    )
    metrics.update([first, other_rank])
    metrics.update([first, other_rank])  # the same statuses again add nothing
    text = _series(metrics)
    labels = 'job="tj",pod="p0"'
    assert _value(text, f"elastra_trainer_step{{{labels}}}") == 10
    assert _value(text, f"elastra_trainer_loss{{{labels}}}") == 2.5
    assert _value(text, f"elastra_trainer_tokens_per_second{{{labels}}}") == 150
    assert _value(text, f"elastra_trainer_step_seconds_count{{{labels}}}") == 10
    assert _value(text, f"elastra_trainer_checkpoint_stall_seconds_count{{{labels}}}") == 1
    assert _value(text, f'elastra_trainer_checkpoint_bytes_total{{{labels},tier="durable"}}') == 800
    assert _value(text, f'elastra_trainer_checkpoint_skipped_total{{{labels},policy="wait"}}') == 1
    assert _value(text, f'elastra_trainer_checkpoint_skipped_total{{{labels},policy="skip"}}') == 0
    assert _value(text, f'elastra_trainer_restore_seconds_count{{{labels},tier="local"}}') == 1

    later = first.model_copy(
        update={
            "step": 20,
            "steps_total": 20,
            "bytes_by_tier": {"local": 900, "durable": 900},
            "saves": (*first.saves, SaveRecord(step=20, stall_seconds=0.03)),
        }
    )
    metrics.update([later, other_rank])
    text = _series(metrics)
    assert _value(text, f"elastra_trainer_step_seconds_count{{{labels}}}") == 20
    assert _value(text, f"elastra_trainer_checkpoint_stall_seconds_count{{{labels}}}") == 2
    assert _value(text, f'elastra_trainer_checkpoint_bytes_total{{{labels},tier="durable"}}') == 1200

    # A new generation is a new process: its counters start again from zero.
    metrics.update(
        [
            WorkerStatus(
                rank=0, generation=3, step=21, steps_total=1, step_seconds=0.1, bytes_by_tier={"durable": 100}
            )
        ]
    )
    text = _series(metrics)
    assert _value(text, f'elastra_trainer_checkpoint_bytes_total{{{labels},tier="durable"}}') == 1300


def test_file_reader_parses_only_changes_and_keeps_the_last_good(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "control.json"
    reader = FileReader(path, ControlMessage)
    assert reader.poll() is None
    write_atomic(path, ControlMessage(generation=1, request_id="r-1", request_time=5.0))
    first = reader.poll()
    assert first is not None and first.request_id == "r-1"
    assert reader.poll() is first  # unchanged file: the cached object, no parse
    path.write_text("{not json")
    assert reader.poll() is first and reader.error is not None
    write_atomic(path, ControlMessage(generation=2, stop=True))
    second = reader.poll()
    assert second is not None and second.stop and reader.error is None
    assert not list(tmp_path.glob(".control.json.*")), "a temporary file was left behind"


@pytest.mark.parametrize(
    ("changed", "since", "force", "due"),
    [
        pytest.param(False, 0.5, False, False, id="quiet-and-recent"),
        pytest.param(True, 0.5, False, True, id="a-change"),
        pytest.param(False, 0.5, True, True, id="forced"),
        pytest.param(False, 3.0, False, True, id="heartbeat-at-the-interval"),
        pytest.param(False, 9.0, False, True, id="heartbeat-overdue"),
    ],
)
def test_report_due_on_change_force_or_heartbeat(changed: bool, since: float, force: bool, due: bool) -> None:
    assert agent_module.report_due(changed=changed, since_last_s=since, interval_s=3.0, force=force) is due


@pytest.mark.parametrize(
    ("last", "commit", "reported"),
    [
        pytest.param(None, {"step": 40, "manifestDigest": "sha256:0a"}, True, id="first-commit"),
        pytest.param(
            {"step": 40, "manifestDigest": "sha256:0a"}, {"step": 60, "manifestDigest": "sha256:0c"}, True,
            id="a-newer-step",
        ),
        pytest.param(
            {"step": 40, "manifestDigest": "sha256:0a"}, {"step": 40, "manifestDigest": "sha256:0b"}, True,
            id="the-same-step-saved-again-after-a-fallback",
        ),
        pytest.param(
            {"step": 40, "manifestDigest": "sha256:0a"}, {"step": 40, "manifestDigest": "sha256:0a"}, False,
            id="the-same-commit-read-again",
        ),
    ],
)  # fmt: skip
def test_commit_reported_once_per_save(
    last: dict[str, object] | None, commit: dict[str, object], reported: bool
) -> None:
    previous = agent_module.commit_key(last) if last is not None else None
    assert (agent_module.commit_key(commit) != previous) is reported
