"""The pod agent's pure parts: decisions on membership records, worker env, control messages, config."""

from __future__ import annotations

import datetime as dt

import pytest

from elastra.agent.config import agent_config_from_env
from elastra.agent.decide import Kind, Local, control_message, decide, worker_env
from elastra.api.membership import Membership

POD = "tj-w-1"


def _membership(
    generation: int = 3,
    phase: str = "Run",
    *,
    pods: tuple[str, ...] = ("tj-w-0", POD),
    nprocs: int = 2,
    restore: bool = True,
    request: bool = False,
) -> Membership:
    raw: dict[str, object] = {
        "generation": generation,
        "phase": phase,
        "worldSize": len(pods) * nprocs,
        "nprocPerPod": nprocs,
        "masterAddr": "127.0.0.5",
        "masterPort": 29511,
        "members": [
            {
                "pod": p,
                "node": f"node-{i}",
                "podIP": f"127.0.0.{5 + i}",
                "rankStart": i * nprocs,
                "nprocs": nprocs,
            }
            for i, p in enumerate(pods)
        ],
        "restore": {"checkpoint": "tj-step-120", "step": 120, "uri": "s3://b/p/step-120"}
        if restore
        else None,
        "checkpointRequest": {"id": "r-7", "reason": "ScaleUp", "requestedAt": "2026-01-01T00:00:00Z"}
        if request
        else None,
    }
    return Membership.model_validate(raw)


IDLE = Local(generation=None, running=False, outcome=None)
RUNNING_3 = Local(generation=3, running=True, outcome=None)


@pytest.mark.parametrize(
    ("membership", "local", "kind", "extra"),
    [
        pytest.param(None, IDLE, Kind.KEEP, {}, id="no-record-waits"),
        pytest.param(_membership(), IDLE, Kind.START, {"generation": 3}, id="first-generation-starts"),
        pytest.param(
            _membership(4), RUNNING_3, Kind.START, {"generation": 4}, id="newer-generation-restarts"
        ),
        pytest.param(_membership(3), RUNNING_3, Kind.KEEP, {}, id="same-generation-keeps"),
        pytest.param(_membership(2), RUNNING_3, Kind.KEEP, {}, id="stale-record-ignored"),
        pytest.param(
            _membership(3),
            Local(generation=3, running=False, outcome=1),
            Kind.KEEP,
            {},
            id="failed-workers-not-restarted-in-same-generation",
        ),
        pytest.param(_membership(4, pods=("tj-w-0",)), RUNNING_3, Kind.STOP, {}, id="dropped-member-stops"),
        pytest.param(_membership(4, pods=("tj-w-0",)), IDLE, Kind.KEEP, {}, id="non-member-waits"),
        pytest.param(_membership(4, "Hold"), RUNNING_3, Kind.STOP, {}, id="hold-stops"),
        pytest.param(_membership(4, "Hold"), IDLE, Kind.KEEP, {}, id="hold-idle-keeps"),
        pytest.param(
            _membership(4, "Done"),
            Local(generation=3, running=False, outcome=0),
            Kind.EXIT,
            {"exit_code": 0},
            id="done-exits-with-success",
        ),
        pytest.param(
            _membership(4, "Done"),
            Local(generation=3, running=False, outcome=76),
            Kind.EXIT,
            {"exit_code": 76},
            id="done-exits-with-workers-code",
        ),
        pytest.param(_membership(4, "Done"), IDLE, Kind.EXIT, {"exit_code": 0}, id="done-before-start-exits"),
    ],
)
def test_decide(membership: Membership | None, local: Local, kind: Kind, extra: dict[str, object]) -> None:
    action = decide(membership, POD, local)
    assert action.kind is kind, action.why
    for key, value in extra.items():
        assert getattr(action, key) == value
    if kind is Kind.START:
        assert action.member is not None and action.member.pod == POD


@pytest.mark.parametrize(
    ("restore", "local_rank", "expected"),
    [
        pytest.param(
            True, 0, {"RANK": "2", "LOCAL_RANK": "0", "ELASTRA_RESTORE_STEP": "120"}, id="restore-rank2"
        ),
        pytest.param(
            True,
            1,
            {"RANK": "3", "LOCAL_RANK": "1", "ELASTRA_RESTORE_URI": "s3://b/p/step-120"},
            id="second-local-rank",
        ),
        pytest.param(False, 0, {"RANK": "2", "ELASTRA_RESTORE_STEP": None}, id="fresh-has-no-restore"),
    ],
)
def test_worker_env(restore: bool, local_rank: int, expected: dict[str, str | None]) -> None:
    membership = _membership(restore=restore)
    member = membership.member(POD)
    assert member is not None
    base = {"PATH": "/bin", "RANK": "99", "ELASTRA_RESTORE_STEP": "7", "ELASTRA_JOB": "tj"}
    env = worker_env(base, membership, member, local_rank, "/tmp/ctl")
    common = {
        "WORLD_SIZE": "4",
        "MASTER_ADDR": "127.0.0.5",
        "MASTER_PORT": "29511",
        "ELASTRA_GENERATION": "3",
        "ELASTRA_CONTROL_DIR": "/tmp/ctl",
        "PATH": "/bin",
        "ELASTRA_JOB": "tj",
    }
    for key, value in {**common, **expected}.items():
        assert env.get(key) == value, key


@pytest.mark.parametrize(
    ("request_", "stop", "request_id", "request_time"),
    [
        pytest.param(False, False, None, 0.0, id="no-request"),
        pytest.param(True, False, "r-7", dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp(), id="request"),
        pytest.param(
            True, True, "r-7", dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp(), id="request-and-stop"
        ),
    ],
)
def test_control_message(request_: bool, stop: bool, request_id: str | None, request_time: float) -> None:
    message = control_message(_membership(request=request_), 3, stop=stop)
    assert (message.generation, message.request_id, message.request_time, message.stop) == (
        3,
        request_id,
        request_time,
        stop,
    )


BASE_ENV = {"ELASTRA_JOB": "tj", "POD_NAME": POD, "POD_NAMESPACE": "ns"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        pytest.param({"POD_NAME": ""}, "POD_NAME", id="no-pod-name"),
        pytest.param({"ELASTRA_JOB": ""}, "ELASTRA_JOB", id="no-job"),
        pytest.param({"ELASTRA_NPROC_PER_POD": "0"}, "NPROC", id="zero-nproc"),
        pytest.param({"ELASTRA_METRICS_PORT": "x"}, "METRICS_PORT", id="bad-port"),
    ],
)
def test_agent_config_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        agent_config_from_env({**BASE_ENV, **env})


def test_agent_config_defaults() -> None:
    cfg = agent_config_from_env(BASE_ENV)
    assert (cfg.nproc, cfg.metrics_port, cfg.grace_seconds, cfg.control_dir) == (
        1,
        9400,
        30,
        f"/tmp/elastra-{POD}",
    )
