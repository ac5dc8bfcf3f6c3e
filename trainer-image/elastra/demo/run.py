"""`elastra demo`: the main job end to end on localcluster, with a node killed and one added.

Side effects only (cluster, operator process, API calls, files); the summary is `report.summarize`.
Everything started here is stopped in `finally`, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import yaml

from elastra.api.membership import COMMIT_ANNOTATION, MEMBERSHIP_KEY, membership_configmap_name
from elastra.demo.report import Event, Generation, Observed, Sample, plot, summarize

REPO = pathlib.Path(__file__).resolve().parents[3]
JOB_YAML = REPO / "examples" / "gpt_tiny" / "trainingjob.yaml"
TRAIN = REPO / "examples" / "gpt_tiny" / "train.py"
CRDS = REPO / "crds"
GROUP, VERSION, PLURAL = "elastra.dev", "v1alpha1", "trainingjobs"
S3_SECRET = "elastra-demo-s3"  # noqa: S105 - the Secret's name
POLL_S = 0.5


DEMO_CHECKPOINT_EVERY = 5
"""Steps between checkpoints in the demo: a save stalls a step ~15-20 ms here (~2% of 5 steps of ~0.15 s)
and bounds the steps a failure makes the job redo (docs/benchmarks.md, Recovery)."""


class DemoError(RuntimeError):
    """The demo cannot run (a part is missing) or did not finish."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="elastra demo", description=__doc__)
    p.add_argument("--out", default="demo-out", help="where summary.json, report.png and logs go")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 400; 150 with --quick)")
    p.add_argument(
        "--step-sleep",
        type=float,
        default=None,
        help="least seconds per step (default 0.12; 0.3 with --quick): gpt_tiny steps take ~30 ms here, "
        "slowing them lets the rescales land mid-run",
    )
    p.add_argument("--quick", action="store_true", help="a shortened run (for `make test`)")
    p.add_argument(
        "--timeout", type=float, default=None, help="give up after this many seconds (default 280)"
    )
    p.add_argument("--nodes", type=int, default=4, help="nodes at start, one GPU slot each")
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=DEMO_CHECKPOINT_EVERY,
        help=f"checkpoint every N steps (default {DEMO_CHECKPOINT_EVERY}; 0: the example's everySteps, 20)",
    )
    p.add_argument(
        "--cold-start",
        action="store_true",
        help="agents spawn every worker as a new process (ELASTRA_ZYGOTE=0), to compare with the zygote",
    )
    p.add_argument(
        "--operator-metrics-port",
        type=int,
        default=0,
        help="the operator serves /metrics on this port of every address (default 0: no metrics)",
    )
    p.add_argument(
        "--trainer-metrics-port",
        type=int,
        default=0,
        help="the pod agents serve /metrics on <pod IP>:<this port> (default 0: a free port)",
    )
    return p.parse_args(argv)


def check_parts() -> None:
    """Fail with what is missing, before starting anything."""
    missing = []
    for module, part in (
        ("localcluster", "localcluster (issue 4)"),
        ("elastra_operator.handlers", "the operator (issue 5)"),
    ):
        try:
            __import__(module)
        except Exception as exc:  # a missing or broken part: say which, start nothing
            missing.append(f"{part}: cannot import {module} ({type(exc).__name__}: {exc})")
    if not sorted(CRDS.glob("*.yaml")):
        missing.append(f"the CRDs: no {CRDS}/*.yaml (run `make crds`)")
    for path in (JOB_YAML, TRAIN):
        if not path.exists():
            missing.append(f"the example: {path} is missing")
    if missing:
        raise DemoError("the demo cannot run, missing:\n  - " + "\n  - ".join(missing))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    from elastra.agent.lifeline import die_with_parent

    die_with_parent()


