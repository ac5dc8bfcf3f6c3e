"""`elastra operator`: run the TrainingJob operator (Kopf) against a cluster."""

from __future__ import annotations

import argparse
import logging
import os
import time
import zlib

OLDEST_FIRST = "oldest-first"


def oldest_first_priority(started_ms: int, pod_id: str) -> int:
    """Pure: a Kopf peering priority that ranks an older replica above a younger one (Kopf freezes every
    replica that sees a live peer of equal priority); the low digits, from the pod id, break a tie
    between replicas started in the same millisecond."""
    return -(started_ms * 1000 + zlib.crc32(pod_id.encode()) % 1000)


def _priority(text: str) -> int | str:
    if text == OLDEST_FIRST:
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or {OLDEST_FIRST!r}, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="elastra operator", description=__doc__)
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace", action="append", default=[], metavar="NS", help="watch this namespace (repeatable)"
    )
    scope.add_argument("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", help="Kopf peering object for active/standby replicas")
    peering.add_argument("--standalone", action="store_true", help="no peering: the only operator replica")
    parser.add_argument(
        "--priority",
        type=_priority,
        default=0,
        help=f"Kopf peering priority: an integer, or {OLDEST_FIRST!r} (replicas of one Deployment: the"
        " oldest live one is active, the others stand by)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        metavar="SECONDS",
        help="a peer silent this long counts as gone (how long a standby waits for a killed active one)",
    )
    parser.add_argument("--metrics-port", type=int, default=8080, help="serve /metrics here; 0 disables")
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="ADDR",
        help="address /metrics binds (e.g. the pod IP, so replicas sharing a network do not collide)",
    )
    parser.add_argument("--liveness-endpoint", metavar="URL", help="e.g. http://0.0.0.0:8081/healthz")
    parser.add_argument("--kubeconfig", metavar="PATH", help="else $KUBECONFIG, else in-cluster")
    parser.add_argument("--log-level", default=os.environ.get("ELASTRA_LOG_LEVEL", "INFO"))
    return parser


def main(argv: list[str]) -> int:
    """Run until interrupted; the exit status is Kopf's."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = os.path.abspath(args.kubeconfig)

    import kopf

    from . import handlers
    from .metrics import OperatorMetrics

    metrics = OperatorMetrics()
    handlers.setup(args.kubeconfig, metrics)
    if args.metrics_port:
        metrics.serve(args.metrics_port, addr=args.metrics_host)
    priority = (
        args.priority
        if isinstance(args.priority, int)
        else oldest_first_priority(time.time_ns() // 1_000_000, os.environ.get("POD_ID", ""))
    )
    settings = kopf.OperatorSettings()
    settings.peering.lifetime = args.peering_lifetime
    kopf.run(
        settings=settings,
        priority=priority,
        standalone=True if args.standalone else None,
        peering_name=args.peering,
        liveness_endpoint=args.liveness_endpoint,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
    )
    return 0
