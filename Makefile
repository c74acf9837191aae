# Two commands set everything up on a fresh clone:
#   make demo   -> creates .venv, installs fit3d, runs the main job on the embedded default
#   make test   -> creates .venv, installs fit3d with test + view extras, runs the test suite
#                  (the viewer's browser test wants Debian's chromium: .ci/install-chromium)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip install -q -c constraints.txt
DEMO_ARGS ?=
# OpenMP threads sleep instead of spinning at barriers: much faster on small, shared CPU machines.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test install clean bench

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first, through the constraints file: pip may never choose another build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,view]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/fit3d demo $(DEMO_ARGS)

test: install
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
