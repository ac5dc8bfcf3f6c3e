"""`elastra demo`: the summary it computes, the shortened run end to end (scraped by a real Prometheus:
every dashboard panel has data, every alert rule evaluates, none fires), and Ctrl-C cleanup."""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from prometheus_harness import (
    MISSING_PROMETHEUS,
    OPERATOR_JOB,
    PROMETHEUS,
    PanelTarget,
    api_get,
    dashboard,
    dashboard_targets,
    free_port,
    rendered_rule_groups,
    start_prometheus,
    substitute,
    variable_selectors,
)

from elastra.demo.report import Event, Generation, Observed, Sample, summarize
from localcluster import tls

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
        {
            "from": 4,
            "to": 3,
            "reason": "NodeLost",
            "generation": 2,
            "detected_s": 2.0,
            "recovery_s": 6.0,
            "steps_lost": 7,
            "restore_tier": None,
        },
        {
            "from": 3,
            "to": 4,
            "reason": "ScaleUp",
            "generation": 3,
            "detected_s": 5.0,
            "recovery_s": 8.0,
            "steps_lost": 2,
            "restore_tier": None,
        },
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


# ----------------------------------------------------------------------------- one quick run, observed
#
# The quick demo runs once per module (the suite's time budget has room for one), with a real
# Prometheus scraping it: the operator at its metrics port, as the chart's ServiceMonitor does, and the
# trainer pods with the relabelling of the chart's PodMonitor. Prometheus' own `kubernetes_sd_configs`
# cannot find the pods here: Debian's `prometheus` package is built without Kubernetes service
# discovery ("field kubernetes_sd_configs not found in type config.ScrapeConfig"). So the test lists
# the worker pods from localcluster's API server itself and keeps a `file_sd` targets file current,
# carrying the same `__meta_kubernetes_*` labels Kubernetes discovery would; the relabelling that turns
# them into targets is the PodMonitor's, unchanged. The demo's own assertions and the dashboard's and
# the alerts' are separate tests over that one run.

TRAINER_SCRAPE_JOB = "elastra-trainers"
WORKER_SELECTOR = "elastra.dev/role=worker"


@dataclass(frozen=True, slots=True)
class DemoRun:
    """What one quick demo run left behind."""

    out: pathlib.Path
    returncode: int
    output: str
    leftovers: list[int]
    """Processes of the run still alive 15 s after it ended (should be none)."""
    prometheus: str | None
    """Base URL of the Prometheus that scraped the run (None: the binary is missing)."""
    started: float
    ended: float
    """Unix times bracketing the run."""


