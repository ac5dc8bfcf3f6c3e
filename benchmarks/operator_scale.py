"""The operator at scale, measured with virtual pods: one 512-pod job, then 100 jobs under node churn,
then checkpoint planning at 1k/4k/16k ranks against DCP.

Each cluster runs as its own process (`python -m localcluster.server --virtual-nodes 1000`), whose protocol
simulator plays every pod's agent through the API; the real operator runs as its own process
(`elastra operator --standalone`, default resync). This process only drives and reads.

- Large job: 512 pods on 1,000 virtual nodes. A member's node is powered off; its peers' collectives fail
  and their agents report `PeerLost`. `rescale_membership_s` is the operator's own record of that rescale:
  `lastRescaleAt - failureDetectedAt` from the membership ConfigMap (detected = the earliest report).
  `rescale_running_s` is `elastra_recovery_seconds` (detected -> every member Running again).
  `api_requests_per_rescale` counts the operator's requests (all clients but the simulator and this one)
  from the kill until the job runs again. Medians of RESCALES rescales.
- Many jobs: 100 jobs x 16 pods; a random node that holds pods is powered off every second for a minute.
  `reconcile_p50_s`/`reconcile_p99_s` come from the operator's `elastra_reconcile_seconds` histogram over
  that minute (interpolated within buckets, as Prometheus' histogram_quantile does); CPU seconds and peak
  RSS (VmHWM) from /proc for the operator process, over the same run (jobs created to the end of churn).
- Planning: `benchmarks/_plan_scale.py`.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import os
import pathlib
import platform
import random
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import kubernetes
import yaml

from _plan_scale import planning_figures
from _report import replace_section
from elastra.api.membership import (
    AGENT_ANNOTATION,
    MEMBERSHIP_KEY,
    AgentReport,
    Membership,
    membership_configmap_name,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "operator_scale.json"
DOC = ROOT / "docs" / "benchmarks.md"
ELASTRA = pathlib.Path(sys.executable).with_name("elastra")
GROUP, VERSION, NS = "elastra.dev", "v1alpha1", "default"
NODES = int(os.environ.get("OPERATOR_SCALE_NODES", "1000"))
PODS = int(os.environ.get("OPERATOR_SCALE_PODS", "512"))
RESCALES = int(os.environ.get("OPERATOR_SCALE_RESCALES", "3"))
JOBS = int(os.environ.get("OPERATOR_SCALE_JOBS", "100"))
JOB_PODS = int(os.environ.get("OPERATOR_SCALE_JOB_PODS", "16"))
CHURN_S = int(os.environ.get("OPERATOR_SCALE_CHURN_S", "60"))
SIMULATOR = {"restore_seconds": 0.5, "step_seconds": 1.0, "peer_detect_seconds": 0.05, "api_threads": 8}
OWN_AGENT = "elastra-bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Rig:
    """A localcluster process with virtual nodes, the CRDs, and the operator process."""

    def __init__(self, workdir: pathlib.Path, *, nodes: int, gpus_per_node: int) -> None:
        self.workdir = workdir
        argv = [
            sys.executable,
            "-m",
            "localcluster.server",
            "--dir",
            str(workdir / "cluster"),
            "--nodes",
            "0",
        ]
        argv += ["--virtual-nodes", str(nodes), "--gpus-per-node", str(gpus_per_node)]
        argv += ["--heartbeat", "5", "--node-grace", "20", "--simulator", json.dumps(SIMULATOR)]
        (workdir / "cluster").mkdir(parents=True)
        with (workdir / "cluster.log").open("wb") as log:
            self.cluster = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
            )
        state = _until(self._state, 120, "the cluster to start", every=0.5)
        self.url, self.kubeconfig = state["url"], state["kubeconfig"]
        client = kubernetes.config.new_client_from_config(config_file=self.kubeconfig)
        client.user_agent = f"{OWN_AGENT}/1"
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        ext = kubernetes.client.ApiextensionsV1Api(client)
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(crd.read_text()))
        self.metrics_port = _free_port()
        argv = [str(ELASTRA), "operator", "--kubeconfig", self.kubeconfig, "--standalone"]
        argv += ["--metrics-port", str(self.metrics_port)]
        with (workdir / "operator.log").open("wb") as log:
            self.operator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def _state(self) -> dict[str, Any] | None:
        path = self.workdir / "cluster" / "state.json"
        if self.cluster.poll() is not None:
            raise RuntimeError(f"the cluster exited: {(self.workdir / 'cluster.log').read_text()[-2000:]}")
        return json.loads(path.read_text()) if path.exists() else None

    def close(self) -> None:
        for proc in (self.operator, self.cluster):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # ------------------------------------------------------------------ reading
    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A localcluster control endpoint: HTTPS with the cluster's CA, as cluster-admin (the
        kubeconfig's CA and token; `localcluster` itself is shadowed by benchmarks/localcluster.py)."""
        config = yaml.safe_load(pathlib.Path(self.kubeconfig).read_text())
        token = config["users"][0]["user"]["token"]
        ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
        data = json.dumps(body or {}).encode() if method == "POST" else None
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        context = ssl.create_default_context(cadata=ca)
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return json.loads(response.read())

    def operator_requests(self) -> int:
        counts = self.control("GET", "/localcluster/v1/requests")
        return sum(
            n for client, verbs in counts.items() if client not in {OWN_AGENT, "localcluster-simulator"}
            for n in verbs.values()
        )  # fmt: skip

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def status(self, job: str) -> dict[str, Any]:
        raw = self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", job)
        return dict(raw.get("status") or {})

    def running_jobs(self) -> int:
        """How many TrainingJobs are Running (one list)."""
        raw = self.custom.list_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs")
        return sum(1 for job in raw["items"] if (job.get("status") or {}).get("phase") == "Running")

    def record(self, job: str) -> tuple[Membership, dict[str, Any]]:
        cm = self.core.read_namespaced_config_map(membership_configmap_name(job), NS)
        data = cm.data or {}
        return Membership.model_validate_json(data[MEMBERSHIP_KEY]), json.loads(data["operator.json"])

    def running(self, job: str, world: int | None, after: int = 0) -> dict[str, Any] | None:
        s = self.status(job)
        size_ok = world is None or s.get("worldSize") == world
        ok = s.get("phase") == "Running" and size_ok and s.get("generation", 0) > after
        return s if ok else None

    def follow_peer_lost(self, job: str, generation: int) -> tuple[list[dt.datetime], threading.Event]:
        """Collect, from a pod watch, when each agent's PeerLost report of `generation` was written (the
        simulator stamps a report as it sends it); set the returned event to stop."""
        times: list[dt.datetime] = []
        stop = threading.Event()
        listed = self.core.list_namespaced_pod(NS, label_selector=f"elastra.dev/job={job}", limit=1)
        version = listed.metadata.resource_version

        def follow() -> None:
            with contextlib.suppress(Exception):  # the cluster going away ends the stream
                collect()

        def collect() -> None:
            seen: set[str] = set()
            stream = kubernetes.watch.Watch().stream(
                self.core.list_namespaced_pod, NS, label_selector=f"elastra.dev/job={job}",
                resource_version=version, timeout_seconds=120, _preload_content=False,
            )  # fmt: skip
            for event in stream:
                raw = (event["raw_object"]["metadata"].get("annotations") or {}).get(AGENT_ANNOTATION)
                name = event["raw_object"]["metadata"]["name"]
                if raw and name not in seen:
                    report = AgentReport.model_validate_json(raw)
                    if report.generation == generation and (report.reason or "").startswith("PeerLost"):
                        seen.add(name)
                        times.append(report.time)
                if stop.is_set():
                    return

        threading.Thread(target=follow, daemon=True).start()
        return times, stop

    def create_job(self, name: str, *, pods: int, min_pods: int) -> None:
        spec = {
            "replicas": {"min": min_pods, "max": pods},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "trainer",
                            "image": "virtual",
                            "command": ["python", "-m", "elastra.agent", "--", "python", "train.py"],
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                        }
                    ]
                }
            },
            "checkpoint": {"everySteps": 30, "directory": {"path": str(self.workdir / "ckpt"), "keep": 2}},
            "elastic": {"scaleUpCooldownSeconds": 600, "startTimeoutSeconds": 120},
            "runPolicy": {"backoffLimit": 1000},
        }
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": spec,
        }
        self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", body)

    def pods_by_node(self) -> dict[str, list[str]]:
        """Live worker pods by node (raw JSON: decoding 1,600 pods into client models takes seconds)."""
        response = self.core.list_namespaced_pod(
            NS, label_selector="elastra.dev/role=worker", _preload_content=False
        )
        out: dict[str, list[str]] = {}
        for pod in json.loads(response.data)["items"]:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and not pod["metadata"].get("deletionTimestamp"):
                out.setdefault(node, []).append(pod["metadata"]["name"])
        return out


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return sorted(out)