@contextlib.contextmanager
def operator_process(
    kubeconfig: str, log_path: pathlib.Path, env: dict[str, str], metrics_port: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a subprocess, stopped (SIGTERM, then SIGKILL) on the way out.

    It serves /metrics on `metrics_port` (0: not at all)."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable,
        "-m",
        "elastra.cli",
        "operator",
        "--kubeconfig",
        kubeconfig,
        "--standalone",
        "--metrics-port",
        str(metrics_port),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


NODE_HEARTBEAT_S, NODE_GRACE_S = 1.0, 4.0
"""localcluster node leases: a killed node turns NotReady after 4 s (real clusters: 40 s)."""


def job_manifest(
    steps: int,
    s3_endpoint: str,
    step_sleep: float,
    metrics_port: int,
    *,
    cold_start: bool = False,
    checkpoint_every: int | None = None,
) -> dict[str, Any]:
    """The example TrainingJob, pointed at the local S3 endpoint and this machine's Python.

    The agents serve /metrics on `metrics_port` (pod IPs of side-by-side localclusters repeat)."""
    job = copy.deepcopy(yaml.safe_load(JOB_YAML.read_text()))
    job["spec"]["checkpoint"]["s3"]["endpoint"] = s3_endpoint
    if checkpoint_every:
        job["spec"]["checkpoint"]["everySteps"] = checkpoint_every
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    command = [str(TRAIN) if part == "examples/gpt_tiny/train.py" else part for part in command]
    if "--steps" in command:
        command[command.index("--steps") + 1] = str(steps)
    command += ["--step-sleep", str(step_sleep)]
    container["command"] = command
    container["env"] = [
        *container.get("env", []),
        {"name": "ELASTRA_METRICS_PORT", "value": str(metrics_port)},
        *([{"name": "ELASTRA_ZYGOTE", "value": "0"}] if cold_start else []),
    ]
    return dict(job)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}\{{[^}}]*\}} ([0-9.eE+-]+|NaN)$", text, re.MULTILINE)
    return float(match.group(1)) if match and match.group(1) != "NaN" else None


