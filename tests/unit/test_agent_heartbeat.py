"""The agent's report is its pod's heartbeat (issue 14): written at least every report interval even
when nothing changed, in every state, so the operator can tell a silent (frozen, cut-off) pod."""

from __future__ import annotations

import pathlib
import time

import pytest

from elastra.agent.agent import Agent
from elastra.agent.config import agent_config_from_env
from elastra.api.membership import AGENT_ANNOTATION, AgentReport, AgentState


class Recorder:
    """A `Reporter` at the agent's own boundary: keeps what would be patched on the pod."""

    def __init__(self) -> None:
        self.reports: list[AgentReport] = []

    def start(self) -> None:
        return None

    def report(self, annotations: dict[str, str]) -> None:
        if AGENT_ANNOTATION in annotations:
            self.reports.append(AgentReport.model_validate_json(annotations[AGENT_ANNOTATION]))

    def stop(self, flush_timeout: float = 3.0) -> None:
        return None


@pytest.mark.parametrize(
    ("state", "step"),
    [
        pytest.param(AgentState.WAITING, None, id="waiting-no-step"),
        pytest.param(AgentState.RESTORING, None, id="long-restore-no-step"),
        pytest.param(AgentState.RUNNING, 40, id="blocked-in-a-collective-same-step"),
    ],
)
def test_unchanged_agent_still_reports_every_interval(
    tmp_path: pathlib.Path, state: AgentState, step: int | None
) -> None:
    env = {
        "ELASTRA_JOB": "tj",
        "POD_NAMESPACE": "ns",
        "POD_NAME": "tj-w-0",
        "ELASTRA_CONTROL_DIR": str(tmp_path),
        "ELASTRA_REPORT_INTERVAL_SECONDS": "0.05",
        "ELASTRA_METRICS_PORT": "0",
        "ELASTRA_ZYGOTE": "0",
    }
    link = Recorder()
    agent = Agent(agent_config_from_env(env), ["true"], link=link)
    agent.state, agent.step = state, step
    agent._report(force=True)
    agent._report()  # nothing changed, interval not over: no write
    assert len(link.reports) == 1
    time.sleep(0.06)
    agent._report()  # nothing changed, interval over: the heartbeat
    assert len(link.reports) == 2
    assert link.reports[1].time > link.reports[0].time and link.reports[1].state is state
