"""`python -m elastra.agent -- <training command …>`."""

from __future__ import annotations

import sys

from elastra.agent.agent import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
