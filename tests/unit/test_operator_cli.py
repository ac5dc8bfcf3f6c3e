"""`elastra operator` flags (the Helm chart passes exactly these)."""

from __future__ import annotations

import pytest

from elastra_operator.cli import build_parser


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(
            [], {"namespace": [], "standalone": False, "peering": None, "metrics_port": 8080}, id="defaults"
        ),
        pytest.param(["--namespace", "a", "--namespace", "b"], {"namespace": ["a", "b"]}, id="namespaces"),
        pytest.param(
            ["--all-namespaces", "--peering", "elastra"],
            {"all_namespaces": True, "peering": "elastra"},
            id="peering",
        ),
        pytest.param(
            ["--standalone", "--metrics-port", "0"], {"standalone": True, "metrics_port": 0}, id="standalone"
        ),
        pytest.param(
            ["--liveness-endpoint", "http://0.0.0.0:8081/healthz", "--kubeconfig", "/k"],
            {"liveness_endpoint": "http://0.0.0.0:8081/healthz", "kubeconfig": "/k"},
            id="liveness",
        ),
    ],
)
def test_flags(argv: list[str], expected: dict[str, object]) -> None:
    args = vars(build_parser().parse_args(argv))
    for key, value in expected.items():
        assert args[key] == value


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--standalone", "--peering", "x"], id="standalone-and-peering"),
        pytest.param(["--namespace", "a", "--all-namespaces"], id="namespace-and-all"),
        pytest.param(["--metrics-port", "http"], id="bad-port"),
    ],
)
def test_conflicting_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)


def test_the_operator_process_never_loads_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'safetensors'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import elastra_operator.cli, elastra_operator.handlers\n"
        "import elastra_operator.crdgen, elastra_operator.storage\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