def scrape_configs(targets_file: pathlib.Path, operator_port: int, trainer_port: int) -> list[dict[str, Any]]:
    """The operator as the chart's ServiceMonitor scrapes it, the trainers as its PodMonitor does."""
    return [
        {
            "job_name": OPERATOR_JOB,
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{operator_port}"]}],
        },
        {
            "job_name": TRAINER_SCRAPE_JOB,
            "honor_labels": True,
            "file_sd_configs": [{"files": [str(targets_file)]}],
            "relabel_configs": [
                {
                    "source_labels": ["__meta_kubernetes_pod_label_elastra_dev_role"],
                    "regex": "worker",
                    "action": "keep",
                },
                {
                    "source_labels": ["__meta_kubernetes_pod_ip"],
                    "regex": "(.+)",
                    "target_label": "__address__",
                    "replacement": f"$1:{trainer_port}",
                },
                # What prometheus-operator adds to every PodMonitor target.
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        },
    ]


def pod_target_groups(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """file_sd target groups for the pods that have an IP, labelled as Kubernetes discovery would."""
    groups = []
    for pod in pods:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            continue
        meta = pod["metadata"]
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_ip": ip,
            **{
                "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
                for key, value in (meta.get("labels") or {}).items()
            },
        }
        groups.append({"targets": [ip], "labels": labels})
    return groups


def keep_pod_targets(kubeconfig: pathlib.Path, targets_file: pathlib.Path, stop: threading.Event) -> None:
    """Until `stop`: list the worker pods every 0.5 s and rewrite `targets_file` (atomically) on change."""
    config = yaml.safe_load(kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    token = config["users"][0]["user"].get("token", "")
    query = urllib.parse.urlencode({"labelSelector": WORKER_SELECTOR})
    request = urllib.request.Request(
        f"{server}/api/v1/namespaces/default/pods?{query}", headers={"Authorization": f"Bearer {token}"}
    )
    written = None
    context = tls.kubeconfig_context(kubeconfig)
    while not stop.wait(0.5):
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                pods = json.loads(response.read())["items"]
        except OSError:
            continue  # the cluster is going down, or busy: keep the last list, as discovery would
        text = json.dumps(pod_target_groups(pods), sort_keys=True)
        if text != written:
            partial = targets_file.with_suffix(".partial")
            partial.write_text(text)
            partial.replace(targets_file)
            written = text


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRun]:
    """`elastra demo --quick`, scraped by a real Prometheus when the binary is there."""
    tag = uuid.uuid4().hex
    folder = tmp_path_factory.mktemp("quick-demo")
    out = folder / "demo-out"
    ports = (free_port(), free_port()) if PROMETHEUS is not None else (0, 0)
    args = ["--quick", "--operator-metrics-port", str(ports[0]), "--trainer-metrics-port", str(ports[1])]
    started = time.time()
    proc = _start(out, tag, *args)
    lines: list[str] = []
    cluster_up = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "localcluster up" in line:
                cluster_up.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    with contextlib.ExitStack() as stack:
        prometheus = None
        try:
            if PROMETHEUS is not None:
                # Prometheus reads the kubeconfig when it loads its config: start it once the cluster is up.
                while not cluster_up.wait(0.2):
                    assert proc.poll() is None, "".join(lines)[-5000:]
                    assert time.time() - started < 120, "localcluster did not come up"
                targets_file = folder / "trainer-targets.json"
                targets_file.write_text("[]")
                stop = threading.Event()
                keeper = threading.Thread(
                    target=keep_pod_targets,
                    args=(out / "cluster" / "kubeconfig", targets_file, stop),
                    daemon=True,
                )
                keeper.start()
                stack.callback(keeper.join, 10)
                stack.callback(stop.set)
                configs = scrape_configs(targets_file, *ports)
                prometheus = stack.enter_context(start_prometheus(folder, configs))
            proc.wait(timeout=280)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
            reader.join(timeout=10)
        ended = time.time()
        yield DemoRun(
            out=out,
            returncode=proc.returncode,
            output="".join(lines),
            leftovers=_no_leftovers(tag),
            prometheus=prometheus,
            started=started,
            ended=ended,
        )


DEMO_TIMEOUT = pytest.mark.timeout(330)
"""Whichever test comes first also waits for the module's run (280 s at most) and Prometheus."""


@DEMO_TIMEOUT
def test_quick_demo_shrinks_grows_and_reports(quick_demo: DemoRun) -> None:
    out, output = quick_demo.out, quick_demo.output
    assert quick_demo.returncode == 0, output[-5000:]
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
    assert quick_demo.leftovers == []


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


# ----------------------------------------------------------------------------- the dashboard and alerts

RANGE_STEP = "2s"
RATE_INTERVAL = "4s"
"""Grafana's $__rate_interval at a 1 s scrape interval: max(step + scrape, 4 x scrape)."""


def demo_variables() -> dict[str, str]:
    """The dashboard's variables set to the demo's job, and its default window."""
    window = next(v for v in dashboard()["templating"]["list"] if v["name"] == "window")
    return {
        "$namespace": "default",
        "$job": "gpt-tiny",
        "$window": window["current"]["value"],
        "$__rate_interval": RATE_INTERVAL,
    }


def query_range(run: DemoRun, expr: str) -> list[dict[str, Any]]:
    """`expr` over the whole run. The demo's pods and operator are gone by now, so an instant query
    at the end sees stale series; the range is what the dashboard showed while the run went on."""
    if run.prometheus is None:
        pytest.skip(MISSING_PROMETHEUS)
    status, body = api_get(
        run.prometheus,
        "/api/v1/query_range",
        query=expr,
        start=f"{run.started:.3f}",
        end=f"{run.ended:.3f}",
        step=RANGE_STEP,
    )
    assert (status, body.get("status")) == (200, "success"), (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def finite_points(result: list[dict[str, Any]]) -> int:
    """Points a panel would draw (Prometheus returns NaN where a quantile has no observations)."""
    return sum(math.isfinite(float(value)) for series in result for _, value in series["values"])


@DEMO_TIMEOUT
@pytest.mark.parametrize("target", [pytest.param(t, id=t.name) for t in dashboard_targets()])
def test_every_dashboard_panel_has_data(quick_demo: DemoRun, target: PanelTarget) -> None:
    expr = substitute(target.expr, demo_variables())
    result = query_range(quick_demo, expr)
    assert finite_points(result) > 0, f"panel {target.panel!r} ({target.ref_id}) has no data: {expr}"


@DEMO_TIMEOUT
@pytest.mark.parametrize("name", [name for name, _ in variable_selectors()])
def test_dashboard_variables_offer_the_demo_job(quick_demo: DemoRun, name: str) -> None:
    selector = dict(variable_selectors())[name]
    result = query_range(quick_demo, substitute(selector, demo_variables()))
    assert {(s["metric"]["namespace"], s["metric"]["job"]) for s in result} == {("default", "gpt-tiny")}


@DEMO_TIMEOUT
def test_prometheus_scraped_every_trainer_pod_and_the_operator(quick_demo: DemoRun) -> None:
    """Every worker pod the run had became a target, labelled with its namespace and pod name, and the
    operator's target was up under the job name ElastraOperatorDown watches."""
    result = query_range(quick_demo, f'up{{job="{TRAINER_SCRAPE_JOB}"}} == 1')
    pods = {s["metric"]["pod"] for s in result}
    assert len(pods) >= 4, pods
    assert all(s["metric"]["namespace"] == "default" for s in result)
    steps = query_range(quick_demo, 'elastra_trainer_step{namespace="default", job="gpt-tiny"}')
    assert {s["metric"]["pod"] for s in steps} == pods
    operator_up = query_range(quick_demo, f'up{{job="{OPERATOR_JOB}"}} == 1')
    assert finite_points(operator_up) > 0


ALERT_RULES = [(r["alert"], r["expr"]) for g in rendered_rule_groups() for r in g["rules"]]


@DEMO_TIMEOUT
@pytest.mark.parametrize(("alert", "expr"), [pytest.param(a, e, id=a) for a, e in ALERT_RULES])
def test_every_alert_rule_evaluates_over_the_run(quick_demo: DemoRun, alert: str, expr: str) -> None:
    """Each rule's expression evaluates without error over the run (no data is fine: see below)."""
    query_range(quick_demo, expr)
    status, body = api_get(str(quick_demo.prometheus), "/api/v1/rules", type="alert")
    assert status == 200
    rule = next(r for g in body["data"]["groups"] for r in g["rules"] if r["name"] == alert)
    assert rule["health"] == "ok", rule.get("lastError")


@DEMO_TIMEOUT
def test_no_alert_fires_during_a_healthy_run(quick_demo: DemoRun) -> None:
    """A healthy demo run must stay quiet: one node loss is under the failure threshold (3 in 30m),
    two rescales under the flapping one (10 in 1h), recovery and commits are far below their
    thresholds, and every other alert waits 5 min or more (`for`) before firing, longer than the
    run. ElastraCheckpointMissing is pending until the first commit; pending is not firing."""
    firing = query_range(quick_demo, 'ALERTS{alertstate="firing"}')
    assert firing == [], [s["metric"] for s in firing]


SHOWS_THE_DISRUPTIONS = [
    ("Rescales by reason", "A"),
    ("Failures by reason", "A"),
    ("Time to recover", "C"),
    ("Restore time by tier", "A"),
    ("Restore time by tier", "B"),
]
"""Panels on which the node killed and the node added must show as values above zero."""


@DEMO_TIMEOUT
@pytest.mark.parametrize(
    ("panel", "ref_id"), [pytest.param(*p, id="-".join(p)) for p in SHOWS_THE_DISRUPTIONS]
)
def test_panel_shows_the_disruptions(quick_demo: DemoRun, panel: str, ref_id: str) -> None:
    """Data is not only zeros: every series exists at zero before its first event, so rate() and
    increase() see the failure, the rescales, the recovery and the restores of the run."""
    expr = next(t.expr for t in dashboard_targets() if (t.panel, t.ref_id) == (panel, ref_id))
    result = query_range(quick_demo, substitute(expr, demo_variables()))
    values = [float(v) for s in result for _, v in s["values"]]
    assert max((v for v in values if math.isfinite(v)), default=0.0) > 0, result


@DEMO_TIMEOUT
def test_control_a_panel_of_another_job_has_no_data(quick_demo: DemoRun) -> None:
    """Control: the panel check above can fail; the same query for a job the run did not have is empty."""
    expr = next(t.expr for t in dashboard_targets() if t.panel == "Loss")
    other_job = {**demo_variables(), "$job": "not-the-demo"}
    assert finite_points(query_range(quick_demo, substitute(expr, other_job))) == 0
