"""The chart's alert rules and dashboard queries against the real Prometheus tools (Debian package
`prometheus`): promtool checks and unit-tests the rules rendered from the chart, and a real Prometheus
server, started with a generated config, parses every dashboard query and loads the rules."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
ALERT_TESTS = CHART / "ci" / "alerts.test.yaml"
RULES_FILE = "elastra-rules.yaml"  # the name alerts.test.yaml loads
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool missing: `make system-deps`")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus missing: `make system-deps`")
# What Grafana substitutes for the dashboard's variables when "All" is selected.
DASHBOARD_VARIABLES = {"$namespace": ".*", "$job": ".*", "$window": "1h", "$__rate_interval": "1m"}


def rendered_rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule, as a Prometheus rules file holds them."""
    merged = {"prometheusRule": {"enabled": True, **(values or {})}}
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(merged, name="elastra", namespace="elastra-system")
    rule = yaml.safe_load(manifests["elastra/templates/prometheusrule.yaml"])
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def write_rules(folder: pathlib.Path, groups: list[dict[str, Any]]) -> pathlib.Path:
    path = folder / RULES_FILE
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def api_get(base: str, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus on loopback with the chart's rules loaded; yields its base URL."""
    if PROMETHEUS is None:
        pytest.skip("prometheus missing: `make system-deps`")
    folder = tmp_path_factory.mktemp("prometheus")
    write_rules(folder, rendered_rule_groups())
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / RULES_FILE)],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (folder / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (folder / "prometheus.log").read_text()
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "prometheus did not become ready"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def dashboard_queries() -> list[Any]:
    dashboard = json.loads((CHART / "dashboards" / "elastra.json").read_text())
    params = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            params.append(pytest.param(target["expr"], id=f"{panel['title']}-{target['refId']}"))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # label_values(<selector>, <label>) is Grafana's; the selector inside must parse.
            selector = variable["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            params.append(pytest.param(selector, id=f"variable-{variable['name']}"))
    return params


def substitute(expr: str) -> str:
    for variable, value in sorted(DASHBOARD_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


@needs_prometheus
@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_parses(prometheus: str, expr: str) -> None:
    status, body = api_get(prometheus, "/api/v1/query", query=substitute(expr))
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
