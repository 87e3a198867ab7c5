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

# main job: ConvMLP-S trained from scratch on scikit-learn's handwritten digits (an ImageFolder written to
# data/digits), CPU only; prints the held-out top-1 and where the run's outputs are (output/demo_digits)
demo: install
	$(PY) tools/make_digits.py data/digits
	$(PY) classification.py data/digits -c configs/classification/demo_digits.yml --overwrite
