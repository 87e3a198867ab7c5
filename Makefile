# The two commands of the README: `make demo` (the main job) and `make test`. Both install what they
# need into .venv first, in layers (tools/install.sh; a second run installs nothing): the core (torch, timm,
# the tools) for the demo, classification and the tools; the OpenMMLab stack (mmcv built from source, about
# 17 min on 2 cores the first time) for the tests, the transfer workflow and detection / segmentation;
# Slurm (system packages, where root and apt-get are at hand) for the tests of the Slurm launchers.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-mm install-slurm test test-fast demo transfer ablation-study
install:
	@VENV=$(VENV) bash tools/install.sh core

install-mm:
	@VENV=$(VENV) bash tools/install.sh openmmlab

# Slurm and munge from the system's packages, for the tests that run a Slurm cluster on this host (root and
# apt-get; elsewhere one line says it is skipped, and so are those tests)
install-slurm:
	@VENV=$(VENV) bash tools/install.sh slurm

# the tests in 2 pytest-xdist workers of 1 thread each (tests/conftest.py: which tests go together, longest
# first); TEST_WORKERS=0 runs them in this process, with 2 threads
TEST_WORKERS ?= 2
test: install-mm install-slurm
	$(PY) -m pytest -n $(TEST_WORKERS)

test-fast: install-mm install-slurm
	$(PY) -m pytest -n $(TEST_WORKERS) -m 'not slow'

# main job: ConvMLP-S trained from scratch on scikit-learn's handwritten digits (an ImageFolder written to
# data/digits), CPU only; prints the held-out top-1 and where the run's outputs are (output/demo_digits)
demo: install
	$(PY) tools/make_digits.py data/digits
	$(PY) classification.py data/digits -c configs/classification/demo_digits.yml --overwrite

# the paper's ablation as a small study: its 4 rows at ConvMLP-S size trained from scratch on the digits,
# 3 seeds x 3 epochs each, 1 torch thread; table (Markdown, CSV) and curves in output/ablation_study.
# Options, e.g.: make ablation-study ABLATION_ARGS='--epochs 10 --threads 2'
ABLATION_ARGS ?=
ablation-study: install
	$(PY) tools/ablation_study.py $(ABLATION_ARGS)

# transfer in miniature (tools/transfer.py): pretrain ConvMLP-S on generated shape crops, then RetinaNet-S,
# Mask R-CNN-S and Semantic FPN-S from that backbone and from scratch on generated scenes, 2 CPU processes;
# refreshes the table of docs/transfer.md and docs/transfer_*.png. Finished steps are reused on a second run.
transfer: install-mm
	$(PY) tools/transfer.py --out work_dirs/transfer --data data/transfer --docs docs --readme docs/transfer.md
