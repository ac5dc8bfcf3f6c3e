"""The container images agree with pyproject and with the versions the test-suite runs.

There is no Docker engine here, so the Dockerfiles are read as text: base images, pinned versions, the
extra each image installs. The operator image's extra is checked by running `elastra operator --help`
(and importing every operator module) in a subprocess where only that extra's dependency closure is
importable, which is what the image holds.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "trainer-image" / "Dockerfile"
OPERATOR = ROOT / "operator" / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _args(dockerfile: Path) -> dict[str, str]:
    """`ARG NAME=default` lines."""
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE))


def _bases(dockerfile: Path) -> list[str]:
    """Every stage's base image, with `${ARG}` defaults substituted."""
    args = _args(dockerfile)
    bases = re.findall(r"^FROM (\S+)", dockerfile.read_text(), flags=re.MULTILINE)
    return [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], b) for b in bases]


def _extra_requirement(extra: str, name: str) -> Requirement:
    reqs = [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    return next(r for r in reqs if canonicalize_name(r.name) == name)


def _tested_torch() -> Version:
    """The torch the suite runs on (local build tags such as `+cpu` dropped)."""
    return Version(Version(md.version("torch")).base_version)


@pytest.mark.parametrize("dockerfile", [TRAINER, OPERATOR], ids=["trainer", "operator"])
def test_python_base_is_official_slim_within_requires_python(dockerfile: Path) -> None:
    for base in _bases(dockerfile):
        m = re.fullmatch(r"python:(\d+)\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
        assert m, f"{dockerfile.name}: base {base!r} is not an official python:X.Y-slim image"
        minor = Version(f"{m.group(1)}.{m.group(2)}")
        assert minor in SpecifierSet(PYPROJECT["project"]["requires-python"])


def test_trainer_image_pins_the_tested_torch() -> None:
    pinned = Version(_args(TRAINER)["TORCH_VERSION"])
    assert pinned == _tested_torch()
    assert pinned in _extra_requirement("trainer", "torch").specifier
    text = TRAINER.read_text()
    assert 'pip install --no-cache-dir "torch==${TORCH_VERSION}"' in text
    assert '-c /tmp/torch.txt "$(echo /wheels/elastra-*.whl)[trainer]"' in text
    makefile = (ROOT / "Makefile").read_text()
    assert f"TORCH_SPEC ?= torch=={pinned}" in makefile


def test_torch_range_is_what_the_code_needs() -> None:
    """The engine imports `torch.distributed.tensor` (public from 2.5) and its `_StridedShard`; the example's
    `fully_shard` comes from `torch.distributed.fsdp` from 2.6 on, which the trainer image's torch meets."""
    spec = _extra_requirement("trainer", "torch").specifier
    assert Version("2.5.0") in spec
    assert Version("2.4.1") not in spec
    assert _tested_torch() in spec
    assert Version(_args(TRAINER)["TORCH_VERSION"]) >= Version("2.6")
    from torch.distributed.fsdp import fully_shard  # the example's import, on the tested torch
    from torch.distributed.tensor.placement_types import _StridedShard

    assert callable(fully_shard) and _StridedShard is not None


def test_operator_image_installs_the_operator_extra_without_torch() -> None:
    text = OPERATOR.read_text()
    assert 'pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"' in text
    assert '"elastra[operator]"' in text
    assert "torch" not in text.lower().replace("no torch", "")
    assert re.search(r'^ENTRYPOINT \["elastra", "operator"\]$', text, flags=re.MULTILINE)


def _closure(requirements: list[str]) -> set[str]:
    """Installed distributions that `requirements` pull in (extras followed, markers evaluated)."""
    seen: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(r, ()) for r in requirements]
    while todo:
        raw, extras = todo.pop()
        req = Requirement(raw)
        if req.marker and not any(req.marker.evaluate({"extra": e}) for e in extras or ("",)):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        todo.extend((sub, tuple(req.extras)) for sub in dist.requires or [])
    return seen


def test_operator_runs_with_only_its_extra_importable() -> None:
    allowed = _closure(
        PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["operator"]
    )
    assert "torch" not in allowed
    blocked = sorted(
        module
        for module, dists in md.packages_distributions().items()
        if not {canonicalize_name(d) for d in dists} & allowed
        and module not in {"elastra", "elastra_operator"}
    )
    assert "torch" in blocked and "numpy" in blocked
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        BLOCKED = set({blocked!r})
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("not in the operator image: " + name)
        sys.meta_path.insert(0, Block())
        import elastra_operator.handlers, elastra_operator.storage, elastra_operator.crdgen
        from elastra.cli import main
        sys.exit(main(["operator", "--help"]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--peering" in done.stdout
