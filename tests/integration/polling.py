"""One way for integration tests to wait on a real process or server: poll a predicate until it is
truthy, and on timeout fail with what was awaited plus whatever diagnostics the caller can offer."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def until(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = 0.2,
    retry_on: tuple[type[BaseException], ...] = (),
    diagnostics: Callable[[], str] | None = None,
) -> T:
    """`check()`'s first truthy value. It is called at least once; exceptions in `retry_on` count as
    "not yet". The timeout only guards against hangs: no test asserts on how long this took."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except retry_on:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            details = f"\n{diagnostics()}" if diagnostics is not None else ""
            pytest.fail(f"timed out after {timeout}s waiting for {what}{details}")
        time.sleep(interval)
