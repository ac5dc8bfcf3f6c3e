"""localcluster: a single-machine Kubernetes stand-in (API server emulator, scheduler, process kubelets)
for `make demo` and the end-to-end tests. Not a production cluster.
"""

from __future__ import annotations

__all__: list[str] = []
