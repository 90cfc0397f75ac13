# The README's two commands: `make run` and `make test`. Every target sets up .venv first.
SHELL := /bin/bash
.DEFAULT_GOAL := test

# tf.Transform and TFMA build tf_keras (Keras 2) objects: TensorFlow must see this before it is imported.
export TF_USE_LEGACY_KERAS := 1

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-lock

# Python 3.10: a working `python3.10` on PATH, else the newest pyenv 3.10.x.
PYTHON310 := $(shell python3.10 -c 'import sys; print(sys.executable)' 2>/dev/null \
	|| ls -d $$HOME/.pyenv/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V | tail -n 1)

.PHONY: setup run test lint pacs unit e2e compile report bench lock clean

setup: $(STAMP)

# Reinstalls only when the lock or the project metadata changed since the last install.
$(STAMP): requirements.lock pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if [ -z "$(PYTHON310)" ]; then \
	    echo "error: Python 3.10 is required (the TFX 1.16 stack has no wheels for other versions)." >&2; \
	    echo "       Install it, e.g. 'pyenv install 3.10' or 'apt install python3.10 python3.10-venv', then rerun 'make setup'." >&2; \
	    exit 1; \
	  fi; \
	  echo "creating $(VENV) with $(PYTHON310)"; \
	  $(PYTHON310) -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.lock
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@touch $(STAMP)

# The main job: the whole pipeline with LocalDagRunner on the synthetic demo set (generated on first use into
# data/demo); artifacts, metadata, logs and last_run.json under build/pipeline.
run: setup
	$(VENV)/bin/ich run

# `ich report` on the latest run under PIPELINE_ROOT (build/report/index.html), then the page rendered by headless
# Chromium to build/report/page.png, to look at as a reader would. Installs Debian's chromium when it is missing.
PIPELINE_ROOT ?= build/pipeline
REPORT_DIR := build/report
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --hide-scrollbars \
	--disable-background-networking --disable-component-update --disable-sync --window-size=1280,7200
report: setup
	$(VENV)/bin/ich report $(PIPELINE_ROOT) --out $(REPORT_DIR)
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium (to render the page)"; \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium >/dev/null \
	    || { echo "error: could not install chromium; run 'apt-get install chromium' as root" >&2; exit 1; }; }
	chromium $(CHROMIUM_FLAGS) --user-data-dir=$(abspath $(REPORT_DIR))/.chromium \
	  --screenshot=$(abspath $(REPORT_DIR))/page.png file://$(abspath $(REPORT_DIR))/index.html 2>/dev/null
	@echo "page rendered to $(REPORT_DIR)/page.png"

# Every benchmark in bench/ (about 70 minutes on 2 cores), then bench/RESULTS.md; never part of `make test`.
bench: setup
	$(PY) bench/run_all.py

# Regenerates pipeline.yaml (the Kubeflow Pipelines v2 spec) after a change to the DAG or the cluster preset.
compile: setup
	$(VENV)/bin/ich compile

lint: setup
	$(VENV)/bin/ruff check .

# Each test file in a pytest process of its own, two at a time, the e2e file first (tests/suite.py says why).
test: setup lint pacs
	$(PY) -m tests.suite

# Debian's Orthanc, the real PACS that ich serve's tests forward reports to; without it (no root, no sudo, no
# Debian) that test is skipped with the reason.
pacs:
	@command -v Orthanc >/dev/null || { \
	  echo "installing Debian's orthanc (the PACS of ich serve's tests)"; \
	  SUDO=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  { $$SUDO apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	      --no-install-recommends orthanc >/dev/null; } \
	    || echo "warning: could not install orthanc (apt-get install orthanc as root); its test is skipped" >&2; }

unit: setup
	$(VENV)/bin/pytest -m "not e2e"

e2e: setup
	$(VENV)/bin/pytest -m e2e

# Recompiles requirements.lock from requirements.in in a throw-away venv.
lock:
	@test -n "$(PYTHON310)" || { echo "error: Python 3.10 is required" >&2; exit 1; }
	rm -rf build/lock-venv
	$(PYTHON310) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --upgrade pip
	build/lock-venv/bin/python -m pip install --quiet -r requirements.in
	build/lock-venv/bin/python -m pip check
	{ echo "# Exact versions of every installed distribution; compiled from requirements.in by 'make lock'."; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable; } > requirements.lock
	rm -rf build/lock-venv

clean:
	rm -rf $(VENV) build *.egg-info
