"""`elastra hpo run SPEC.yaml`: a search whose trials are TrainingJobs.

Without `--kubeconfig` it starts localcluster (nodes with one GPU slot each) and the operator, runs the
search there and stops them; with one it runs against that cluster, whose operator must be installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import yaml
from pydantic import ValidationError

REPO = pathlib.Path(__file__).resolve().parents[3]


@contextlib.contextmanager
def local_cluster(workdir: pathlib.Path, nodes: int) -> Iterator[str]:
    """localcluster, the CRDs and the operator; yields the kubeconfig path."""
    from kubernetes import client, config, utils

    from elastra.demo.parts import CRDS, operator_process
    from localcluster import LocalCluster

    workdir.mkdir(parents=True, exist_ok=True)
    with LocalCluster(
        workdir=workdir / "cluster", nodes=nodes, gpus_per_node=1, container_cwd=str(REPO)
    ) as lc:
        api = config.new_client_from_config(config_file=lc.kubeconfig)
        for crd in sorted(CRDS.glob("*.yaml")):
            utils.create_from_yaml(api, str(crd))
        custom = client.CustomObjectsApi(api)
        deadline = time.monotonic() + 30
        while True:
            try:
                custom.list_namespaced_custom_object("elastra.dev", "v1alpha1", "default", "trainingjobs")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

        with operator_process(lc.kubeconfig, workdir / "operator.log", dict(os.environ)):
            yield str(lc.kubeconfig)


def run(argv: list[str]) -> int:
    from kubernetes import config

    from elastra.hpo.kube import KubeTrialRunner
    from elastra.hpo.search import plot, run_method
    from elastra.hpo.spec import load

    p = argparse.ArgumentParser(prog="elastra hpo run", description=__doc__)
    p.add_argument("spec", help="the search spec (YAML; see docs/hpo.md)")
    p.add_argument("--kubeconfig", default=None, help="a real cluster; default: start localcluster")
    p.add_argument("--nodes", type=int, default=2, help="localcluster nodes (default 2)")
    p.add_argument("--out", default="hpo-out", help="directory for the PNG, results JSON and logs")
    p.add_argument("--storage", default=None, help="Optuna storage URL (e.g. sqlite:///hpo.db)")
    ns = p.parse_args(argv)
    try:
        spec = load(ns.spec)
    except (OSError, ValueError, ValidationError, yaml.YAMLError) as exc:
        print(f"elastra hpo: invalid spec {ns.spec}: {exc}", file=sys.stderr)
        return 2
    out = pathlib.Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)  # only once the spec is valid
    logging.basicConfig(level=logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our one line per trial is the progress
    with contextlib.ExitStack() as stack:
        kubeconfig = ns.kubeconfig or stack.enter_context(local_cluster(out, ns.nodes))
        runner = KubeTrialRunner(spec, config.new_client_from_config(config_file=kubeconfig))
        results = []
        for method in spec.methods:
            results.append(run_method(spec, method, runner, storage=ns.storage))
    png = plot(results, out / "best_so_far.png", title=f"{spec.study}: best final loss vs trials")
    summary: list[dict[str, Any]] = [
        {"method": str(r.method), "best": r.best, "bestTrial": r.best_trial, "pruned": r.pruned,
         "seconds": round(r.seconds, 1), "bestSoFar": r.best_so_far}
        for r in results
    ]  # fmt: skip
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    for r in results:
        print(f"{r.method}: best {r.best:.4f} ({r.best_trial}), {r.pruned} pruned, {r.seconds:.0f} s")
    print(f"wrote {png} and {out / 'results.json'}")
    return 0 if all(r.best_trial for r in results) else 1


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "run":
        print("usage: elastra hpo run SPEC.yaml [--kubeconfig PATH] [--out DIR]", file=sys.stderr)
        return 2
    return run(argv[1:])
