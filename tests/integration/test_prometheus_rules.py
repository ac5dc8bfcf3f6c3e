"""The chart's alert rules and dashboard queries against the real Prometheus tools (Debian package
`prometheus`): promtool checks and unit-tests the rules rendered from the chart, and a real Prometheus
server, started with a generated config, parses every dashboard query and loads the rules."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_harness import (
    CHART,
    MISSING_PROMETHEUS,
    PROMETHEUS,
    PROMTOOL,
    RULES_FILE,
    api_get,
    dashboard_targets,
    rendered_rule_groups,
    start_prometheus,
    substitute,
    variable_selectors,
    write_rules,
)

ALERT_TESTS = CHART / "ci" / "alerts.test.yaml"
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make system-deps`")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason=MISSING_PROMETHEUS)
# What Grafana substitutes for the dashboard's variables when "All" is selected.
DASHBOARD_VARIABLES = {"$namespace": ".*", "$job": ".*", "$window": "1h", "$__rate_interval": "1m"}


def promtool(*args: str, cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


# ----------------------------------------------------------------------------- promtool


@needs_promtool
def test_rendered_rules_pass_promtool_check(tmp_path: pathlib.Path) -> None:
    groups = rendered_rule_groups()
    write_rules(tmp_path, groups)
    result = promtool("check", "rules", RULES_FILE, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    count = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {count} rules found" in result.stdout


@needs_promtool
def test_promtool_check_rejects_a_broken_rule(tmp_path: pathlib.Path) -> None:
    """Control: the check above can fail."""
    groups = rendered_rule_groups()
    groups[0]["rules"][0]["expr"] = "sum by (job) (increase(elastra_failures_total[30m]) >= "
    write_rules(tmp_path, groups)
    result = promtool("check", "rules", RULES_FILE, cwd=tmp_path)
    assert result.returncode != 0
    assert "parse error" in result.stdout + result.stderr


@needs_promtool
def test_every_alert_fires_on_its_synthetic_series_and_stays_quiet_otherwise(tmp_path: pathlib.Path) -> None:
    groups = rendered_rule_groups()
    write_rules(tmp_path, groups)
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert tested == {r["alert"] for g in groups for r in g["rules"]}, "every alert needs a promtool case"
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "alert"),
    [
        pytest.param(
            {"alerts": {"jobFailing": {"threshold": 5}}}, "ElastraJobFailingRepeatedly", id="failures"
        ),
        pytest.param(
            {"alerts": {"slowRecovery": {"maxRecoverySeconds": 600}}}, "ElastraSlowRecovery", id="recovery"
        ),
        pytest.param(
            {"alerts": {"checkpointStale": {"maxAgeSeconds": 9000}}}, "ElastraCheckpointStale", id="stale"
        ),
        pytest.param({"operatorJob": "someone-else"}, "ElastraOperatorDown", id="operator-job"),
    ],
)
@needs_promtool
def test_alert_cases_notice_a_changed_rule(
    tmp_path: pathlib.Path, values: dict[str, Any], alert: str
) -> None:
    """Control: with a threshold the cases were not written for, promtool reports that alert."""
    write_rules(tmp_path, rendered_rule_groups(values))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    result = promtool("test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert f"alertname: {alert}" in result.stdout + result.stderr


# ----------------------------------------------------------------------------- a real Prometheus


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback (scraping only itself) with the chart's rules loaded."""
    if PROMETHEUS is None:
        pytest.skip(MISSING_PROMETHEUS)
    with start_prometheus(tmp_path_factory.mktemp("prometheus"), []) as base:
        yield base


def dashboard_queries() -> list[Any]:
    params = [pytest.param(t.expr, id=t.name) for t in dashboard_targets()]
    # label_values(<selector>, <label>) is Grafana's; the selector inside must parse.
    params += [pytest.param(selector, id=f"variable-{name}") for name, selector in variable_selectors()]
    return params


@needs_prometheus
@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_parses(prometheus: str, expr: str) -> None:
    status, body = api_get(prometheus, "/api/v1/query", query=substitute(expr, DASHBOARD_VARIABLES))
    assert (status, body["status"]) == (200, "success"), body


@needs_prometheus
def test_prometheus_rejects_a_query_that_does_not_parse(prometheus: str) -> None:
    """Control: the query test above can fail."""
    status, body = api_get(prometheus, "/api/v1/query", query="sum by (job (elastra_job_world_size)")
    assert status == 400 and body["errorType"] == "bad_data"


@needs_prometheus
def test_prometheus_loads_and_evaluates_every_rule(prometheus: str) -> None:
    expected = {r["alert"] for g in rendered_rule_groups() for r in g["rules"]}
    deadline = time.monotonic() + 30
    while True:
        status, body = api_get(prometheus, "/api/v1/rules")
        assert status == 200
        rules = {r["name"]: r for g in body["data"]["groups"] for r in g["rules"]}
        assert set(rules) == expected
        if all(r.get("health") == "ok" for r in rules.values()):
            break
        bad = {name: r.get("lastError") for name, r in rules.items() if r.get("health") == "err"}
        assert not bad, bad
        assert time.monotonic() < deadline, {name: r.get("health") for name, r in rules.items()}
        time.sleep(0.5)
