"""localcluster: a single-machine Kubernetes stand-in (API server emulator, scheduler, process kubelets)
for `make demo` and the end-to-end tests. Not a production cluster.

    from localcluster import LocalCluster
    with LocalCluster(workdir=tmp, nodes=4, gpus_per_node=1) as lc:
        lc.kubeconfig; lc.kill_node("node-2"); lc.add_node(); lc.cordon("node-1"); lc.drain("node-1")
"""

from __future__ import annotations

from localcluster.background import LocalCluster
from localcluster.cluster import ClusterConfig

__all__ = ["ClusterConfig", "LocalCluster"]
