"""The packaging promises of the foundation: light imports, one console script, the layout."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from elastra import cli

# A meta-path finder that makes any torch import fail loudly, so "does not import torch" is checked
# even though torch is installed in the test environment.
_BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"torch import attempted: {name}")
        return None
sys.meta_path.insert(0, _Block())
"""


@pytest.mark.parametrize(
    "module",
    [
        pytest.param("elastra", id="elastra-root"),
        pytest.param("elastra.api", id="contract-models"),
        pytest.param("elastra_operator", id="operator-package"),
        pytest.param("elastra.cli", id="console-script"),
    ],
)
def test_light_modules_never_import_torch(module: str) -> None:
    code = _BLOCK_TORCH + f"import {module}\nassert 'torch' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("local", "ckpt", "operator", "demo"):
        assert name in out


def test_console_script_is_installed() -> None:
    exe = pathlib.Path(sys.executable).parent / "elastra"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    assert proc.stdout.strip()


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("operator/elastra_operator", id="operator"),
        pytest.param("trainer-image/elastra", id="trainer-library"),
        pytest.param("localcluster/localcluster", id="localcluster"),
        pytest.param("crds", id="crds"),
        pytest.param("charts/elastra", id="chart"),
        pytest.param("docs/architecture.md", id="architecture-doc"),
    ],
)
def test_layout(repo_root: pathlib.Path, path: str) -> None:
    assert (repo_root / path).exists()
