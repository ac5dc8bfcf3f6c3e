"""The Elastra operator: Kopf handlers that translate events, a pure planner that decides, and a thin
`kube` layer that applies the decisions. It never imports torch.
"""

from __future__ import annotations

__all__: list[str] = []
