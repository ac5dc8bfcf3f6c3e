"""The RBAC conformance cases of tests/e2e/test_rbac_conformance.py, run against localcluster (with
RBAC on, as always)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable, Iterator

import pytest
from kubernetes import config

from localcluster import LocalCluster

_spec = importlib.util.spec_from_file_location(
    "rbac_conformance_suite", pathlib.Path(__file__).parents[1] / "e2e" / "test_rbac_conformance.py"
)
assert _spec is not None and _spec.loader is not None
suite = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = suite
_spec.loader.exec_module(suite)


@pytest.fixture(scope="module")
def local_rbac(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    with LocalCluster(workdir=tmp_path_factory.mktemp("lc"), nodes=0) as lc:
        api = config.new_client_from_config(config_file=lc.kubeconfig)
        yield from suite.suite.conformance_context(api)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", suite.CASES)
def test_localcluster_rbac_conformance(local_rbac: object, case: Callable[[object], None]) -> None:
    case(local_rbac)
