"""The layer contracts in pyproject.toml hold for the code as it is (import-linter, a real run)."""

from __future__ import annotations

import pathlib
import subprocess
import sys


def test_import_linter_contracts_are_kept(repo_root: pathlib.Path) -> None:
    lint_imports = pathlib.Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run(
        [str(lint_imports), "--no-cache"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout
