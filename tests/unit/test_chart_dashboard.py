"""The Grafana dashboard and the alert rules speak the metric contract of docs/metrics.md: every name
they use is documented, histograms are read through _bucket/_sum/_count, counters only through
rate()/increase(), and every label they match or group by exists on the series."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
DASHBOARD: dict[str, Any] = json.loads((CHART / "dashboards" / "elastra.json").read_text())
# Labels a scrape adds to every series: the trainers' namespace comes from the PodMonitor target.
TARGET_LABELS = {"namespace", "instance", "pod"}
METRIC = re.compile(r"\belastra_[a-z0-9_]+\b")
SELECTOR = re.compile(r"\b(elastra_[a-z0-9_]+)\s*\{([^}]*)\}")
MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)\s*\(")


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, labels) from the tables of docs/metrics.md."""
    metrics: dict[str, tuple[str, set[str]]] = {}
    row = re.compile(r"^\|\s*`(elastra_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|")
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        match = row.match(line)
        if match:
            metrics[match[1]] = (match[2], set(re.findall(r"`(\w+)`", match[3])))
    return metrics


METRICS = documented_metrics()


def series_labels(series: str) -> set[str]:
    """The labels a scraped series carries, or fail when the series is not in the contract."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = series.removesuffix(suffix)
        if series.endswith(suffix) and METRICS.get(base, ("", set()))[0] == "histogram":
            return METRICS[base][1] | TARGET_LABELS | ({"le"} if suffix == "_bucket" else set())
    assert series in METRICS, f"{series} is not in docs/metrics.md"
    kind, labels = METRICS[series]
    assert kind != "histogram", f"{series} is a histogram: read its _bucket, _sum or _count"
    return labels | TARGET_LABELS


def group_body(expr: str, open_paren: int) -> str:
    depth = 0
    for index in range(open_paren, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[index], 0)
        if depth == 0:
            return expr[open_paren : index + 1]
    raise AssertionError(f"unbalanced parentheses in {expr}")


def check_contract(expr: str) -> None:
    names = set(METRIC.findall(expr))
    assert names, f"no elastra metric in {expr}"
    for name in names:
        series_labels(name)
        # A histogram's _bucket, _sum and _count series are counters too.
        counter = METRICS.get(name, ("", set()))[0] == "counter" or name not in METRICS
        in_rate = re.search(rf"\b(?:rate|increase|irate)\s*\(\s*{name}\b", expr) is not None
        assert counter == in_rate, f"{name}: counters go through rate()/increase(), gauges never do"
    for name, matchers in SELECTOR.findall(expr):
        unknown = set(MATCHER_LABEL.findall(matchers)) - series_labels(name)
        assert not unknown, f"{name} has no label(s) {unknown} in {expr}"
    for match in GROUPING.finditer(expr):
        grouped = {label.strip() for label in match[1].split(",") if label.strip()}
        inner = set(METRIC.findall(group_body(expr, match.end() - 1)))
        for name in inner:
            missing = grouped - series_labels(name)
            assert not missing, f"grouping by {missing} but {name} has no such label: {expr}"


def panels() -> list[dict[str, Any]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def panel_queries() -> list[Any]:
    return [
        pytest.param(target["expr"], id=f"{panel['title']}-{target['refId']}")
        for panel in panels()
        for target in panel["targets"]
    ]


def alert_rules() -> list[Any]:
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render({"prometheusRule": {"enabled": True}}, name="elastra", namespace="elastra")
    rule = yaml.safe_load(manifests["elastra/templates/prometheusrule.yaml"])
    return [pytest.param(r["expr"], id=r["alert"]) for g in rule["spec"]["groups"] for r in g["rules"]]


# ----------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("expr", panel_queries())
def test_panel_query_uses_the_metric_contract(expr: str) -> None:
    check_contract(expr)


@pytest.mark.parametrize("expr", [p for p in alert_rules() if p.id != "ElastraOperatorDown"])
def test_alert_rule_uses_the_metric_contract(expr: str) -> None:
    check_contract(expr)


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        pytest.param("sum(elastra_no_such_metric)", "not in docs/metrics.md", id="undocumented-name"),
        pytest.param("max(elastra_recovery_seconds)", "is a histogram", id="histogram-read-raw"),
        pytest.param("sum(elastra_failures_total)", "counters go through", id="counter-without-rate"),
        pytest.param("rate(elastra_job_world_size[5m])", "counters go through", id="gauge-in-rate"),
        pytest.param('elastra_trainer_loss{phase="x"}', "no label", id="matcher-on-missing-label"),
        pytest.param("max by (tier) (elastra_checkpoint_bytes)", "grouping by", id="group-by-missing-label"),
    ],
)
def test_contract_check_catches_mistakes(expr: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=complaint):
        check_contract(expr)


def test_every_documented_metric_is_on_the_dashboard() -> None:
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name) if name not in METRICS else name
        for panel in panels()
        for target in panel["targets"]
        for name in METRIC.findall(target["expr"])
    }
    assert set(METRICS) - used == set()


# ----------------------------------------------------------------------------- the dashboard


@pytest.mark.parametrize(
    "title",
    [
        pytest.param("Job phases", id="job-phases"),
        pytest.param("World size", id="world-size"),
        pytest.param("Rescales by reason", id="rescales"),
        pytest.param("Failures by reason", id="failures"),
        pytest.param("Time to recover", id="time-to-recover"),
        pytest.param("Steps lost per failure", id="steps-lost"),
        pytest.param("Checkpoint stall", id="checkpoint-stall"),
        pytest.param("Commit latency", id="commit-latency"),
        pytest.param("Checkpoint age", id="checkpoint-age"),
        pytest.param("Checkpoint bytes by tier", id="bytes-per-tier"),
        pytest.param("Checkpoint write throughput by tier", id="throughput-per-tier"),
        pytest.param("Training throughput", id="training-throughput"),
    ],
)
def test_dashboard_has_the_panel(title: str) -> None:
    assert title in {p["title"] for p in panels()}


def test_dashboard_variables() -> None:
    assert 36 <= DASHBOARD["schemaVersion"] <= 41
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "job"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        check_contract(variables[name]["query"]["query"].removeprefix("label_values(").rsplit(",", 1)[0])


def test_every_panel_queries_the_selected_datasource_and_jobs() -> None:
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            # elastra_jobs counts jobs by phase, elastra_reconcile_seconds times all passes: no job label
            if panel["title"] not in {"Job phases", "Operator pass time"}:
                assert 'job=~"$job"' in target["expr"], (panel["title"], target["expr"])


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & area, f"{panel['title']} overlaps another panel"
        cells |= area
