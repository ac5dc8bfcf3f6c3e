"""The worker pod contract: what the operator puts into each worker pod and the pod's processes read.

Names here are the single source for both sides (operator manifests, pod agent, session).
"""

from __future__ import annotations

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where every pod finds its ServiceAccount token on a real cluster."""
SERVICEACCOUNT_DIR_ENV = "ELASTRA_SERVICEACCOUNT_DIR"
"""Env var naming the ServiceAccount folder; the operator sets it to `SERVICEACCOUNT_DIR`, which
localcluster (no mount namespaces) rewrites to the pod's own folder."""
