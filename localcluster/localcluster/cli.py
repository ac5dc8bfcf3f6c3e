"""`elastra local ...`: start, inspect, disturb and stop a detached local cluster.

    elastra local up [--nodes 4] [--gpus-per-node 1] [--dir D] [--s3] [--no-validation-rules]
                     [--virtual-nodes N] [--simulator JSON] [--no-rbac]
    elastra local node kill|freeze|thaw|add|cordon|uncordon|drain NAME
    elastra local fail NAMESPACE/POD [--exit-code 137]   (a virtual pod's workers fail)
    elastra local status
    elastra local down

The cluster runs as one detached process (`localcluster.server`); the commands find it through
`<dir>/state.json` and talk to its control endpoints over HTTPS (trusting the CA in its kubeconfig).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import yaml

from localcluster import tls
from localcluster.server import STATE_FILE, add_cluster_arguments

DEFAULT_DIR = pathlib.Path(os.environ.get("ELASTRA_LOCAL_DIR", "~/.cache/elastra/localcluster")).expanduser()


class CliError(Exception):
    """A failure to report on stderr with exit status 1."""


def _state(directory: pathlib.Path) -> dict[str, Any] | None:
    path = directory / STATE_FILE
    if not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text())
    try:
        os.kill(int(state["pid"]), 0)
    except (ProcessLookupError, PermissionError, KeyError, ValueError):
        return None
    return state


def _require_state(directory: pathlib.Path) -> dict[str, Any]:
    state = _state(directory)
    if state is None:
        raise CliError(f"no local cluster is running in {directory} (start one with `elastra local up`)")
    return state


def _admin_token(state: dict[str, Any]) -> str | None:
    """The admin kubeconfig's token: the control endpoints are cluster-admin only."""
    try:
        config = yaml.safe_load(pathlib.Path(state["kubeconfig"]).read_text())
        token: str = config["users"][0]["user"]["token"]
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError):
        return None
    return token


def _call(state: dict[str, Any], method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body or {}).encode() if method == "POST" else None
    headers = {"Content-Type": "application/json"}
    token = _admin_token(state)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(  # noqa: S310 - the URL comes from our state.json
        state["url"] + path, data=data, method=method, headers=headers
    )
    try:
        context = tls.kubeconfig_context(state["kubeconfig"])  # the API is HTTPS only, with our own CA
        with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("message", detail)
        raise CliError(f"{method} {path}: {exc.code} {detail}") from exc
    except urllib.error.URLError as exc:
        raise CliError(f"cannot reach the local cluster at {state['url']}: {exc.reason}") from exc


def _print_endpoints(state: dict[str, Any]) -> None:
    print(f"kubeconfig: {state['kubeconfig']}")
    print(f"export KUBECONFIG={state['kubeconfig']}")
    s3 = state.get("s3")
    if s3:
        print(f"s3: {s3['url']}")
        print(
            f"export AWS_ENDPOINT_URL_S3={s3['url']} AWS_ACCESS_KEY_ID={s3['accessKeyId']} "
            f"AWS_SECRET_ACCESS_KEY={s3['secretAccessKey']} AWS_REGION={s3['region']}"
        )


def cmd_up(args: argparse.Namespace) -> int:
    """Start a detached cluster and wait until its API answers."""
    directory: pathlib.Path = args.dir.resolve()
    existing = _state(directory)
    if existing is not None:
        print(f"a local cluster is already running in {directory} (pid {existing['pid']})")
        _print_endpoints(existing)
        return 0
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).unlink(missing_ok=True)
    argv = [sys.executable, "-m", "localcluster.server", "--dir", str(directory)]
    argv += ["--nodes", str(args.nodes), "--gpus-per-node", str(args.gpus_per_node), "--port", str(args.port)]
    argv += ["--cpu-per-node", args.cpu_per_node, "--memory-per-node", args.memory_per_node]
    argv += ["--heartbeat", str(args.heartbeat), "--node-grace", str(args.node_grace)]
    if args.s3:
        argv.append("--s3")
    if args.virtual_nodes:
        argv += ["--virtual-nodes", str(args.virtual_nodes)]
    if args.simulator is not None:
        argv += ["--simulator", json.dumps(args.simulator)]
    if not args.validation_rules:
        argv.append("--no-validation-rules")
    log_path = directory / "localcluster.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        state = _state(directory)
        if state is not None:
            virtual = f" + {args.virtual_nodes} virtual" if args.virtual_nodes else ""
            print(
                f"local cluster up: {args.nodes} node(s){virtual}, API {state['url']}, "
                f"pid {state['pid']}, logs {log_path}"
            )
            _print_endpoints(state)
            return 0
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise CliError(
                f"the local cluster exited with status {process.returncode} while starting:\n{tail}"
            )
        time.sleep(0.1)
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    raise CliError(f"the local cluster did not come up within {args.timeout} s (see {log_path})")


