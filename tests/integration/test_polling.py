"""The shared wait helper of the integration tests fails loudly, and says what it waited for."""

from __future__ import annotations

import itertools

import pytest
from polling import until


def test_returns_the_first_truthy_value_and_retries_listed_errors() -> None:
    calls = itertools.count()

    def check() -> int | None:
        n = next(calls)
        if n == 0:
            raise OSError("server restarting")
        return n if n >= 2 else None

    assert until(check, 5, interval=0.01, retry_on=(OSError,)) == 2


def test_timeout_fails_with_what_and_diagnostics() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"waiting for the moon\nlog tail"):
        until(lambda: None, 0.05, "the moon", interval=0.01, diagnostics=lambda: "log tail")


def test_unlisted_errors_propagate() -> None:
    with pytest.raises(ValueError):
        until(lambda: (_ for _ in ()).throw(ValueError("bug")), 1, interval=0.01)
