"""`elastra demo`: gpt_tiny on localcluster with the operator; a node killed at 1/3, one added at 2/3.

Writes `<out>/summary.json` and `<out>/report.png`. Fails with a clear message when a part it needs
(localcluster, the operator, the CRDs) is missing; it never fakes a run.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from elastra.demo.run import main as run_main

    return run_main(argv)


__all__ = ["main"]
