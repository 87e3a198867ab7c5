# The two commands of the README: `make demo` (the main job) and `make test`. Both install what they
# need into .venv first (tools/install.sh; a second run installs nothing).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install test test-fast demo
install:
	@VENV=$(VENV) bash tools/install.sh

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m 'not slow'

demo: install
	$(PY) tools/model_info.py
