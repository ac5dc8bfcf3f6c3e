"""A real Prometheus (Debian package `prometheus`) for the integration tests, and the chart's queries.

`start_prometheus` runs the server on loopback with a generated config and the chart's rules;
`rendered_rule_groups` and `dashboard_targets` read the rules and panel queries the chart ships;
`substitute` replaces the dashboard's variables the way Grafana does before it sends a query.
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import helm_python as helm
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
DASHBOARD = CHART / "dashboards" / "elastra.json"
RULES_FILE = "elastra-rules.yaml"  # the name charts/elastra/ci/alerts.test.yaml loads
PROMTOOL, PROMETHEUS = shutil.which("promtool"), shutil.which("prometheus")
MISSING_PROMETHEUS = "prometheus missing: `make system-deps` (Debian package `prometheus`)"
RELEASE = "elastra"
OPERATOR_JOB = f"{RELEASE}-metrics"
"""The operator's scrape job as the chart's ServiceMonitor names it (ElastraOperatorDown watches it)."""


def rendered_rule_groups(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The groups of the chart's PrometheusRule, as a Prometheus rules file holds them."""
    merged = {"prometheusRule": {"enabled": True, **(values or {})}}
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(merged, name=RELEASE, namespace="elastra-system")
    rule = yaml.safe_load(manifests["elastra/templates/prometheusrule.yaml"])
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def write_rules(folder: pathlib.Path, groups: list[dict[str, Any]]) -> pathlib.Path:
    path = folder / RULES_FILE
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


@dataclass(frozen=True, slots=True)
class PanelTarget:
    """One query of one dashboard panel."""

    panel: str
    panel_type: str
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.panel}-{self.ref_id}"


def dashboard() -> dict[str, Any]:
    board: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return board


def dashboard_targets() -> list[PanelTarget]:
    """Every query of every panel of the shipped dashboard."""
    return [
        PanelTarget(panel=p["title"], panel_type=p["type"], ref_id=t["refId"], expr=t["expr"])
        for p in dashboard()["panels"]
        for t in p.get("targets", [])
    ]


def variable_selectors() -> list[tuple[str, str]]:
    """(name, selector) of each query variable: the selector inside Grafana's label_values(...)."""
    return [
        (v["name"], v["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])
        for v in dashboard()["templating"]["list"]
        if v["type"] == "query"
    ]


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with the dashboard variables replaced (longest name first: `$job` is in `$jobs`)."""
    for variable, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown dashboard variable in {expr}"
    return expr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def api_get(base: str, path: str, **params: str) -> tuple[int, dict[str, Any]]:
    """GET a Prometheus API path: (HTTP status, the JSON body)."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@contextlib.contextmanager
def start_prometheus(
    folder: pathlib.Path, scrape_configs: list[dict[str, Any]], *, port: int | None = None
) -> Iterator[str]:
    """A real Prometheus scraping `scrape_configs` (1 s), with the chart's rules; yields its base URL.

    Its log is `folder/prometheus.log`; the server is stopped on the way out."""
    assert PROMETHEUS is not None, MISSING_PROMETHEUS
    write_rules(folder, rendered_rule_groups())
    port = port or free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / RULES_FILE)],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]},
            *scrape_configs,
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log_path = folder / "prometheus.log"
    with log_path.open("w") as log:
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
                assert process.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as response:
                        if response.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError):
                    pass
                assert time.monotonic() < deadline, "prometheus did not become ready: " + log_path.read_text()
                time.sleep(0.2)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
