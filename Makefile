# One-command set-up: every target creates the venv it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all lint typecheck unit integration prometheus bench clean run

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# promtool, prometheus and alertmanager come from Debian's packages when not on PATH: the
# rule tests, the end-to-end tests and the demo's alerting stack use them.
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 && \
	  { command -v prometheus-alertmanager >/dev/null 2>&1 || command -v alertmanager >/dev/null 2>&1; } || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }
	@promtool --version | head -1

# The demo needs only the exporter's runtime dependencies: a venv of its own, without the
# test toolchain. Prometheus and Alertmanager join when on the PATH (README, "Demo").
DEMO_VENV ?= .venv-demo
DEMO_STAMP := $(DEMO_VENV)/.installed

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(DEMO_VENV)
	$(DEMO_VENV)/bin/pip install --quiet --upgrade pip
	$(DEMO_VENV)/bin/pip install --quiet -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(DEMO_VENV)/bin/aws-iot-jobs-exporter demo $(DEMO_ARGS)

run: $(STAMP)
	$(BIN)/aws-iot-jobs-exporter --config.file config/example.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# The tiers are folders: tests/unit (no subprocess, no socket; the inner loop, seconds),
# tests/integration (moto, the simulator, real HTTP), tests/e2e (Prometheus, Alertmanager,
# the demo, the wheel, the image files).
unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

# The other tiers mostly wait (servers, Prometheus, the demo), so they run on more
# pytest-xdist workers than there are cores; tests/conftest.py keeps the tests of a module
# with a module-wide fixture on one worker. PYTEST_WORKERS=0 runs them in one process.
PYTEST_WORKERS ?= 6
PARALLEL := -n $(PYTEST_WORKERS) --dist loadgroup

integration: $(STAMP)
	$(BIN)/pytest -q $(PARALLEL) tests/integration

# Every test, slow ones included: what `make test` and CI run.
test-all: $(STAMP)
	$(BIN)/pytest -q $(PARALLEL)

test: $(STAMP) prometheus lint typecheck test-all

bench: $(STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(DEMO_VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info

# requirements.lock.txt: every runtime dependency and the build backend, pinned with
# hashes, for the Docker image (pip install --require-hashes). `pip install .` stays
# unpinned. uv runs from a throwaway venv; its version is pinned so the lock's format only
# changes on purpose. The lock targets the image's Python and resolves for every platform.
# The build backend comes in on stdin (pyproject's build-system.requires), so the image
# builds the project without downloading an unpinned setuptools.
UV_VERSION ?= 0.13.8
.PHONY: lock
lock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/pip" install --quiet "uv==$(UV_VERSION)" && \
	$(PYTHON) -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' | \
	"$$tmp/venv/bin/uv" pip compile --quiet --no-config --universal --python-version 3.11 \
	  --generate-hashes --custom-compile-command "make lock" \
	  --output-file requirements.lock.txt pyproject.toml -
