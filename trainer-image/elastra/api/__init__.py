"""Contract models shared by the operator, the pod agent and training code.

Pure pydantic: importing this package never imports torch, boto3 or the Kubernetes client. The CRDs
in `crds/` are generated from these models (`elastra crds`).
"""

from __future__ import annotations

GROUP = "elastra.dev"
"""API group of Elastra's custom resources."""
VERSION = "v1alpha1"
"""Served and stored version of the custom resources."""
API_VERSION = f"{GROUP}/{VERSION}"

__all__ = ["API_VERSION", "GROUP", "VERSION"]
