"""`python -m localcluster.server`: run a cluster in the foreground of this process.

`elastra local up` starts this detached (its own session, output to `<dir>/localcluster.log`). Once the
API answers it writes `<dir>/state.json` (pid, url, kubeconfig, S3 endpoint); SIGTERM, SIGINT or a
POST to `/localcluster/v1/shutdown` stops it: every pod process is killed and state.json removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import pathlib
import signal

from localcluster.cluster import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, ClusterConfig, ClusterCore

STATE_FILE = "state.json"


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `up` and the server share."""
    parser.add_argument("--nodes", type=int, default=4, help="nodes to start (default 4)")
    parser.add_argument("--gpus-per-node", type=int, default=1, help="allocatable nvidia.com/gpu per node")
    parser.add_argument("--cpu-per-node", default="8", help="allocatable cpu per node")
    parser.add_argument("--memory-per-node", default="32Gi", help="allocatable memory per node")
    parser.add_argument("--port", type=int, default=0, help="API server port (default: a free one)")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="node lease renewal interval, seconds")
    parser.add_argument(
        "--node-grace", type=float, default=10.0, help="seconds without a lease renewal before NotReady"
    )
    parser.add_argument("--s3", action="store_true", help="also start a local S3 endpoint (moto)")
    parser.add_argument(
        "--no-rbac",
        dest="rbac",
        action="store_false",
        help="serve every request without authentication or RBAC",
    )
    parser.add_argument(
        "--virtual-nodes",
        type=int,
        default=0,
        help="virtual nodes vnode-1..N: pods run no process, the protocol simulator plays their agents",
    )
    parser.add_argument(
        "--simulator",
        type=json.loads,
        default=None,
        help='protocol simulator settings as JSON, e.g. \'{"restore_seconds": 1, "step_seconds": 0.5}\'',
    )
    parser.add_argument(
        "--no-validation-rules",
        dest="validation_rules",
        action="store_false",
        help="do not evaluate CRD CEL rules (x-kubernetes-validations)",
    )


def config_from_args(args: argparse.Namespace) -> ClusterConfig:
    """A ClusterConfig from parsed arguments."""
    return ClusterConfig(
        workdir=str(args.dir),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpu_per_node=args.cpu_per_node,
        memory_per_node=args.memory_per_node,
        port=args.port,
        heartbeat_interval_s=args.heartbeat,
        node_grace_s=args.node_grace,
        s3=args.s3,
        validation_rules=args.validation_rules,
        rbac=args.rbac,
        virtual_nodes=args.virtual_nodes,
        simulator=args.simulator,
    )


async def serve(config: ClusterConfig) -> None:
    """Run until asked to stop; state.json exists exactly while the API is up."""
    core = ClusterCore(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, core.shutdown_requested.set)
    state = pathlib.Path(config.workdir) / STATE_FILE
    try:
        await core.start()  # inside the try: a failed start still stops what it started (moto, kubelets)
        info = {
            "pid": os.getpid(),
            "url": core.url,
            "kubeconfig": core.kubeconfig,
            "s3": {
                "url": core.s3_url,
                "accessKeyId": S3_ACCESS_KEY,
                "secretAccessKey": S3_SECRET_KEY,
                "region": S3_REGION,
            }
            if core.s3_url
            else None,
        }
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2))
        tmp.replace(state)
        await core.shutdown_requested.wait()
    finally:
        state.unlink(missing_ok=True)
        await core.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m localcluster.server`."""
    parser = argparse.ArgumentParser(prog="localcluster.server")
    parser.add_argument("--dir", required=True, type=pathlib.Path, help="state folder")
    add_cluster_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    asyncio.run(serve(config_from_args(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