def cmd_node(args: argparse.Namespace) -> int:
    """kill | freeze | thaw | add | cordon | uncordon | drain a node."""
    state = _require_state(args.dir.resolve())
    if args.action == "add":
        result = _call(state, "POST", "/localcluster/v1/nodes", {"name": args.name} if args.name else {})
        print(f"node {result['name']} added")
        return 0
    if not args.name:
        raise CliError(f"`node {args.action}` needs a node name")
    result = _call(state, "POST", f"/localcluster/v1/nodes/{args.name}/{args.action}")
    if args.action == "drain":
        for pod in result["result"] or []:
            print(f"evicting pod {pod}")
    if args.action in ("freeze", "thaw"):
        done = "frozen" if args.action == "freeze" else "thawed"
        print(f"node {args.name} {done} ({result['result']} processes)")
        return 0
    print(f"node {args.name} {'killed' if args.action == 'kill' else args.action + 'ed'}")
    return 0


def cmd_fail(args: argparse.Namespace) -> int:
    """Inject a worker failure into a virtual pod's simulated agent."""
    state = _require_state(args.dir.resolve())
    namespace, _, pod = args.pod.rpartition("/")
    path = f"/localcluster/v1/virtual/pods/{namespace or 'default'}/{pod}/fail"
    _call(state, "POST", path, {"exitCode": args.exit_code})
    print(f"pod {namespace or 'default'}/{pod}: workers fail with exit code {args.exit_code}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """Print the nodes and endpoints."""
    directory = args.dir.resolve()
    state = _state(directory)
    if state is None:
        print(f"no local cluster is running in {directory}")
        return 3
    status = _call(state, "GET", "/localcluster/v1/status")
    print(f"API {status['url']}  pid {status['pid']}  kubeconfig {status['kubeconfig']}")
    if status.get("s3"):
        print(f"S3 {status['s3']}")
    print(f"{'NODE':<12} {'READY':<8} {'SCHEDULABLE':<12} {'KUBELET':<8} PODS")
    for node in status["nodes"]:
        print(
            f"{node['name']:<12} {node['ready']:<8} {node['schedulable']!s:<12} "
            f"{node['kubelet']:<8} {node['pods']}"
        )
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the cluster: every pod process is killed."""
    directory = args.dir.resolve()
    state = _state(directory)
    if state is None:
        print(f"no local cluster is running in {directory}")
        return 0
    pid = int(state["pid"])
    try:
        _call(state, "POST", "/localcluster/v1/shutdown")
    except CliError:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            print("local cluster stopped")
            return 0
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    print("local cluster killed (it did not stop within 30 s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `elastra local` argument parser."""
    parser = argparse.ArgumentParser(prog="elastra local", description="a single-machine Kubernetes stand-in")
    parser.add_argument(
        "--dir",
        type=pathlib.Path,
        default=DEFAULT_DIR,
        help=f"state folder (default {DEFAULT_DIR}, or $ELASTRA_LOCAL_DIR)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a detached local cluster and print its kubeconfig path")
    up.add_argument("--dir", type=pathlib.Path, default=argparse.SUPPRESS, help="state folder")
    add_cluster_arguments(up)
    up.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the API")
    up.set_defaults(func=cmd_up)
    node = sub.add_parser("node", help="kill, freeze, thaw, add, cordon, uncordon or drain a node")
    node.add_argument("action", choices=["kill", "freeze", "thaw", "add", "cordon", "uncordon", "drain"])
    node.add_argument("name", nargs="?", help="node name (optional for add)")
    node.set_defaults(func=cmd_node)
    fail = sub.add_parser("fail", help="make a virtual pod's simulated workers fail")
    fail.add_argument("pod", help="NAMESPACE/POD (namespace default when omitted)")
    fail.add_argument("--exit-code", type=int, default=137, help="the workers' exit code (default 137)")
    fail.add_argument("--dir", type=pathlib.Path, default=argparse.SUPPRESS, help="state folder")
    fail.set_defaults(func=cmd_fail)
    for name, func, text in (
        ("status", cmd_status, "show nodes and endpoints"),
        ("down", cmd_down, "stop the cluster and its pods"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", type=pathlib.Path, default=argparse.SUPPRESS, help="state folder")
        p.set_defaults(func=func)
    node.add_argument("--dir", type=pathlib.Path, default=argparse.SUPPRESS, help="state folder")
    return parser


def main(argv: list[str]) -> int:
    """Dispatched from `elastra local ...`."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"elastra local: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