def quantile(q: float, before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """histogram_quantile over the increase between two scrapes of cumulative buckets."""
    base = dict(before)
    counts = [(le, n - base.get(le, 0.0)) for le, n in after]
    total = counts[-1][1] if counts else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for le, n in counts:
        if n >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(n - below, 1e-12)
        lower, below = le, n
    return lower


def _proc(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS bytes) of a process."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(
        int(line.split()[1]) * 1024
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    return cpu, hwm


def large_job(workdir: pathlib.Path) -> dict[str, float]:
    """One job of PODS pods on NODES virtual nodes: RESCALES node losses, one after another."""
    rig = Rig(workdir, nodes=NODES, gpus_per_node=1)
    try:
        started = time.monotonic()
        rig.create_job("big", pods=PODS, min_pods=PODS // 2)
        _until(lambda: rig.running("big", PODS), 600, f"{PODS} pods to run", every=1)
        print(f"[operator_scale] {PODS} pods running after {time.monotonic() - started:.1f} s", flush=True)
        membership_s, running_s, requests = [], [], []
        for index in range(RESCALES):
            membership, _ = rig.record("big")
            victim = membership.members[(index * 97 + 101) % len(membership.members)]
            recovered_before = _metric(rig.metrics(), "elastra_recovery_seconds_sum", job="big")
            count_before = rig.operator_requests()
            reports, stop = rig.follow_peer_lost("big", membership.generation)
            rig.control("POST", f"/localcluster/v1/nodes/{victim.node}/kill")

            def written(old: int = membership.generation) -> tuple[Membership, dict[str, Any]] | None:
                m, r = rig.record("big")
                return (m, r) if m.generation > old else None

            new, record = _until(written, 120, "the new membership", every=0.05)
            assert victim.pod not in {m.pod for m in new.members}, "the lost pod left the membership"
            detected = dt.datetime.fromisoformat(record["failureDetectedAt"])
            membership_s.append(
                (dt.datetime.fromisoformat(record["lastRescaleAt"]) - detected).total_seconds()
            )
            time.sleep(1)  # reports still on their way are counted
            stop.set()
            spread = (max(reports) - min(reports)).total_seconds() if reports else float("nan")
            after_last = (
                (dt.datetime.fromisoformat(record["lastRescaleAt"]) - max(reports)).total_seconds()
                if reports
                else float("nan")
            )
            _until(lambda g=new.generation: rig.running("big", None, g - 1), 300, "the rescale", every=0.25)
            count_after = rig.operator_requests()

            def recovery(before: float = recovered_before) -> float | None:
                value = _metric(rig.metrics(), "elastra_recovery_seconds_sum", job="big") - before
                return value if value > 0 else None

            recovered = _until(recovery, 30, "the recovery time to be recorded", every=0.1)
            running_s.append(recovered)
            requests.append(count_after - count_before)
            left_out = len({m.pod for m in membership.members} - {victim.pod} - {m.pod for m in new.members})
            print(
                f"[operator_scale] rescale {index + 1}: {victim.node} lost; generation {new.generation} "
                f"written {membership_s[-1]:.2f} s after detection, Running after {recovered:.2f} s, "
                f"{count_after - count_before} operator requests; world {new.world_size}"
                + (
                    f" ({left_out} live members left out as silent: their reports came late)"
                    if left_out
                    else ""
                ),
                flush=True,
            )
            print(
                f"[operator_scale]   {len(reports)} PeerLost reports reached the API over {spread:.2f} s; "
                f"the membership was written {after_last:.2f} s after the last one",
                flush=True,
            )
        return {
            "rescale_membership_s": round(statistics.median(membership_s), 3),
            "rescale_running_s": round(statistics.median(running_s), 3),
            "api_requests_per_rescale": int(statistics.median(requests)),
        }
    finally:
        rig.close()


def many_jobs(workdir: pathlib.Path) -> dict[str, float]:
    """JOBS jobs of JOB_PODS pods; a node with pods is powered off every second for CHURN_S seconds."""
    rig = Rig(workdir, nodes=NODES, gpus_per_node=2)
    try:
        cpu0, _ = _proc(rig.operator.pid)
        started = time.monotonic()
        for index in range(JOBS):
            rig.create_job(f"job-{index}", pods=JOB_PODS, min_pods=JOB_PODS // 2)
        _until(lambda: rig.running_jobs() == JOBS, 1200, "every job to run", every=2)
        print(
            f"[operator_scale] {JOBS} x {JOB_PODS} pods running after {time.monotonic() - started:.1f} s",
            flush=True,
        )
        before = _buckets(rig.metrics(), "elastra_reconcile_seconds")
        rng = random.Random(16)
        killed = 0
        churn_started = time.monotonic()
        busy: list[str] = []
        listed_at = -10.0
        for second in range(CHURN_S):
            if time.monotonic() - listed_at >= 5:  # the pods move slowly; a list of 1,600 is not free
                busy, listed_at = sorted(rig.pods_by_node()), time.monotonic()
            if busy:
                node = busy.pop(rng.randrange(len(busy)))
                rig.control("POST", f"/localcluster/v1/nodes/{node}/kill")
                killed += 1
            time.sleep(max(0.0, churn_started + second + 1 - time.monotonic()))
        time.sleep(5)
        after = _buckets(rig.metrics(), "elastra_reconcile_seconds")
        cpu1, hwm = _proc(rig.operator.pid)
        running = rig.running_jobs()
        print(
            f"[operator_scale] churn: {killed} nodes powered off in {CHURN_S} s; "
            f"{running}/{JOBS} jobs Running 5 s later; load average {os.getloadavg()}",
            flush=True,
        )
        return {
            "reconcile_p50_s": round(quantile(0.5, before, after), 4),
            "reconcile_p99_s": round(quantile(0.99, before, after), 4),
            "operator_cpu_s": round(cpu1 - cpu0, 2),
            "operator_rss_bytes": hwm,
        }
    finally:
        rig.close()


def targets(r: dict[str, Any]) -> list[tuple[str, bool]]:
    """The issue's targets, each with whether this run met it."""
    return [
        ("new generation written <= 2 s after detection (512 pods)", r["rescale_membership_s"] <= 2),
        ("reconcile p99 <= 1 s with 100 jobs", r["reconcile_p99_s"] <= 1),
        ("operator RSS <= 500 MiB", r["operator_rss_bytes"] <= 500 * 2**20),
        ("planning at 16k ranks <= 1 s", r["plan_16k_s"] <= 1),
        ("planning at 16k ranks >= 10x faster than DCP", r["dcp_plan_16k_s"] >= 10 * r["plan_16k_s"]),
    ]


def render(r: dict[str, Any], context: dict[str, Any]) -> str:
    """The docs section: figures, the targets met or not, and the conditions of the run."""
    rows = [
        ("pods in the large job", r["pods"]),
        ("node loss detected -> new membership written (median of 3)", f"{r['rescale_membership_s']:.2f} s"),
        ("node loss detected -> job Running again (median of 3)", f"{r['rescale_running_s']:.2f} s"),
        ("operator API requests per rescale", r["api_requests_per_rescale"]),
        ("reconcile pass p50 / p99, 100 jobs x 16 pods, a node lost every second", (
            f"{r['reconcile_p50_s'] * 1000:.0f} ms / {r['reconcile_p99_s'] * 1000:.0f} ms")),
        ("operator CPU over that run", f"{r['operator_cpu_s']:.1f} s"),
        ("operator peak RSS", f"{r['operator_rss_bytes'] / 2**20:.0f} MiB"),
    ]  # fmt: skip
    for label in ("1k", "4k", "16k"):
        ours, dcp = r[f"plan_{label}_s"], r[f"dcp_plan_{label}_s"]
        rows.append((f"save planning, {label} ranks: ours / DCP create_global_plan", (
            f"{ours * 1000:.0f} ms / {dcp * 1000:.0f} ms ({dcp / ours:.1f}x)")))  # fmt: skip
    lines = [
        f"Measured {context['date']} on {context['machine']} ({context['cpus']} CPUs, shared with other "
        f"work: load average {context['load_start']} at the start, {context['load_end']} at the end); "
        f"cluster, simulator and operator in separate processes; took {context['seconds']:.0f} s.",
        "",
        "| figure | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "| target | met |",
        "| --- | --- |",
        *(f"| {name} | {'yes' if ok else '**no**'} |" for name, ok in targets(r)),
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    load_start = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"[operator_scale] load average at start: {load_start}", flush=True)
    started = time.monotonic()
    results: dict[str, Any] = {"pods": PODS}
    with tempfile.TemporaryDirectory(prefix="elastra-operator-scale-") as tmp:
        results |= large_job(pathlib.Path(tmp) / "large")
        results |= many_jobs(pathlib.Path(tmp) / "many")
    results |= planning_figures()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    context = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
        "seconds": time.monotonic() - started,
    }
    DOC.write_text(replace_section(DOC.read_text(), "operator_scale", render(results, context)))
    print(json.dumps(results, indent=2))
    print(
        f"[operator_scale] load average at end: {context['load_end']}; wrote {RESULTS} and {DOC}", flush=True
    )
    for name, ok in targets(results):
        print(f"[operator_scale] target {'met' if ok else 'MISSED'}: {name}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
