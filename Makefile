# Elastra — one-command setup. Everything installs through this file and pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# The CPU build of torch 2.13.0 lies on this machine's disk; asking for it by exact version keeps pip
# from fetching a multi-GB CUDA build for the `torch>=2.5,<=2.14.1` range (trainer-image/Dockerfile pins the same version).
TORCH_SPEC ?= torch==2.13.0
EXTRAS := operator,trainer,local,hpo,dev
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: venv test unit integration e2e demo bench lint fmt crds clean system-deps

venv: $(STAMP)

# Re-install only when the project's dependency declaration changes: a second `make venv` is a no-op.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	@# The three source roots also go on sys.path through a .pth file. setuptools' editable finder runs
	@# after the path finder, so from the repository root the top-level `localcluster/` folder would
	@# otherwise shadow the package as an empty namespace package (`python -m …`, `python -c …`).
	$(PY) -c 'import pathlib, sysconfig; root = pathlib.Path.cwd(); \
	  pth = pathlib.Path(sysconfig.get_paths()["purelib"]) / "elastra-source-roots.pth"; \
	  pth.write_text("".join(f"{root / d}\n" for d in ("operator", "trainer-image", "localcluster")))'
	@touch $(STAMP)

# Debian packages some integration tests use (Prometheus for the scrape tests). Best effort: the
# tests that need them skip with a reason when they are missing.
system-deps:
	@bash .ci/system-deps.sh

test: venv
	$(VENV)/bin/pytest tests/unit tests/integration $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

integration: venv
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

e2e: venv
	$(VENV)/bin/pytest tests/e2e --kubeconfig "$${KUBECONFIG:?set KUBECONFIG to a real cluster}" $(PYTEST_ARGS)

demo: venv
	$(VENV)/bin/elastra demo --out demo-out

bench: venv
	$(PY) benchmarks/run_all.py

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

crds: venv
	$(VENV)/bin/elastra crds --out crds

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
