"""Test tiers: unit (pure, fast), integration (real processes), e2e (a real cluster, opt-in)."""

from __future__ import annotations

import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--kubeconfig",
        action="store",
        default=None,
        help="run tests/e2e (and the conformance suite) against the real cluster of this kubeconfig",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kubeconfig = config.getoption("--kubeconfig")
    skip_e2e = pytest.mark.skip(reason="e2e tests need a real cluster: pass --kubeconfig")
    for item in items:
        path = pathlib.Path(str(item.fspath))
        tier = path.relative_to(ROOT / "tests").parts[0] if ROOT / "tests" in path.parents else None
        if tier in {"unit", "integration", "e2e"}:
            item.add_marker(getattr(pytest.mark, tier))
        if tier == "e2e" and not kubeconfig:
            item.add_marker(skip_e2e)


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
    return ROOT
