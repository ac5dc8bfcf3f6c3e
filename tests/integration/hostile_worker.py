"""A hostile worker pod of job A (tests/integration/test_operator_trust.py): with its own in-cluster
identity it tries to reach job B, prints what the API server answered (`ATTACK <what> <status>`), forges
a commit report pointing at B's storage on its own pod, then carries on as an ordinary stub worker.

Env: HOSTILE_VICTIM_POD, HOSTILE_VICTIM_JOB, HOSTILE_VICTIM_SECRET, HOSTILE_FORGED_URI,
HOSTILE_FORGED_STEP.
"""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import runpy
import sys
from collections.abc import Callable
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from elastra import kubeclient
from elastra.api.membership import COMMIT_ANNOTATION, CommitReport, membership_configmap_name


def attempt(what: str, call: Callable[[], Any]) -> None:
    try:
        call()
    except ApiException as exc:
        print(f"ATTACK {what} {exc.status}", flush=True)
        return
    print(f"ATTACK {what} 200", flush=True)


def main() -> None:
    core = kubernetes.client.CoreV1Api(kubeclient.api_client())
    ns, me = os.environ["POD_NAMESPACE"], os.environ["POD_NAME"]
    victim_pod, victim_job = os.environ["HOSTILE_VICTIM_POD"], os.environ["HOSTILE_VICTIM_JOB"]
    forged = CommitReport(
        step=int(os.environ["HOSTILE_FORGED_STEP"]),
        uri=os.environ["HOSTILE_FORGED_URI"],
        tiers=("directory",),
        bytes=1,
        manifest_digest="sha256:00",
        world_size=2,
        format_version=1,
        generation=1,
        time=dt.datetime.now(dt.UTC),
    ).to_json()
    annotations = {"metadata": {"annotations": {COMMIT_ANNOTATION: forged}}}
    attempt("patch-victim-pod", lambda: core.patch_namespaced_pod(victim_pod, ns, annotations))
    attempt("read-victim-pod", lambda: core.read_namespaced_pod(victim_pod, ns))
    attempt(
        "read-victim-secret", lambda: core.read_namespaced_secret(os.environ["HOSTILE_VICTIM_SECRET"], ns)
    )
    attempt("list-secrets", lambda: core.list_namespaced_secret(ns))
    attempt(
        "patch-victim-membership",
        lambda: core.patch_namespaced_config_map(
            membership_configmap_name(victim_job), ns, {"data": {"membership.json": "{}"}}
        ),
    )
    attempt("delete-victim-pod", lambda: core.delete_namespaced_pod(victim_pod, ns))
    # Its own pod it may write: the forged commit is the operator's to ignore.
    attempt("forge-own-commit", lambda: core.patch_namespaced_pod(me, ns, annotations))
    stub = pathlib.Path(__file__).with_name("stub_trainer.py")
    sys.argv = [str(stub)]
    runpy.run_path(str(stub), run_name="__main__")


if __name__ == "__main__":
    main()