class Demo:
    """One demo run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick = bool(args.quick)
        self.steps = args.steps or (150 if self.quick else 400)
        self.step_sleep = args.step_sleep if args.step_sleep is not None else (0.3 if self.quick else 0.12)
        self.timeout = args.timeout or 280.0
        self.out = pathlib.Path(args.out).resolve()
        self.observed = Observed()
        self.t0 = time.monotonic()
        self.tty = sys.stdout.isatty()
        self._last_line = 0.0

    # ------------------------------------------------------------------ setup
    def _setup(self, lc: Any) -> None:
        import boto3
        from kubernetes import client, config, utils

        config.load_kube_config(config_file=lc.kubeconfig)
        self.core = client.CoreV1Api()
        self.custom = client.CustomObjectsApi()
        api_client = client.ApiClient()
        for crd in sorted(CRDS.glob("*.yaml")):
            utils.create_from_yaml(api_client, str(crd))
        creds = lc.s3_credentials
        s3 = boto3.client(
            "s3",
            endpoint_url=lc.s3_url,
            aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
            region_name=creds["AWS_REGION"],
        )
        self.metrics_port = self.args.trainer_metrics_port or _free_port()
        job = job_manifest(
            self.steps,
            str(lc.s3_url),
            self.step_sleep,
            self.metrics_port,
            cold_start=self.args.cold_start,
            checkpoint_every=self.args.checkpoint_every,
        )
        s3.create_bucket(Bucket=job["spec"]["checkpoint"]["s3"]["bucket"])
        self.core.create_namespaced_secret(
            "default",
            {
                "metadata": {"name": S3_SECRET},
                "stringData": {k: creds[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
            },
        )
        self.job_name = job["metadata"]["name"]
        self.namespace = job["metadata"].get("namespace", "default")
        self._wait_for_crd()
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, job)
        self.t0 = time.monotonic()

    def _wait_for_crd(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    # ------------------------------------------------------------------ observe
    def _look(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        job = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, self.job_name)
        membership = None
        try:
            cm = self.core.read_namespaced_config_map(
                membership_configmap_name(self.job_name), self.namespace
            )
            membership = json.loads((cm.data or {}).get(MEMBERSHIP_KEY, "null"))
        except Exception:
            membership = None
        return job.get("status") or {}, membership

    def _rank0(self, membership: dict[str, Any] | None) -> tuple[str | None, str | None]:
        members = (membership or {}).get("members") or []
        first = next((m for m in members if m.get("rankStart") == 0), None)
        return (first["pod"], first["podIP"]) if first else (None, None)

    def _scrape(self, pod_ip: str | None) -> tuple[float | None, float | None]:
        if not pod_ip:
            return None, None
        try:
            text = (
                urllib.request.urlopen(f"http://{pod_ip}:{self.metrics_port}/metrics", timeout=1)
                .read()
                .decode()
            )
        except OSError:
            return None, None
        step = _metric(text, "elastra_trainer_step")
        # The gauges read 0 until the workers' first status: no loss before the first step.
        return step, (_metric(text, "elastra_trainer_loss") if step else None)

    def _commit(self, pod: str | None) -> None:
        if not pod:
            return
        try:
            obj = self.core.read_namespaced_pod(pod, self.namespace)
        except Exception:
            return
        raw = (obj.metadata.annotations or {}).get(COMMIT_ANNOTATION)
        if raw:
            commit = json.loads(raw)
            self.observed.commits.setdefault(int(commit["step"]), commit)

    def _sample(self) -> Sample:
        status, membership = self._look()
        now = time.monotonic() - self.t0
        generation = int((membership or {}).get("generation", 0))
        if membership and generation not in self.observed.generations and membership.get("phase") == "Run":
            restore = membership.get("restore") or {}
            self.observed.generations[generation] = Generation(
                generation=generation,
                t=now,
                world=int(membership.get("worldSize", 0)),
                restore_step=restore.get("step"),
            )
        pod, ip = self._rank0(membership)
        step, loss = self._scrape(ip)
        self._commit(pod)
        if step is None and status.get("step") is not None:
            step = float(status["step"])
        sample = Sample(
            t=now,
            phase=str(status.get("phase", "Pending")),
            generation=generation,
            world=int(status.get("worldSize") or (membership or {}).get("worldSize") or 0),
            step=int(step) if step is not None else None,
            loss=loss,
        )
        self.observed.samples.append(sample)
        self._progress(sample, status)
        return sample

    def _progress(self, s: Sample, status: dict[str, Any]) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last_line < 5:
            return
        self._last_line = now
        done = (s.step or 0) / self.steps
        bar = "#" * int(30 * done) + "-" * (30 - int(30 * done))
        ckpt = (status.get("lastCheckpoint") or {}).get("step")
        loss = f"{s.loss:.3f}" if s.loss is not None else "  -  "
        line = (
            f"[{bar}] step {s.step or 0:>4}/{self.steps} loss {loss} world {s.world} "
            f"ckpt {ckpt if ckpt is not None else '-':>4} {s.phase:<10} {s.t:5.0f}s"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    # ------------------------------------------------------------------ disrupt
    def _kill_a_worker_node(self, lc: Any, membership_step: int | None) -> None:
        pods = self.core.list_namespaced_pod(
            self.namespace, label_selector=f"elastra.dev/job={self.job_name}"
        ).items
        nodes = sorted({p.spec.node_name for p in pods if p.spec.node_name and p.status.phase == "Running"})
        if not nodes:
            return
        node = nodes[-1]
        self._say(f"killing {node} at step {membership_step}")
        wall = time.time()
        lc.kill_node(node)
        self.observed.events.append(
            Event(t=time.monotonic() - self.t0, kind="kill", node=node, step=membership_step, wall=wall)
        )

    def _add_a_node(self, lc: Any, step: int | None) -> None:
        node = lc.add_node()
        self._say(f"added {node} at step {step}")
        self.observed.events.append(
            Event(t=time.monotonic() - self.t0, kind="add", node=node, step=step, wall=time.time())
        )

    def _say(self, text: str) -> None:
        print(("\n" if self.tty else "") + f"demo: {text}", flush=True)

    # ------------------------------------------------------------------ run
    def run(self) -> int:
        check_parts()
        from localcluster import LocalCluster

        self.out.mkdir(parents=True, exist_ok=True)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the local S3 server's request log
        workdir = self.out / "cluster"
        with LocalCluster(
            workdir=workdir,
            nodes=self.args.nodes,
            gpus_per_node=1,
            s3=True,
            container_cwd=str(REPO),
            heartbeat_interval_s=NODE_HEARTBEAT_S,
            node_grace_s=NODE_GRACE_S,
        ) as lc:
            self._say(
                f"localcluster up: {self.args.nodes} nodes, S3 at {lc.s3_url}; kubeconfig {lc.kubeconfig}"
            )
            # The operator deletes checkpoint storage on retention with the job's credentials Secret
            # only (never with credentials of its own), so it gets none here.
            # The local S3 endpoint is not AWS: allow it explicitly (chart: s3.allowedEndpoints).
            operator_env = {**os.environ, "ELASTRA_S3_ALLOWED_ENDPOINTS": str(lc.s3_url)}
            with operator_process(
                lc.kubeconfig, self.out / "operator.log", operator_env, self.args.operator_metrics_port
            ) as operator:
                self._setup(lc)
                self._say(
                    f"applied TrainingJob {self.job_name} ({self.steps} steps); operator log in {self.out}"
                )
                phase = self._drive(lc, operator)
        print()
        summary = summarize(self.observed, phase=phase)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot(self.observed, str(self.out / "report.png"))
        self._print_summary(summary)
        return 0 if phase == "Succeeded" else 1

    def _drive(self, lc: Any, operator: subprocess.Popen[bytes]) -> str:
        killed = added = False
        shrunk_world: int | None = None
        while True:
            if operator.poll() is not None:
                raise DemoError(
                    f"the operator exited with {operator.returncode}; see {self.out / 'operator.log'}"
                )
            if time.monotonic() - self.t0 > self.timeout:
                self._say(f"timed out after {self.timeout:.0f}s")
                return self.observed.samples[-1].phase if self.observed.samples else "Unknown"
            sample = self._sample()
            if sample.phase in ("Succeeded", "Failed"):
                return sample.phase
            step = sample.step or 0
            if not killed and sample.world >= 2 and step >= self.steps // 3:
                self._kill_a_worker_node(lc, step)
                killed, shrunk_world = True, None
            elif killed and shrunk_world is None and sample.phase == "Running" and sample.world > 0:
                last_kill_world = max((s.world for s in self.observed.samples), default=0)
                if sample.world < last_kill_world:
                    shrunk_world = sample.world
            if killed and not added and shrunk_world is not None and step >= 2 * self.steps // 3:
                self._add_a_node(lc, step)
                added = True
            time.sleep(POLL_S)

    def _print_summary(self, summary: dict[str, Any]) -> None:
        print(f"demo: {summary['phase']}, final step {summary['final_step']}, loss {summary['final_loss']}")
        for r in summary["rescales"]:
            print(
                f"demo: rescale {r['from']} -> {r['to']} ({r['reason']}): recovered in {r['recovery_s']}s, "
                f"{r['steps_lost']} steps redone"
            )
        ck = summary["checkpoints"]
        print(
            f"demo: {ck['count']} checkpoints, median stall {ck['median_stall_s']}s, {ck['bytes']} bytes each"
        )
        print(f"demo: wrote {self.out / 'summary.json'} and {self.out / 'report.png'}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return Demo(args).run()
    except DemoError as exc:
        print(f"\nelastra demo: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(
            "\nelastra demo: interrupted; the cluster, its pods and the operator were stopped",
            file=sys.stderr,
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
