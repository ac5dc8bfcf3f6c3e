"""The session's configuration from the agent's environment, and the interval policy."""

from __future__ import annotations

import pytest

from elastra.session.config import ConfigError, from_env, save_due

AGENT_ENV = {
    "RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.5", "MASTER_PORT": "29500",
    "ELASTRA_GENERATION": "3", "ELASTRA_RESTORE_STEP": "120", "ELASTRA_CONTROL_DIR": "/tmp/ctl",
    "ELASTRA_CHECKPOINT_URI": "s3://b/p", "ELASTRA_CHECKPOINT_EVERY_STEPS": "50",
}  # fmt: skip


def test_agent_env_is_read() -> None:
    cfg = from_env(AGENT_ENV)
    assert (cfg.rank, cfg.world_size, cfg.generation, cfg.restore_step) == (2, 4, 3, 120)
    assert cfg.under_agent and cfg.every_steps == 50 and cfg.keep == 3


def test_standalone_defaults_to_a_world_of_one() -> None:
    cfg = from_env({})
    assert (cfg.rank, cfg.world_size, cfg.under_agent, cfg.checkpoint_uri) == (0, 1, False, None)


def test_overrides_win_over_env_but_none_does_not() -> None:
    cfg = from_env(AGENT_ENV, checkpoint_uri="/tmp/ck", every_steps=None)
    assert (cfg.checkpoint_uri, cfg.every_steps) == ("/tmp/ck", 50)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        pytest.param({"RANK": "4"}, "outside WORLD_SIZE", id="rank-outside-world"),
        pytest.param({"WORLD_SIZE": "0"}, "WORLD_SIZE", id="empty-world"),
        pytest.param({"MASTER_ADDR": ""}, "MASTER_ADDR", id="no-master"),
        pytest.param({"RANK": "two"}, "integer", id="non-integer"),
        pytest.param({"ELASTRA_CHECKPOINT_URI": ""}, "CHECKPOINT_URI", id="restore-without-uri"),
        pytest.param({"ELASTRA_CHECKPOINT_EVERY_STEPS": "0"}, "EVERY_STEPS", id="zero-interval"),
        pytest.param({"ELASTRA_CHECKPOINT_EVERY_SECONDS": "-1"}, "EVERY_SECONDS", id="negative-seconds"),
        pytest.param({"ELASTRA_CHECKPOINT_KEEP": "0"}, "KEEP", id="keep-none"),
        pytest.param({"ELASTRA_LOCAL_KEEP": "0"}, "LOCAL_KEEP", id="local-keep-none"),
    ],
)
def test_invalid_env_is_refused_with_the_variable_named(change: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_env({**AGENT_ENV, **change})


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="unknown"):
        from_env({}, every_minutes=3)


@pytest.mark.parametrize(
    ("completed", "every_steps", "every_seconds", "since", "due"),
    [
        pytest.param(50, 50, None, 0.0, True, id="on-the-step-interval"),
        pytest.param(51, 50, None, 999.0, False, id="off-the-step-interval"),
        pytest.param(7, None, 30.0, 31.0, True, id="time-interval-passed"),
        pytest.param(7, None, 30.0, 29.0, False, id="time-interval-not-yet"),
        pytest.param(7, None, None, 1e9, False, id="no-policy-never"),
    ],
)
def test_save_due(
    completed: int, every_steps: int | None, every_seconds: float | None, since: float, due: bool
) -> None:
    assert save_due(completed=completed, every_steps=every_steps, every_seconds=every_seconds,
                    seconds_since_save=since) is due  # fmt: skip
